"""The embedded default: tiny random Gemma-2 + synthetic corpus, loaded like real ones."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: nothing here may touch the hub

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2ForCausalLM,
    Gemma2Model,
)

from mtsae.harvest import embedded  # noqa: E402
from mtsae.harvest.embedded import (  # noqa: E402
    COMPLETE_MARKER,
    CORPUS_FILENAME,
    EMBEDDED_NAME,
    MODEL_DIRNAME,
    embedded_home,
    ensure_embedded_corpus,
    ensure_embedded_model,
    generate_documents,
)

MIN_CORPUS_TOKENS = 220_000


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mtsae_home")


@pytest.fixture(scope="module")
def model_dir(home) -> Path:
    return ensure_embedded_model(home=home)


@pytest.fixture(scope="module")
def corpus_path(home) -> Path:
    return ensure_embedded_corpus(home=home)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def corpus_docs(corpus_path) -> list[dict]:
    with open(corpus_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _tree_mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in [root, *root.rglob("*")]}


# --------------------------------------------------------------------------
# Layout and home
# --------------------------------------------------------------------------


def test_layout_and_version_in_names(home, model_dir, corpus_path):
    assert EMBEDDED_NAME == "embedded"
    assert model_dir == home / "embedded" / MODEL_DIRNAME
    assert corpus_path == home / "embedded" / CORPUS_FILENAME
    assert "v1" in model_dir.name and "v1" in corpus_path.name
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", COMPLETE_MARKER):
        assert (model_dir / name).is_file(), name
    # Nothing temporary left next to the published assets.
    assert sorted(p.name for p in (home / "embedded").iterdir()) == sorted([MODEL_DIRNAME, CORPUS_FILENAME])


def test_embedded_home_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MTSAE_HOME", str(tmp_path / "h"))
    assert embedded_home() == tmp_path / "h"
    monkeypatch.delenv("MTSAE_HOME")
    assert embedded_home() == Path.home() / ".cache" / "mtsae"


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


def test_model_loads_as_gemma2_and_runs(model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert isinstance(model, Gemma2ForCausalLM)
    cfg = model.config
    assert cfg.num_hidden_layers == 26 >= 20
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim) == (64, 256, 16)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id) == (0, 1, 2)
    assert cfg.tie_word_embeddings and cfg.vocab_size == len(tokenizer)
    assert cfg.layer_types[:2] == ["sliding_attention", "full_attention"]
    assert len(cfg.layer_types) == 26
    assert model.dtype == torch.float32

    ids = tokenizer("the cell divides quickly.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == 27  # embeddings + one per layer
    assert all(h.shape == (1, ids.shape[1], 64) for h in out.hidden_states)
    assert out.logits.shape == (1, ids.shape[1], cfg.vocab_size)
    assert torch.isfinite(out.logits).all()
    assert out.logits.abs().max() <= 30.0  # final logit soft-capping

    assert isinstance(AutoModel.from_pretrained(model_dir), Gemma2Model)


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


def test_tokenizer_special_ids_and_bos_contract(tokenizer):
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 1, 0)
    assert tokenizer.unk_token_id == 3
    text = "the cell divides quickly."
    words = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(words) == 5 and 2 not in words
    # Like Gemma: the default call prepends <bos>, nothing else.
    assert tokenizer(text)["input_ids"] == [2, *words]
    assert tokenizer.decode(words) == text
    assert tokenizer("The CELL")["input_ids"] == tokenizer("the cell")["input_ids"]  # lower-cased
    assert tokenizer("zyzzyva", add_special_tokens=False)["input_ids"] == [3]
    batch = tokenizer(["the cell", "the"], padding=True, add_special_tokens=False)
    assert batch["input_ids"][1][-1] == 0


def test_tokenizer_round_trips_corpus_without_unk(tokenizer, corpus_docs):
    for doc in corpus_docs[:50]:
        ids = tokenizer(doc["text"], add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == doc["text"]


# --------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------


def test_corpus_loads_with_datasets_and_has_enough_varied_tokens(corpus_path, tokenizer, tmp_path):
    import datasets

    ds = datasets.load_dataset(
        "json", data_files=str(corpus_path), split="train", cache_dir=str(tmp_path / "hf_cache")
    )
    assert set(ds.column_names) == {"id", "topic", "text"}
    assert ds["id"] == list(range(len(ds)))
    assert 200 <= len(ds) <= 1000
    assert set(ds["topic"]) == set(embedded.TOPICS) and len(embedded.TOPICS) == 8

    encoded = tokenizer(ds["text"], add_special_tokens=False)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    assert all(tokenizer.unk_token_id not in ids for ids in encoded)
    assert sum(lengths) >= MIN_CORPUS_TOKENS
    n = len(lengths)
    assert sum(length < 128 for length in lengths) >= 0.10 * n
    assert sum(length > 1100 for length in lengths) >= 0.05 * n


def test_topics_use_distinct_vocabulary(corpus_docs):
    """The topic must be recoverable from the words (sparse probing relies on it)."""
    nouns = {t: set(w["nouns"]) for t, w in embedded.TOPICS.items()}
    for doc in corpus_docs[:40]:
        words = set(doc["text"].replace(".", " ").replace(",", " ").replace("?", " ").replace("!", " ").split())
        hits = {t: len(words & ns) for t, ns in nouns.items()}
        assert max(hits, key=hits.get) == doc["topic"]


def test_generator_is_pure_and_seeded():
    state = random.getstate()
    first = list(generate_documents(0, n_documents=20))
    assert random.getstate() == state  # no global RNG
    assert first == list(generate_documents(0, n_documents=20))
    assert first != list(generate_documents(1, n_documents=20))
    assert all(set(d) == {"id", "topic", "text"} for d in first)


def test_generated_text_is_pinned_across_refactors():
    """The corpus, the vocabulary and the mirrors' text are what caches and fingerprints were made from:
    moving the grammar (harvest/grammar.py) must not change one byte of them. A deliberate change bumps
    CORPUS_FILENAME/MODEL_DIRNAME and these digests together."""
    import hashlib

    from mtsae.evaluate.synthetic import TOPIC_NAMES, TextMaker

    def digest(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    corpus = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in generate_documents(embedded.CORPUS_SEED))
    assert digest(corpus) == "667e82c40b5fa0ebcb75a208f8ec1014d0e1110cfa986b2d984103dde39d16d2"
    assert digest("\n".join(embedded.vocabulary())) == "7e4296c4276e6137d326ac18a5453af341bd861a72d9d96e80cf15b10f288d65"
    maker = TextMaker(0)
    mirror = [maker.text(t, 40) for t in TOPIC_NAMES] + [maker.question(t) for t in TOPIC_NAMES]
    assert digest("\n".join(mirror)) == "bf0864cf34b1648ebc21d0c4a056878931876a9db33845d556a37eec3353f571"


def test_grammar_picks_the_article_from_the_next_word():
    from mtsae.harvest.grammar import detokenize, fill

    for noun, article in (("apple", "an"), ("pear", "a")):
        tokens = fill("{PRON} saw {a} {N} .", random.Random(0), {"PRON": ("we",), "N": (noun,)})
        assert detokenize(tokens) == f"we saw {article} {noun}."


# --------------------------------------------------------------------------
# Determinism, idempotence, atomicity
# --------------------------------------------------------------------------


def test_two_homes_give_byte_identical_assets(model_dir, corpus_path, tmp_path):
    other_model = ensure_embedded_model(home=tmp_path)
    other_corpus = ensure_embedded_corpus(home=tmp_path)
    assert other_model != model_dir
    assert _tree_bytes(other_model) == _tree_bytes(model_dir)
    assert other_corpus.read_bytes() == corpus_path.read_bytes()


def test_second_call_is_fast_and_rewrites_nothing(home, model_dir, corpus_path, monkeypatch):
    before = _tree_mtimes(home)

    def fail(_path):
        raise AssertionError("rebuilt an asset that was already complete")

    monkeypatch.setattr(embedded, "_write_model", fail)
    monkeypatch.setattr(embedded, "_write_corpus", fail)
    start = time.perf_counter()
    assert ensure_embedded_model(home=home) == model_dir
    assert ensure_embedded_corpus(home=home) == corpus_path
    assert time.perf_counter() - start < 0.5
    assert _tree_mtimes(home) == before


def test_half_written_assets_are_not_taken_as_complete(tmp_path):
    emb = tmp_path / "embedded"
    # A crashed build's temp dir, a published-looking dir without the marker,
    # and a crashed corpus temp file.
    crashed = emb / f".{MODEL_DIRNAME}.tmp-crashed"
    crashed.mkdir(parents=True)
    (crashed / "config.json").write_text('{"model_type": "gem')
    unmarked = emb / MODEL_DIRNAME
    unmarked.mkdir()
    (unmarked / "config.json").write_text('{"model_type": "gem')
    (emb / f".{CORPUS_FILENAME}.tmp-crashed").write_text('{"id": 0, "to')
    # Old leftovers are swept; young ones might be a live build elsewhere.
    old = emb / f".{MODEL_DIRNAME}.tmp-old"
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))

    model_dir = ensure_embedded_model(home=tmp_path)
    corpus = ensure_embedded_corpus(home=tmp_path)

    assert model_dir == unmarked and (model_dir / COMPLETE_MARKER).is_file()
    assert isinstance(AutoModelForCausalLM.from_pretrained(model_dir), Gemma2ForCausalLM)
    assert sum(1 for _ in open(corpus, encoding="utf-8")) == embedded.CORPUS_DOCUMENTS
    assert crashed.exists() and not old.exists()


def test_crash_during_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def crash(path: Path):
        (path / "config.json").write_text("{}")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(embedded, "_write_model", crash)
    with pytest.raises(RuntimeError):
        ensure_embedded_model(home=tmp_path)
    assert list((tmp_path / "embedded").iterdir()) == []


@pytest.mark.parametrize("kind", ["model", "corpus"])
def test_concurrent_builders_both_get_one_intact_copy(tmp_path, monkeypatch, kind):
    """Both builders finish writing before either publishes: the rename race is certain."""
    writer_name = "_write_model" if kind == "model" else "_write_corpus"
    ensure = ensure_embedded_model if kind == "model" else ensure_embedded_corpus
    real_writer = getattr(embedded, writer_name)
    barrier = threading.Barrier(2, timeout=60)

    def writer_then_wait(path: Path):
        real_writer(path)
        barrier.wait()

    monkeypatch.setattr(embedded, writer_name, writer_then_wait)
    results: list[Path] = []
    errors: list[BaseException] = []

    def run():
        try:
            results.append(ensure(home=tmp_path))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results[0] == results[1]
    # Only the published asset remains: the loser's temp copy was discarded.
    assert [p.name for p in (tmp_path / "embedded").iterdir()] == [results[0].name]
    if kind == "model":
        assert (results[0] / COMPLETE_MARKER).is_file()
        assert isinstance(AutoModelForCausalLM.from_pretrained(results[0]), Gemma2ForCausalLM)
    else:
        lines = results[0].read_text(encoding="utf-8").splitlines()
        assert len(lines) == embedded.CORPUS_DOCUMENTS
