"""`mtsae harvest` on the embedded default: content, index, idempotence, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import TINY_HARVEST, tiny_harvest
from mtsae.cache import open_cache, read_attrs
from mtsae.cache import format as fmt
from mtsae.devices import compute_dtype
from mtsae.errors import MtsaeError
from mtsae.harvest import embedded, sources
from mtsae.harvest.sequences import Sequence, iter_sequences, pad_batch, split_document


def _model_and_tokenizer(dtype=torch.bfloat16):
    path = embedded.ensure_embedded_model()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(path)


def _first_batch(cache, batch_size):
    return [Sequence(0, cache.sequence_tokens(i), cache.special_mask[cache.seq_offsets[i]:cache.seq_offsets[i + 1]])
            for i in range(batch_size)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_stored_activations_equal_the_full_models_hidden_states(tiny_cache_path, tmp_path, dtype):
    path = tiny_cache_path if dtype == "bfloat16" else tmp_path / "f32.zarr"
    if dtype != "bfloat16":
        tiny_harvest(path, dtype=dtype, max_tokens=600)
    cache = open_cache(path)
    assert cache.manifest["compute_dtype"] == compute_dtype(dtype, torch.device("cpu"))
    model, tokenizer = _model_and_tokenizer(getattr(torch, cache.manifest["compute_dtype"]))
    batch = _first_batch(cache, TINY_HARVEST["batch_size"])
    ids, mask = pad_batch(batch, tokenizer.pad_token_id)  # the same batch harvest ran
    with torch.inference_mode():
        hidden = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                       output_hidden_states=True).hidden_states
    assert len(model.model.layers) == 26  # the reference runs every layer, LM head included
    for layer in (5, 19):
        for b, seq in enumerate(batch):
            start = cache.seq_offsets[b]
            stored = cache.activations(layer, start, start + len(seq.tokens))
            expected = hidden[layer + 1][b, : len(seq.tokens)].to(getattr(torch, dtype))  # rounded once
            assert stored.dtype == expected.dtype
            assert torch.equal(stored, expected), f"layer {layer}, sequence {b}"


def test_last_layer_is_the_block_output_not_the_normed_last_hidden_state(tmp_path):
    """``hidden_states[L + 1]`` is layer L's output for every layer but the last: there transformers
    returns the final norm of it. The harvest stores the block output (as TransformerLens's hook_resid_post)."""
    cache = open_cache(tiny_harvest(tmp_path / "last.zarr", layers=[24, 25], dtype="float32", max_tokens=600).path)
    model, tokenizer = _model_and_tokenizer(torch.float32)
    last = len(model.model.layers) - 1
    assert last == 25
    batch = _first_batch(cache, TINY_HARVEST["batch_size"])
    ids, mask = pad_batch(batch, tokenizer.pad_token_id)
    hooked = {}
    handle = model.model.layers[last].register_forward_hook(
        lambda _module, _args, out: hooked.update(out=out[0] if isinstance(out, tuple) else out))
    with torch.inference_mode():
        hidden = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                       output_hidden_states=True).hidden_states
    handle.remove()
    for b, seq in enumerate(batch):
        rows = slice(int(cache.seq_offsets[b]), int(cache.seq_offsets[b]) + len(seq.tokens))
        stored = cache.activations(last, rows.start, rows.stop)
        assert torch.equal(stored, hooked["out"][b, : len(seq.tokens)])  # the forward hook: bit for bit
        assert torch.equal(cache.activations(last - 1, rows.start, rows.stop), hidden[last][b, : len(seq.tokens)])
        final = hidden[last + 1][b, : len(seq.tokens)]
        assert (stored - final).abs().max() > 1  # not hidden_states[L + 1] ...
        with torch.inference_mode():
            torch.testing.assert_close(model.model.norm(stored), final)  # ... which is norm(block output)


def test_bf16_harvest_on_a_cpu_without_native_bf16_computes_in_float32(tiny_cache_path, tmp_path, monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # what mtsae.devices reads; see docs/benchmarks.md
    cache = open_cache(tiny_harvest(tmp_path / "slow-cpu.zarr", max_tokens=600).path)
    assert (cache.manifest["dtype"], cache.manifest["compute_dtype"]) == ("bfloat16", "float32")
    assert cache.manifest["content"]["compute_dtype"] == "float32"
    native = open_cache(tiny_cache_path)
    if native.manifest["compute_dtype"] == "bfloat16":  # this CPU computes bf16 natively: other values, other fingerprint
        assert cache.fingerprint != native.fingerprint and "compute_dtype" not in native.manifest["content"]
    model, tokenizer = _model_and_tokenizer(torch.float32)
    batch = _first_batch(cache, TINY_HARVEST["batch_size"])
    ids, mask = pad_batch(batch, tokenizer.pad_token_id)
    with torch.inference_mode():
        hidden = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                       output_hidden_states=True).hidden_states
    start, n = cache.seq_offsets[1], len(batch[1].tokens)
    stored = cache.activations(19, start, start + n)
    assert torch.equal(stored, hidden[20][1, :n].to(torch.bfloat16))  # float32 compute, rounded once


def test_batch_size_changes_nothing_beyond_dtype_tolerance(tiny_cache_path, tmp_path):
    one = open_cache(tiny_harvest(tmp_path / "bs1.zarr", batch_size=1).path)
    four = open_cache(tiny_cache_path)
    assert one.fingerprint == four.fingerprint  # batch size is layout, not content
    for layer in (5, 19):
        a = one.activations(layer, 0, one.n_tokens).float()
        b = four.activations(layer, 0, one.n_tokens).float()
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)  # a few bfloat16 ulps


def test_index_reconstructs_every_sequence_and_document(tiny_cache_path):
    cache = open_cache(tiny_cache_path)
    _, tokenizer = _model_and_tokenizer()
    rows = [json.loads(line) for line in embedded.ensure_embedded_corpus().read_text().splitlines()]
    ctx, bos = cache.manifest["context_len"], tokenizer.bos_token_id
    assert cache.seq_offsets[0] == 0 and cache.seq_offsets[-1] == cache.n_tokens
    assert np.all(np.diff(cache.seq_offsets) <= ctx)
    assert np.all(cache.tokens[cache.seq_offsets[:-1]] == bos)  # every sequence starts with BOS
    assert np.array_equal(np.flatnonzero(cache.special_mask), cache.seq_offsets[:-1])  # and nothing else is special
    for j in range(cache.n_documents):
        doc = np.array(sources.tokenize_text(tokenizer, [rows[cache.doc_row[j]]["text"]])[0])
        stored = cache.document_tokens(j)
        last = j == cache.n_documents - 1
        if last and cache.manifest["last_document_truncated"]:
            assert len(stored) < len(doc) and np.array_equal(stored, doc[: len(stored)])
        else:
            assert np.array_equal(stored, doc), f"document {j}"
        pieces = split_document(doc, ctx, bos)
        for k, seq in enumerate(range(cache.doc_seq_offsets[j], cache.doc_seq_offsets[j + 1])):
            assert np.array_equal(cache.sequence_tokens(seq), pieces[k][: len(cache.sequence_tokens(seq))])
    assert np.array_equal(cache.seq_doc, np.repeat(np.arange(cache.n_documents), np.diff(cache.doc_seq_offsets)))


def test_manifest_explains_the_cache_through_plain_zarr(tiny_cache_path):
    from mtsae.cache import register_bfloat16

    register_bfloat16()
    group = zarr.open_group(str(tiny_cache_path), mode="r")
    attrs = group.attrs["mtsae"]
    assert attrs["status"] == "complete" and attrs["format_version"] == fmt.FORMAT_VERSION
    assert attrs["hook_names"] == ["blocks.5.hook_resid_post", "blocks.19.hook_resid_post"]
    assert attrs["counts"]["tokens"] == group["tokens"].shape[0] <= TINY_HARVEST["max_tokens"]
    assert attrs["model"]["weights_sha256"] and attrs["dataset"]["files_sha256"]
    assert attrs["fingerprint"] == fmt.fingerprint(attrs["content"])
    array = group["activations/blocks.19.hook_resid_post"]
    assert array.attrs["mtsae_dtype"] == "bfloat16" and array.dtype == fmt.storage_dtype("bfloat16")  # Zarr's bfloat16
    assert attrs["storage"]["storage_dtype"] == "bfloat16"
    assert array.shape == (attrs["counts"]["tokens"], attrs["d_model"])
    assert array.compressors == ()  # raw by default, so train can memory-map it


def test_same_settings_again_is_a_no_op(tiny_cache_path):
    before = {p: p.stat().st_mtime_ns for p in Path(tiny_cache_path).rglob("*") if p.is_file()}
    outcome = tiny_harvest(tiny_cache_path)
    assert outcome.skipped
    after = {p: p.stat().st_mtime_ns for p in Path(tiny_cache_path).rglob("*") if p.is_file()}
    assert before == after


def test_different_settings_at_the_same_target_are_refused_unless_forced(tmp_path):
    out = tmp_path / "c.zarr"
    first = tiny_harvest(out, max_tokens=300)
    with pytest.raises(MtsaeError, match="holds a different cache"):
        tiny_harvest(out, max_tokens=400)
    assert read_attrs(out)["fingerprint"] == first.attrs["fingerprint"]  # untouched
    from mtsae.harvest.config import HarvestConfig
    from mtsae.harvest.run import harvest

    forced = harvest(HarvestConfig(**{**TINY_HARVEST, "max_tokens": 400}), str(out), force=True, log=lambda _: None,
                     progress=False)
    assert read_attrs(out)["fingerprint"] == forced.attrs["fingerprint"] != first.attrs["fingerprint"]


def test_something_that_is_not_a_cache_is_never_overwritten(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    from mtsae.harvest.config import HarvestConfig
    from mtsae.harvest.run import harvest

    with pytest.raises(MtsaeError, match="not an mtsae cache"):
        harvest(HarvestConfig(**TINY_HARVEST), str(out), force=True, log=lambda _: None, progress=False)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_the_plan_resolves_the_settings_and_never_changes_the_config(tiny_cache_path):
    """HarvestConfig is what was asked (frozen); the plan sorts the layers, fills in the context length from the
    model, and is what the store records and the fingerprint covers."""
    import dataclasses

    from mtsae.harvest.config import HarvestConfig
    from mtsae.harvest.plan import resolve_plan

    cfg = HarvestConfig(**{**TINY_HARVEST, "layers": [19, 5], "context_len": None})
    plan = resolve_plan(cfg)
    assert (cfg.layers, cfg.context_len) == ([19, 5], None)
    assert (plan.config.layers, plan.config.context_len) == ([5, 19], 256)  # the embedded model has 256 positions
    assert plan.header()["config"] == {**dataclasses.asdict(cfg), "layers": [5, 19], "context_len": 256}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch_size = 8  # type: ignore[misc]
    resumed = plan.with_batch_size(8)
    assert resumed.config.batch_size == 8 and plan.config.batch_size == TINY_HARVEST["batch_size"]
    assert resumed.fingerprint == plan.fingerprint  # batch size is layout, not content
    explicit = resolve_plan(HarvestConfig(**TINY_HARVEST, layers=[5, 19]))  # context_len=64 in TINY_HARVEST
    assert explicit.fingerprint == open_cache(tiny_cache_path).fingerprint


def test_the_harvest_modules_import_one_way():
    """run.py -> parallel.py -> plan/capture/sequences, never back (a function-level import hid a cycle once)."""
    import ast

    package = Path(sources.__file__).parent
    imports = {}
    for path in package.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        imports[path.stem] = {n.split(".")[2] for n in names if n.startswith("mtsae.harvest.") and n.count(".") >= 2}
    assert "run" not in imports["parallel"] and "parallel" in imports["run"]

    def reachable(start, seen=()):
        return {m for dep in imports.get(start, ()) if dep not in seen for m in {dep, *reachable(dep, (*seen, dep))}}

    assert not [m for m in imports if m in reachable(m)], "a cycle among harvest/*.py imports"


def test_a_crash_leaves_an_incomplete_store_that_is_refused_then_replaced(tmp_path, monkeypatch):
    from mtsae.cache import writer as writer_module

    out = tmp_path / "c.zarr"
    real_finish = writer_module.CacheWriter.finish

    def crash(self, manifest):
        raise RuntimeError("simulated crash before the manifest")

    monkeypatch.setattr(writer_module.CacheWriter, "finish", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_harvest(out, max_tokens=600)
    assert read_attrs(out)["status"] == "incomplete"
    with pytest.raises(MtsaeError, match="incomplete"):
        open_cache(out)
    monkeypatch.setattr(writer_module.CacheWriter, "finish", real_finish)
    outcome = tiny_harvest(out, max_tokens=600)  # same settings: the unfinished store is replaced
    assert not outcome.skipped and open_cache(out).complete


def test_nan_activations_are_named_by_position(tmp_path, monkeypatch):
    from mtsae.harvest import capture

    original = capture.ResidualCapture.__call__

    def poisoned(self, input_ids, attention_mask):
        acts = {k: v.clone() for k, v in original(self, input_ids, attention_mask).items()}
        acts[19][1, 3, 0] = float("nan")
        return acts

    monkeypatch.setattr(capture.ResidualCapture, "__call__", poisoned)
    with pytest.raises(MtsaeError, match="non-finite activation at layer 19, sequence 1, position 3"):
        tiny_harvest(tmp_path / "c.zarr")
    assert read_attrs(tmp_path / "c.zarr") is None or read_attrs(tmp_path / "c.zarr")["status"] == "incomplete"


def test_compressed_store_reads_the_same(tiny_cache_path, tmp_path):
    zstd = open_cache(tiny_harvest(tmp_path / "z.zarr", compression="zstd").path)
    raw = open_cache(tiny_cache_path)
    assert zstd.fingerprint == raw.fingerprint and zstd.chunk_memmaps(19) is None
    assert np.array_equal(zstd.rows(19, 0, zstd.n_tokens), raw.rows(19, 0, raw.n_tokens))


def test_budget_and_document_policy():
    docs = [(0, list(range(10, 15))), (1, []), (2, list(range(100, 300)))]
    seqs = list(iter_sequences(iter(docs), context_len=64, bos_id=2, special_ids={0, 1, 2}, max_tokens=100))
    assert sum(len(s.tokens) for s in seqs) == 100
    assert [s.doc_row for s in seqs] == [0, 2, 2]  # the empty document is skipped; documents never share a sequence
    assert all(s.tokens[0] == 2 and s.special[0] and not s.special[1:].any() for s in seqs)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "no-such-org/no-such-model"}, "cannot load model 'no-such-org/no-such-model'"),
        ({"model": "./missing/model/dir"}, "is not a Hugging Face model directory"),
        ({"layers": [5, 26]}, "layer 26 is out of range: model embedded has 26 layers"),
        ({"text_column": "body"}, "has no column 'body' \\(columns: id, topic, text\\)"),
        ({"dataset": "./no/such/file.jsonl"}, "does not exist"),
        ({"dataset": "mydata.jsonl"}, "dataset file mydata.jsonl does not exist; check the path"),  # not "on the Hub"
        ({"context_len": 4096}, "exceeds the model's 256 positions"),
        ({"dtype": "float64"}, "--dtype must be one of"),
        ({"layers": []}, "at least one layer"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, overrides, message):
    with pytest.raises(MtsaeError, match=message):
        tiny_harvest(tmp_path / "c.zarr", **overrides)
    assert not (tmp_path / "c.zarr").exists()


def test_empty_dataset_and_unwritable_output(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(MtsaeError, match="cannot load dataset|is empty"):
        tiny_harvest(tmp_path / "a.zarr", dataset=str(empty))
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(MtsaeError, match="yielded no tokens"):
        tiny_harvest(tmp_path / "b.zarr", dataset=str(blank))
    assert read_attrs(tmp_path / "b.zarr") is None
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(MtsaeError, match="cannot write the cache"):
        tiny_harvest(a_file / "sub.zarr")


def test_local_text_files_work_like_any_dataset(tmp_path):
    data = tmp_path / "notes.txt"
    data.write_text("the cell divides .\n\nthe market rallies .\n")
    cache = open_cache(tiny_harvest(tmp_path / "t.zarr", dataset=str(data)).path)
    assert cache.manifest["dataset"]["files_sha256"] and cache.n_documents == 2  # blank line skipped, 2 rows kept
    assert cache.manifest["dataset_exhausted"] is True


@pytest.mark.parametrize("name,content,where", [
    ("latin1.jsonl", b'{"text": "caf\xe9 au lait"}\n', "byte 13"),
    ("latin1.csv", b"text\ncaf\xe9 au lait\n", "byte 8"),
    ("late.jsonl", b'{"text": "fine"}\n' * 200 + b'{"text": "na\xefve"}\n', "byte 3412"),
    ("cut.jsonl", b'{"text": "fine"}\n{"text": "\xe2\x82', "ends inside a character"),
])
def test_a_dataset_that_is_not_utf8_is_one_line_naming_the_byte(tmp_path, name, content, where):
    from typer.testing import CliRunner

    from mtsae.cli import app

    data = tmp_path / name
    data.write_bytes(content)
    result = CliRunner().invoke(app, ["harvest", "--dataset", str(data), "--out", str(tmp_path / "c.zarr"), "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1, result.stderr
    assert f"{data} is not UTF-8 text" in lines[-1] and where in lines[-1]
    assert not (tmp_path / "c.zarr").exists()
