"""Dataset text cannot forge special tokens, and a cache's fingerprint names content, not the path to it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tiny_harvest
from mtsae.cache import open_cache
from mtsae.errors import MtsaeError
from mtsae.harvest import embedded, sources
from mtsae.harvest.config import HarvestConfig
from mtsae.harvest.plan import resolve_plan

FORGERY = "the cell <bos> divides<eos> and<pad> grows <unk> . <bos>"


def _embedded_tokenizer():
    return sources.load_tokenizer(sources.resolve_model(embedded.EMBEDDED_NAME))


def _gemma_tokenizer():
    """transformers' own GemmaTokenizer class (what google/gemma-2-* load) over a small byte-fallback vocabulary."""
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "<start_of_turn>": 5}
    vocab.update({f"<0x{i:02X}>": 6 + i for i in range(256)})
    for piece in ["▁", *"<>_abcdefghijklmnopqrstuvwxyz."]:
        vocab.setdefault(piece, len(vocab))
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[], additional_special_tokens=["<start_of_turn>"])
    assert tokenizer.bos_token_id == 2 and 5 in tokenizer.all_special_ids
    return tokenizer


@pytest.mark.parametrize("make", [_embedded_tokenizer, _gemma_tokenizer], ids=["embedded", "gemma"])
def test_special_token_strings_in_text_stay_text(make):
    tokenizer = make()
    text = FORGERY + " <start_of_turn>"
    forgeable = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert forgeable & set(plain)  # what the tokenizer does by default: the text forges special ids
    ids = sources.tokenize_text(tokenizer, [text, "<bos>"])
    assert not forgeable & set(ids[0]) and not forgeable & set(ids[1])
    assert len(ids[1]) >= 3  # "<", "bos", ">" (or their characters), not one id


def test_a_harvest_of_text_with_special_token_strings_marks_only_its_own_bos(tmp_path):
    corpus = tmp_path / "forged.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"{FORGERY} number {i}"}) + "\n" for i in range(40)))
    cache = open_cache(tiny_harvest(tmp_path / "c.zarr", dataset=str(corpus), max_tokens=600).path)
    tokenizer = _embedded_tokenizer()
    starts = cache.seq_offsets[:-1]
    assert np.array_equal(np.flatnonzero(cache.tokens == tokenizer.bos_token_id), starts)  # only the harvest's BOS
    assert not np.isin(cache.tokens, [tokenizer.eos_token_id, tokenizer.pad_token_id]).any()
    # Special rows: the sequence starts, and the unknown pieces of "<bos>" ("<", ">": not in this word vocabulary).
    unknown = np.flatnonzero(cache.tokens == tokenizer.unk_token_id)
    assert len(unknown) > 2 * len(starts)
    assert np.array_equal(np.flatnonzero(cache.special_mask), np.union1d(starts, unknown))
    assert cache.manifest["content"]["text_tokenization"] == sources.TEXT_TOKENIZATION


def test_a_tokenizer_that_ignores_split_special_tokens_is_refused(monkeypatch):
    from transformers import AutoTokenizer

    real = AutoTokenizer.from_pretrained

    class Forging:  # a tokenizer class without the option: it always turns "<bos>" into the BOS id
        def __init__(self, tokenizer):
            self.inner = tokenizer

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, texts, **kwargs):
            kwargs.pop("split_special_tokens", None)
            return self.inner(texts, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: Forging(real(*a, **k)))
    with pytest.raises(MtsaeError, match=r"turns the text '<bos>' into special token\(s\) \[2\]"):
        _embedded_tokenizer()


def test_the_embedded_model_and_corpus_by_path_have_the_embedded_fingerprint(tiny_cache_path):
    """`--model <the embedded folder> --dataset <its corpus file>` is the same content as `embedded`."""
    by_name = HarvestConfig(context_len=64, max_tokens=3000)
    by_path = HarvestConfig(model=str(embedded.ensure_embedded_model()), dataset=str(embedded.ensure_embedded_corpus()),
                            context_len=64, max_tokens=3000)

    def fingerprint(cfg):
        plan = resolve_plan(cfg)
        return plan.fingerprint, plan.model_source.identity["id"]

    (a, name_a), (b, name_b) = fingerprint(by_name), fingerprint(by_path)
    assert a == b and name_a != name_b  # one fingerprint; the manifest still says how it was reached
    assert open_cache(tiny_cache_path).fingerprint == a
    outcome = tiny_harvest(tiny_cache_path, model=by_path.model, dataset=by_path.dataset)
    assert outcome.skipped  # the cache harvested as `embedded` is found, not recomputed
    other = HarvestConfig(context_len=64, max_tokens=3001)
    assert fingerprint(other)[0] != a
