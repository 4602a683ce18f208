"""Cache format: writer/reader round trips, bit-exact bfloat16, memmap == zarr, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtsae.cache import CacheWriter, as_torch, open_cache, read_attrs
from mtsae.cache import format as fmt
from mtsae.errors import MtsaeError


def _write(path, seqs, *, layers=(0, 2), d=6, dtype="bfloat16", chunk=16, compression="none", finish=True):
    """Write ``seqs`` = [(doc_row, n_tokens)] with random data; returns (tokens, {layer: stored rows})."""
    rng = np.random.default_rng(len(seqs))
    total = sum(n for _, n in seqs)
    w = CacheWriter.create(str(path), layers=list(layers), d_model=d, dtype_name=dtype, capacity_tokens=max(total, 1),
                    chunk_tokens=chunk, compression=compression,
                    header={"fingerprint": "f" * 64, "layers": list(layers), "d_model": d, "dtype": dtype})
    tokens, acts = [], {layer: [] for layer in layers}
    for doc_row, n in seqs:
        t = rng.integers(0, 1000, n).astype(np.int32)
        special = np.zeros(n, bool)
        special[0] = True
        values = {layer: torch.randn(n, d).to(getattr(torch, dtype)) for layer in layers}
        stored = {layer: (v.view(torch.uint16) if dtype == "bfloat16" else v).numpy() for layer, v in values.items()}
        w.add_sequence(doc_row, t, special, stored)
        tokens.append(t)
        for layer in layers:
            acts[layer].append(stored[layer])
    if finish:
        w.finish({"counts": {"tokens": total, "sequences": w.n_sequences, "documents": w.n_documents}})
    else:
        w.abort()
    return np.concatenate(tokens), {layer: np.concatenate(a) for layer, a in acts.items()}


sequences = st.lists(st.tuples(st.integers(0, 3), st.integers(1, 40)), min_size=1, max_size=12).map(
    lambda pairs: [(sum(p[0] for p in pairs[: i + 1]), n) for i, (_, n) in enumerate(pairs)]  # doc rows non-decreasing
)


@settings(max_examples=25, deadline=None)
@given(seqs=sequences, chunk=st.integers(1, 50), compression=st.sampled_from(["none", "zstd"]))
def test_round_trip_is_bit_exact_through_every_reader(tmp_path_factory, seqs, chunk, compression):
    path = tmp_path_factory.mktemp("rt") / "c.zarr"
    tokens, acts = _write(path, seqs, chunk=chunk, compression=compression)
    cache = open_cache(path)
    assert np.array_equal(cache.tokens, tokens)
    assert cache.n_sequences == len(seqs)
    assert np.array_equal(np.diff(cache.seq_offsets), [n for _, n in seqs])
    # documents: consecutive sequences with the same doc row
    doc_rows = [r for i, (r, _) in enumerate(seqs) if i == 0 or seqs[i - 1][0] != r]
    assert list(cache.doc_row) == doc_rows
    plain = zarr.open_group(str(path), mode="r")
    for layer, expected in acts.items():
        assert np.array_equal(cache.rows(layer, 0, cache.n_tokens), expected)
        stored = plain[fmt.activation_path(layer)][:]  # format 2: Zarr's bfloat16 (registered by mtsae.cache)
        assert stored.dtype == fmt.storage_dtype("bfloat16") and np.array_equal(stored.view(np.uint16), expected)
        lo, hi = len(expected) // 3, max(len(expected) // 3 + 1, 2 * len(expected) // 3)
        assert np.array_equal(cache.rows(layer, lo, hi), expected[lo:hi])  # arbitrary slices across chunks
    assert (cache.chunk_memmaps(layers := cache.layers[0]) is None) == (compression != "none"), layers


def test_bfloat16_special_values_survive(tmp_path):
    path = tmp_path / "c.zarr"
    values = torch.tensor([[0.0, -0.0, 1e-40, -3.3895e38, float("inf"), 7.5]], dtype=torch.bfloat16)
    w = CacheWriter.create(str(path), layers=[0], d_model=6, dtype_name="bfloat16", capacity_tokens=1, chunk_tokens=4,
                    header={"fingerprint": "b" * 64, "layers": [0], "d_model": 6, "dtype": "bfloat16"})
    w.add_sequence(0, np.array([2], np.int32), np.array([True]), {0: values.view(torch.uint16).numpy()})
    w.finish({"counts": {"tokens": 1, "sequences": 1, "documents": 1}})
    back = open_cache(path).activations(0, 0, 1)
    assert back.dtype == torch.bfloat16
    assert torch.equal(back.view(torch.uint16), values.view(torch.uint16))


def test_memmap_is_zero_copy_within_a_chunk(tmp_path):
    path = tmp_path / "c.zarr"
    _write(path, [(0, 40)], chunk=16)
    cache = open_cache(path)
    rows = cache.rows(0, 17, 30)
    assert isinstance(rows.base, np.memmap) or isinstance(rows, np.memmap)
    assert as_torch(np.array(rows), "bfloat16").dtype == torch.bfloat16


def test_all_zero_chunks_get_their_files_even_after_reopening(tmp_path):
    """Regression guard for the writer's write_empty_chunks: zarr drops all-zero chunks unless an array is opened
    with it on, and a resumed writer reopens its arrays; np.memmap and `cache verify` need every chunk file."""
    path = tmp_path / "c.zarr"
    header = {"fingerprint": "e" * 64, "layers": [0], "d_model": 2, "dtype": "float32"}
    w = CacheWriter.create(str(path), layers=[0], d_model=2, dtype_name="float32", capacity_tokens=8, chunk_tokens=2,
                           header=header)
    zeros = {0: np.zeros((4, 2), np.float32)}
    w.add_sequence(0, np.zeros(4, np.int32), np.zeros(4, bool), zeros)
    w.mark()
    w.flush()
    w = CacheWriter.resume(str(path))  # reopened: the setting must be applied again
    w.replay(0, 4)
    w.resume_staging()
    w.add_sequence(1, np.zeros(4, np.int32), np.zeros(4, bool), zeros)
    attrs = w.finish({"counts": {"tokens": 8, "sequences": 2, "documents": 2}})
    on_disk = {str(f.relative_to(path)) for f in path.rglob("*") if f.is_file()}
    assert fmt.expected_objects(attrs) <= on_disk
    assert open_cache(path).chunk_memmaps(0) is not None


def test_a_resumed_bfloat16_writer_reloads_its_partial_chunk_bit_for_bit(tmp_path):
    """Resuming reloads the rows of a partly written chunk from disk: format 2 reads them as Zarr bfloat16, and they
    must come back as the same uint16 bits (a value conversion would change them), so the store ends byte-identical."""
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(12, 4, generator=generator).bfloat16().view(torch.uint16).numpy()
    header = {"fingerprint": "d" * 64, "layers": [0], "d_model": 4, "dtype": "bfloat16"}

    def start(path):
        return CacheWriter.create(str(path), layers=[0], d_model=4, dtype_name="bfloat16", capacity_tokens=12,
                                  chunk_tokens=8, header=header)

    def add(writer, doc, lo, hi):
        writer.add_sequence(doc, np.arange(lo, hi, dtype=np.int32), np.zeros(hi - lo, bool), {0: rows[lo:hi]})

    whole = start(tmp_path / "whole.zarr")
    add(whole, 0, 0, 5)
    add(whole, 1, 5, 12)
    whole.finish({"counts": {"tokens": 12, "sequences": 2, "documents": 2}})
    first = start(tmp_path / "resumed.zarr")
    add(first, 0, 0, 5)
    first.mark()
    first.flush()  # 5 rows of chunk 0 on disk, then "killed"
    again = CacheWriter.resume(str(tmp_path / "resumed.zarr"))
    again.replay(0, 5)
    again.resume_staging()
    add(again, 1, 5, 12)
    again.finish({"counts": {"tokens": 12, "sequences": 2, "documents": 2}})
    files = {name: sorted(p.relative_to(tmp_path / name).as_posix() for p in (tmp_path / name).rglob("*")
                    if p.is_file() and p.name != "zarr.json")
             for name in ("whole.zarr", "resumed.zarr")}
    assert files["whole.zarr"] == files["resumed.zarr"] and "activations/blocks.0.hook_resid_post/c/1/0" in files["whole.zarr"]
    for key in files["whole.zarr"]:
        assert (tmp_path / "whole.zarr" / key).read_bytes() == (tmp_path / "resumed.zarr" / key).read_bytes(), key
    assert np.array_equal(open_cache(tmp_path / "resumed.zarr").rows(0, 0, 12), rows)


def test_unfinished_store_is_refused_and_says_so(tmp_path):
    path = tmp_path / "c.zarr"
    _write(path, [(0, 10), (1, 5)], finish=False)
    assert read_attrs(path)["status"] == fmt.STATUS_INCOMPLETE
    with pytest.raises(MtsaeError, match="incomplete"):
        open_cache(path)
    assert open_cache(path, require_complete=False).complete is False


def test_not_a_cache_and_future_versions_are_refused(tmp_path):
    with pytest.raises(MtsaeError, match="no mtsae cache"):
        open_cache(tmp_path)
    path = tmp_path / "c.zarr"
    _write(path, [(0, 3)])
    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs[fmt.ATTRS_KEY])
    attrs["format_version"] = fmt.FORMAT_VERSION + 1
    group.attrs[fmt.ATTRS_KEY] = attrs
    with pytest.raises(MtsaeError, match="upgrade mtsae"):
        open_cache(path)


def test_fingerprint_is_order_independent_and_content_sensitive():
    a = fmt.fingerprint({"x": 1, "y": [1, 2]})
    assert a == fmt.fingerprint({"y": [1, 2], "x": 1})
    assert a != fmt.fingerprint({"x": 1, "y": [2, 1]})


def test_the_committed_version_1_cache_still_opens():
    """A cache written by format version 1 (tests/data/cache-v1): every later reader must read it."""
    import hashlib
    import json
    from pathlib import Path

    data = Path(__file__).parent / "data"
    expected = json.loads((data / "cache-v1.expected.json").read_text())
    cache = open_cache(data / "cache-v1")
    assert cache.manifest["format_version"] == 1 and cache.fingerprint == expected["fingerprint"]
    assert (cache.n_tokens, cache.n_sequences, cache.n_documents) == (
        expected["n_tokens"], expected["n_sequences"], expected["n_documents"])
    assert hashlib.sha256(cache.tokens.tobytes()).hexdigest() == expected["tokens_sha256"]
    for layer in cache.layers:
        assert cache.chunk_memmaps(layer) is not None
        assert hashlib.sha256(cache.rows(layer, 0, cache.n_tokens).tobytes()).hexdigest() == expected["sha256"][str(layer)]
    from mtsae.cache.verify import verify_cache

    assert verify_cache(data / "cache-v1") == []


# --- untrusted input: object keys and manifests (issue 12) -------------------------------------------------------
def test_a_local_path_derived_from_a_key_must_stay_inside_dest(tmp_path):
    from mtsae.cache.transfer import inside

    dest = tmp_path / "dest"
    (dest / "tokens").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (dest / "activations").symlink_to(tmp_path / "elsewhere")  # a folder that leads out
    assert inside(dest, "tokens/c/0") == (dest / "tokens" / "c" / "0").resolve()
    for key in ("../x", "tokens/../../x", str(tmp_path / "x"), "activations/zarr.json", "", "."):
        with pytest.raises(MtsaeError, match="outside"):
            inside(dest, key)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(["..", ".", "a", "c", "", "/", "zarr.json", "..."]), max_size=6))
def test_inside_never_returns_a_path_outside_dest(tmp_path, parts):
    from mtsae.cache.transfer import inside

    dest = (tmp_path / "dest").resolve()
    key = "/".join(parts)
    try:
        path = inside(dest, key)
    except MtsaeError:
        return
    assert path.is_relative_to(dest) and path != dest


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2, 2**33) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(path=st.lists(st.sampled_from(["layers", "d_model", "dtype", "storage", "counts", "checksums", "chunks", "arrays",
                                      "tokens", "fingerprint", "content", "chunk_tokens", "status", "0"]), min_size=1,
                     max_size=3), value=_JSON)
def test_any_manifest_gets_a_list_of_problems_never_an_exception(path, value):
    manifest = json.loads((Path(__file__).parent / "data" / "cache-v1" / "zarr.json").read_text())["attributes"]["mtsae"]
    node = manifest
    for key in path[:-1]:
        child = node.get(key) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            break
        node = child
    if isinstance(node, dict):
        node[path[-1]] = value
    problems = fmt.manifest_problems(manifest)
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
    if not problems:  # then everything the readers derive from it is well-defined
        assert isinstance(fmt.provenance_problems(manifest), list)
        assert all(isinstance(key, str) and ".." not in key.split("/") for key in fmt.expected_objects(manifest))
        assert isinstance(fmt.array_problems(_V1_GROUP, manifest), dict)


_V1_GROUP = zarr.open_group(str(Path(__file__).parent / "data" / "cache-v1"), mode="r")
