"""The embedded offline mirror: SAE-Bench's datasets and models, tiny and synthetic.

``ensure_embedded_mirror(rows)`` writes (once) an offline mirror
(:mod:`mtsae.evaluate.offline`) under ``$MTSAE_HOME/embedded/``:

* **datasets** in the schemas SAE-Bench reads from the hub (same names, splits,
  configurations, columns and types), filled with synthetic text in the
  embedded vocabulary (:mod:`mtsae.evaluate.synthetic`); ``rows`` rows per class
  and split for the probing sets, ``MCQ_QUESTIONS`` questions per multiple-choice
  subject; see :data:`DATASETS` for the list;
* **models**: ``embedded`` (alias ``embedded:tiny-gemma2-v1``, the id the cache
  records) and ``embedded-it``, both the *evaluation copy* of the embedded
  model (:func:`ensure_eval_model`). ``embedded-it`` is registered with
  transformer_lens name ``gemma-2-2b-it`` so SAE-Bench's unlearning eval picks
  its Gemma chat template and answer tokens; its weights are the base model's
  (nothing was instruction-tuned), as an SAE trained on the base model expects.

The evaluation copy appends tokens to the embedded tokenizer (ids after the
original 1160, so every original id and weight is unchanged and the residual
stream of any original token sequence is bit-identical): the single letters
b…z (answer letters of SAE-Bench's multiple-choice prompts and of the
first-letter task), pseudo-words so that every first letter has
``MIN_WORDS_PER_LETTER`` alphabetic tokens (SAE-Bench's absorption eval trains
one probe per letter a–z on a random 80/20 split of the vocabulary and fails
when a letter has no token in either part), and Gemma's chat markers
``<start_of_turn>``/``<end_of_turn>`` as special tokens. The new embedding rows
are seeded random, like the rest of the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from mtsae.durable import materialise_dir
from mtsae.evaluate import synthetic
from mtsae.evaluate.offline import MANIFEST, write_manifest
from mtsae.evaluate.synthetic import TOPIC_NAMES, TextMaker
from mtsae.harvest import embedded

MIRROR_VERSION = 2  # bump when the generated content changes
_TEXT_SEED = 1
EVAL_MODEL_DIRNAME = f"{embedded.MODEL_DIRNAME}-eval-v1"
MCQ_QUESTIONS = 16
MIN_WORDS_PER_LETTER = 40
CHAT_MARKERS = ("<start_of_turn>", "<end_of_turn>")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
_PSEUDO_VOWELS, _PSEUDO_CONSONANTS = "aeiou", "bdgklmnprstvz"
_NEW_ROWS_SEED = 1

# SAE-Bench's probing classes (sae_bench_utils.dataset_info.chosen_classes_per_dataset) and europarl pairs.
EUROPARL_PAIRS = {"en": "en-fr", "fr": "fr-it", "de": "de-en", "es": "es-fr", "nl": "nl-pt"}
_LANGUAGE_TOPICS = ("en", "fr", "de", "es", "nl", "it", "pt")
MMLU_TOPICS = {
    "college_biology": "biology", "high_school_us_history": "finance", "college_computer_science": "programming",
    "high_school_geography": "weather", "human_aging": "cooking",
}


def rows_needed(probe_train_set_size: int, probe_test_set_size: int) -> int:
    """Rows per class and split that SAE-Bench's sparse probing samples at these sizes (plus slack)."""
    return (probe_train_set_size + probe_test_set_size) // 2 + 2


# --------------------------------------------------------------------------- the model copy


def ensure_eval_model(home: Path | None = None) -> Path:
    """The evaluation copy of the embedded model (see module docstring), written once."""
    final = _embedded_dir(home) / EVAL_MODEL_DIRNAME
    return _materialise(final, "config.json", _write_eval_model)


def extra_tokens(vocab: Iterable[str]) -> list[str]:
    """Words appended to the embedded vocabulary: missing single letters, then pseudo-words per letter."""
    known = set(vocab)
    new = [letter for letter in LETTERS if letter not in known]
    for letter in LETTERS:
        have = sum(1 for w in known | set(new) if w.isalpha() and w[0] == letter)
        candidates = (letter + v + c + tail for tail in ("", "a", "o") for v in _PSEUDO_VOWELS for c in _PSEUDO_CONSONANTS)
        for word in candidates:
            if have >= MIN_WORDS_PER_LETTER:
                break
            if word not in known and word not in new:
                new.append(word)
                have += 1
    return new


def _write_eval_model(directory: Path) -> None:
    import torch
    from tokenizers import models
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = embedded.ensure_embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(base)
    backend = tokenizer.backend_tokenizer
    vocab = backend.get_vocab(with_added_tokens=False)
    for word in extra_tokens(vocab):
        vocab[word] = len(vocab)
    backend.model = models.WordLevel(vocab, unk_token=tokenizer.unk_token)
    tokenizer.add_special_tokens({"additional_special_tokens": list(CHAT_MARKERS)})
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():  # new rows: seeded, same scale as the old ones (tied with the unembedding)
        weight = model.get_input_embeddings().weight
        generator = torch.Generator().manual_seed(_NEW_ROWS_SEED)
        weight[old:] = torch.randn(weight.shape[0] - old, weight.shape[1], generator=generator) * weight[:old].std()
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)


# --------------------------------------------------------------------------- the datasets


def ensure_embedded_mirror(rows: int = rows_needed(40, 20), home: Path | None = None) -> Path:
    """Materialise (once per ``rows``) and return the embedded mirror folder."""
    final = _embedded_dir(home) / f"sae-bench-mirror-v{MIRROR_VERSION}-rows{rows}"
    model = ensure_eval_model(home)
    return _materialise(final, MANIFEST, lambda root: _write_mirror(root, rows, model))


def _write_mirror(root: Path, rows: int, model: Path) -> None:
    mk = TextMaker(seed=_TEXT_SEED)
    datasets: dict[str, Any] = {}
    for name, build in DATASETS.items():
        datasets[name] = build(root, mk, rows)
    corpus = _write_jsonl(root / "wmdp" / "bio-forget-corpus.jsonl", _forget_corpus(mk))
    models = {
        embedded.EMBEDDED_NAME: {"path": str(model), "tl_name": embedded.EMBEDDED_NAME},
        f"{embedded.EMBEDDED_NAME}-it": {"path": str(model), "tl_name": "gemma-2-2b-it"},
    }
    aliases = {f"{embedded.EMBEDDED_NAME}:{embedded.MODEL_DIRNAME}": embedded.EMBEDDED_NAME}
    write_manifest(root, models, datasets, aliases, forget_corpus=str(corpus.relative_to(root)))


def _splits(root: Path, folder: str, by_split: dict[str, list[dict]]) -> dict[str, Any]:
    """Write one JSONL per split; returns the manifest entry."""
    return {"splits": {s: str(_write_jsonl(root / folder / f"{s}.jsonl", r).relative_to(root)) for s, r in by_split.items()}}


def _bias_in_bios(root: Path, mk: TextMaker, rows: int) -> dict[str, Any]:
    professions = [int(p) for key, classes in _chosen().items() if "bias_in_bios" in key for p in classes]
    topic = {p: TOPIC_NAMES[i % 5] for i, p in enumerate(professions)}  # distinct topics within each set of 5

    def split() -> list[dict]:
        return [
            {"hard_text": mk.text(topic[p], 40, opening=(synthetic.PRONOUNS[g], "think", "that")), "profession": p, "gender": g}
            for p in professions for g in (0, 1) for _ in range(rows)
        ]

    return _splits(root, "bias_in_bios", {"train": split(), "test": split()})


def _amazon(root: Path, mk: TextMaker, rows: int) -> dict[str, Any]:
    categories = [int(c) for c in _chosen()["canrager/amazon_reviews_mcauley_1and5"]]
    tone = {1.0: synthetic.NEGATIVE, 5.0: synthetic.POSITIVE}

    def split() -> list[dict]:
        return [
            {"text": mk.text(TOPIC_NAMES[i], 40, adjectives=tone[r]), "category": c, "rating": r}
            for i, c in enumerate(categories) for r in (1.0, 5.0) for _ in range(rows)
        ]

    return _splits(root, "amazon_reviews_mcauley_1and5", {"train": split(), "test": split()})


def _github_code(root: Path, mk: TextMaker, rows: int) -> dict[str, Any]:
    # Long enough for SAE-Bench's filter (> 534 characters before it skips the first 150).
    train = [
        {"code": mk.text(TOPIC_NAMES[i], 160), "repo_name": f"mirror/{lang.lower()}", "path": f"file{n}",
         "language": lang, "license": "mit", "size": 0}
        for n in range(rows) for i, lang in enumerate(_chosen()["codeparrot/github-code"])
    ]
    return _splits(root, "github_code", {"train": train})


def _ag_news(root: Path, mk: TextMaker, rows: int) -> dict[str, Any]:
    labels = [int(c) for c in _chosen()["fancyzhx/ag_news"]]

    def split() -> list[dict]:
        return [{"text": mk.text(TOPIC_NAMES[label], 40), "label": label} for label in labels for _ in range(rows)]

    return _splits(root, "ag_news", {"train": split(), "test": split()})


def _europarl(root: Path, mk: TextMaker, rows: int) -> dict[str, Any]:
    def pair(config: str) -> list[dict]:
        a, b = config.split("-")
        topic = {lang: TOPIC_NAMES[_LANGUAGE_TOPICS.index(lang)] for lang in (a, b)}
        return [{"translation": {lang: mk.text(topic[lang], 30) for lang in (a, b)}} for _ in range(rows)]

    return {"configs": {c: _splits(root, f"europarl/{c}", {"train": pair(c)}) for c in EUROPARL_PAIRS.values()}}


def _openwebtext(root: Path, mk: TextMaker, rows: int) -> dict[str, Any]:
    docs = [{"text": d["text"]} for d in embedded.generate_documents(seed=_TEXT_SEED, n_documents=64)]
    return _splits(root, "openwebtext", {"train": docs})


def _wikitext(root: Path, mk: TextMaker, rows: int) -> dict[str, Any]:
    topics = [t for t in TOPIC_NAMES if t != "biology"]  # the retain set: everything but the forget topic
    lines = [{"text": ""} if n % 4 == 3 else {"text": mk.text(topics[n % len(topics)], 60) + "\n"} for n in range(320)]
    return {"configs": {"wikitext-2-raw-v1": _splits(root, "wikitext", {"test": lines})}}


def _mcq(mk: TextMaker, topic: str, subject: str | None) -> list[dict]:
    rows = []
    for _ in range(MCQ_QUESTIONS):
        row = {"question": mk.question(topic), "choices": mk.choices(topic), "answer": mk.rng.randrange(4)}
        rows.append(row if subject is None else {"question": row["question"], "subject": subject, **row})
    return rows


def _wmdp(root: Path, mk: TextMaker, rows: int) -> dict[str, Any]:
    return {"configs": {"wmdp-bio": _splits(root, "wmdp/wmdp-bio", {"test": _mcq(mk, "biology", None)})}}


def _mmlu(root: Path, mk: TextMaker, rows: int) -> dict[str, Any]:
    return {"configs": {s: _splits(root, f"mmlu/{s}", {"test": _mcq(mk, t, s)}) for s, t in MMLU_TOPICS.items()}}


def _forget_corpus(mk: TextMaker) -> list[dict]:
    return [
        {"title": mk.question("biology"), "abstract": mk.text("biology", 30), "text": mk.text("biology", 300),
         "doi": f"10.0000/mtsae-mirror.{n}"}
        for n in range(64)
    ]


DATASETS: dict[str, Callable[[Path, TextMaker, int], dict[str, Any]]] = {
    "Skylion007/openwebtext": _openwebtext,  # core
    "LabHC/bias_in_bios": _bias_in_bios,  # sparse probing (class sets 1-3)
    "canrager/amazon_reviews_mcauley_1and5": _amazon,  # sparse probing (category, sentiment)
    "codeparrot/github-code": _github_code,
    "fancyzhx/ag_news": _ag_news,
    "Helsinki-NLP/europarl": _europarl,
    "cais/wmdp": _wmdp,  # unlearning
    "cais/mmlu": _mmlu,
    "wikitext": _wikitext,
}


def _chosen() -> dict[str, list[str]]:
    from sae_bench.sae_bench_utils.dataset_info import chosen_classes_per_dataset

    return chosen_classes_per_dataset


# --------------------------------------------------------------------------- files


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _embedded_dir(home: Path | None) -> Path:
    return Path(home if home is not None else embedded.embedded_home()) / "embedded"


def _materialise(final: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """Build once into a temporary sibling and rename it into place (mtsae.durable); a finished ``final`` is reused."""
    def build_readable(root: Path) -> None:
        build(root)
        os.chmod(root, 0o755)  # mkdtemp makes it 0700

    return materialise_dir(final, build_readable, complete=lambda path: (path / marker).is_file())
