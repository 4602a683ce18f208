"""The embedded default: a tiny Gemma-2 and an offline corpus, materialised on disk.

When no real model or dataset is named (``--model embedded --dataset embedded``,
the CLI default), the pipeline still runs end to end, offline, through exactly
the code paths a real run uses:

* ``ensure_embedded_model()`` writes a Hugging Face model directory that loads
  with ``AutoModelForCausalLM.from_pretrained(path)``, ``AutoModel.from_pretrained(path)``
  and ``AutoTokenizer.from_pretrained(path)``. The model is the real
  ``Gemma2ForCausalLM`` architecture with gemma-2-2b's depth (26 layers, so
  layers 5, 19 and 20-25 exist) but a 64-wide residual stream. **Its weights are
  random** (seeded, deterministic): activations have real shapes and real
  architectural structure (sliding/full attention, soft-capping, tied
  embeddings) but no learned meaning. It is a plumbing fixture, not a model.
* ``ensure_embedded_corpus()`` writes a JSON-lines file (``id``, ``topic``,
  ``text``) that loads with ``datasets.load_dataset("json", data_files=..., split="train")``.
  The text comes from ``generate_documents()`` (harvest/embedded_text.py), a
  small template grammar (harvest/grammar.py) over eight topics, each with its own nouns, verbs and adjectives, so the topic of
  a document is learnable from its tokens (sparse probing uses that).

Tokenizer: a word-level ``tokenizers`` model over a fixed vocabulary built from
the generator's own word lists, so generated text never yields ``<unk>``.
Special ids follow Gemma: ``<pad>``=0, ``<eos>``=1, ``<bos>``=2, ``<unk>``=3.
Like Gemma's tokenizer, ``tokenizer(text)`` prepends ``<bos>`` (a post-processor
stored in ``tokenizer.json``) and ``tokenizer(text, add_special_tokens=False)``
gives only the word ids, which is what the harvester uses before prepending
``bos_token_id`` itself. Text is lower-cased; decoding re-attaches punctuation,
so ``decode(encode(text)) == text`` for generated (lower-case) text.

Assets live under ``<home>/embedded/`` where home is ``$MTSAE_HOME`` or
``~/.cache/mtsae``. Each is built in a temporary sibling and renamed into place,
so a crash never leaves something that looks complete, and two processes racing
both end up using one intact copy. Names carry a version: change the generator,
the vocabulary or the model shape and bump it, so old assets are not reused.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

from mtsae.durable import materialise_dir, materialise_file
# The corpus's words, templates and generator, and the grammar they follow, live in their own modules;
# their names stay importable from here (harvest/world.py and the tests use them).
from mtsae.harvest.embedded_text import (  # noqa: F401
    _SHARED, CORPUS_DOCUMENTS, SPECIAL_TOKENS, TEMPLATES, TOPICS, _sentence, generate_documents, vocabulary,
)
from mtsae.harvest.grammar import PUNCTUATION  # noqa: F401
from mtsae.harvest.grammar import detokenize as _detokenize  # noqa: F401
from mtsae.harvest.grammar import inflected_slots as _topic_slots  # noqa: F401
from mtsae.home import mtsae_home

EMBEDDED_NAME = "embedded"

MODEL_DIRNAME = "tiny-gemma2-v1"
CORPUS_FILENAME = "corpus-v1.jsonl"
COMPLETE_MARKER = ".complete"

MODEL_SEED = 0
CORPUS_SEED = 0

# Temp dirs/files older than this are leftovers of a crashed build.
_STALE_TEMP_AGE_S = 3600

# Model construction seeds torch's global RNG; serialise it within a process.
_BUILD_LOCK = threading.Lock()


# --------------------------------------------------------------------------
# Where things live
# --------------------------------------------------------------------------


embedded_home = mtsae_home  # the embedded assets live in <home>/embedded/


def _embedded_dir(home: Path | None) -> Path:
    return Path(home if home is not None else embedded_home()) / "embedded"


# --------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------


def build_tokenizer(words: list[str] | None = None):
    """A ``PreTrainedTokenizerFast`` (word-level) over ``vocabulary()``, or over ``words`` (ids in list order)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(words if words is not None else vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    # Whitespace first, then every punctuation mark becomes its own token.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    # WordPiece's decoder joins with spaces and then removes the space before
    # . , ? ! ; no token starts with its "##" prefix, so nothing else changes.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        # Installs a "<bos> $A" post-processor, saved in tokenizer.json.
        add_bos_token=True,
        add_eos_token=False,
    )


def _model_config(vocab_size: int):
    from transformers import Gemma2Config

    config = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=26,  # as gemma-2-2b; layer_types keeps its default alternation
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=128,  # < max context, so sliding and full layers really differ
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        # Short, so the default harvest context (min(1024, this)) keeps eager attention,
        # quadratic in context, fast on a 2-core CPU.
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
        dtype="float32",
    )
    config.architectures = ["Gemma2ForCausalLM"]
    return config


_MODEL_CARD = """\
# {name}: embedded default model of mtsae

Real `Gemma2ForCausalLM` architecture (26 layers, hidden size 64) with
**random, seeded weights** (seed {seed}) and a word-level tokenizer over the
vocabulary of mtsae's synthetic corpus. For testing the pipeline offline; it
has learned nothing. Generated by `mtsae.harvest.embedded`.
"""


def _write_model(directory: Path) -> None:
    import torch
    from transformers import Gemma2ForCausalLM

    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(directory)
    config = _model_config(vocab_size=len(tokenizer))
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(MODEL_SEED)
        model = Gemma2ForCausalLM(config)
    model.to(torch.float32).save_pretrained(directory)
    if not (directory / "config.json").is_file():  # save_pretrained skips non-zero ranks of a process group
        raise RuntimeError(f"save_pretrained wrote no config.json into {directory}; build the embedded model "
                           "before torch.distributed is initialised")
    (directory / "README.md").write_text(_MODEL_CARD.format(name=MODEL_DIRNAME, seed=MODEL_SEED))


def _write_corpus(path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for doc in generate_documents(CORPUS_SEED):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------
# Atomic materialisation
# --------------------------------------------------------------------------


def _is_complete_dir(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


def _materialise_dir(final: Path, build: Callable[[Path], None]) -> Path:
    def build_complete(directory: Path) -> None:
        build(directory)
        (directory / COMPLETE_MARKER).write_text(final.name + "\n")

    return materialise_dir(final, build_complete, complete=_is_complete_dir, stale_after_s=_STALE_TEMP_AGE_S)


def ensure_embedded_model(home: Path | None = None) -> Path:
    """Materialise (once) and return the embedded model's HF directory."""
    return _materialise_dir(_embedded_dir(home) / MODEL_DIRNAME, _write_model)


def ensure_embedded_corpus(home: Path | None = None) -> Path:
    """Materialise (once) and return the embedded corpus's JSONL path."""
    return materialise_file(_embedded_dir(home) / CORPUS_FILENAME, _write_corpus, stale_after_s=_STALE_TEMP_AGE_S)
