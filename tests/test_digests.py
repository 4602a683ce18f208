"""sha256 content digests: recorded by the writer, checked by `cache verify`, and by `mtsae train` on first read."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from mtsae.cache import digests, open_cache, read_attrs
from mtsae.cache import format as fmt
from mtsae.cache.verify import verify_cache, verify_digests
from mtsae.cache.writer import crc32
from mtsae.cli import app

runner = CliRunner()
LAYER19 = fmt.activation_path(19)
V1_CACHE = Path(__file__).parent / "data" / "cache-v1"
TRAIN = ["--arch", "relu", "--layer", "19", "--d-sae", "16", "--steps", "3", "--window", "16", "--batch-windows", "4",
         "--eval-every", "0", "--eval-tokens", "64", "--holdout-fraction", "0.1", "--no-progress"]


def chunk_file(cache: Path, array: str, index: int) -> Path:
    arr = zarr.open_group(cache, mode="r")[array]
    return cache / array / arr.metadata.encode_chunk_key((index,) + (0,) * (arr.ndim - 1))


def flip_a_byte(path: Path, at: int = 7) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def forge(cache: Path, *, recompute_digests: bool, whole_layer: bool = False) -> None:
    """Replace layer 19's rows, then recompute what a forger can: the crc32s (and, with ``recompute_digests``,
    every sha256 and the data digest); the fingerprint is kept. The rows are real-looking: those of another
    chunk (chunk 1 only) or, with ``whole_layer``, layer 5's rows everywhere (a cache that holds the wrong layer)."""
    group = zarr.open_group(cache, mode="r+")
    arr = group[LAYER19]
    rows = arr.chunks[0]
    if whole_layer:
        arr[:] = group[fmt.activation_path(5)][:]
    else:
        arr[rows : 2 * rows] = arr[3 * rows : 4 * rows]
    attrs = dict(group.attrs[fmt.ATTRS_KEY])
    chunks = [arr[i * rows : (i + 1) * rows] for i in range(-(-arr.shape[0] // rows))]
    attrs["checksums"]["chunks"][LAYER19] = [crc32(values) for values in chunks]
    if recompute_digests:
        section = attrs["digests"]
        section["chunks"][LAYER19] = [digests.digest(values) for values in chunks]
        attrs["digests"] = digests.record(attrs, section["chunks"], section["arrays"])
    group.attrs[fmt.ATTRS_KEY] = attrs


def set_manifest(cache: Path, **fields) -> None:
    doc = json.loads((cache / "zarr.json").read_text())
    doc["attributes"][fmt.ATTRS_KEY].update(fields)
    (cache / "zarr.json").write_text(json.dumps(doc))


# --- recorded ---------------------------------------------------------------------------------------------
def test_every_chunk_and_index_array_has_a_sha256_and_the_manifest_a_data_digest(tiny_cache_path):
    cache = open_cache(tiny_cache_path)
    section = cache.manifest["digests"]
    assert section["algorithm"] == "sha256"
    assert set(section["chunks"]) == {fmt.activation_path(5), LAYER19, fmt.TOKENS, fmt.SPECIAL_MASK}
    for name, recorded in section["chunks"].items():
        arr = cache.group[name]
        rows = arr.chunks[0]
        assert len(recorded) == -(-arr.shape[0] // rows)
        for i, hexdigest in enumerate(recorded):
            values = np.ascontiguousarray(arr[i * rows : (i + 1) * rows])
            assert hashlib.sha256(values.tobytes()).hexdigest() == hexdigest
    for name in (fmt.SEQ_OFFSETS, fmt.DOC_SEQ_OFFSETS, fmt.DOC_ROW):
        assert hashlib.sha256(cache.group[name][:].tobytes()).hexdigest() == section["arrays"][name]
    assert digests.manifest_problem(cache.manifest) is None
    assert verify_digests(tiny_cache_path) == []
    edited = {**cache.manifest, "d_model": cache.d_model + 1}
    assert "data digest" in digests.manifest_problem(edited)


def test_a_resumed_harvest_records_the_same_digests(tiny_cache_path, tmp_path):
    """Chunks written by the run before the resume are read back and digested like the others."""
    from mtsae.cache.writer import CacheWriter

    out = tmp_path / "resumed.zarr"
    shutil.copytree(tiny_cache_path, out)
    writer = CacheWriter.resume(str(out))
    writer.checksums = {name: {} for name in writer.arrays}  # as if every chunk came from an earlier run
    cache = open_cache(out)
    for offsets in np.diff(cache.seq_offsets):
        writer.replay(0, int(offsets))
    attrs = writer.commit({})
    assert attrs["digests"]["chunks"] == read_attrs(tiny_cache_path)["digests"]["chunks"]


# --- cache verify ---------------------------------------------------------------------------------------------
def test_a_forgery_with_recomputed_crc32s_passes_crc32_but_not_the_digests(cache_copy):
    """The issue's forgery: data replaced, crc32s recomputed, fingerprint kept. crc32 alone passed it."""
    forge(cache_copy, recompute_digests=False)
    assert verify_cache(cache_copy) == []
    assert [(p.array, p.chunk, p.kind) for p in verify_digests(cache_copy)] == [(LAYER19, 1, "altered")]
    result = runner.invoke(app, ["cache", "verify", str(cache_copy), "--no-progress"])
    assert result.exit_code == 1 and f"{LAYER19} chunk 1: altered" in result.stdout
    assert result.stderr.strip() == f"error: cache {cache_copy} failed verification: 1 problem(s) listed above"


def test_an_edited_manifest_field_fails_the_data_digest(cache_copy):
    # An edit that still fits the schema and the arrays (counts, dtype, d_model are caught earlier, by
    # the manifest schema and the array checks: test_train_stops_at_an_altered_manifest).
    set_manifest(cache_copy, fingerprint="0" * 64)
    problems = verify_digests(cache_copy)
    assert [(p.array, p.kind) for p in problems] == [("manifest", "altered")] and "data digest" in problems[0].detail


def test_a_damaged_chunk_is_listed_once(cache_copy):
    flip_a_byte(chunk_file(cache_copy, fmt.TOKENS, 2))
    result = runner.invoke(app, ["cache", "verify", str(cache_copy), "--no-progress"])
    assert result.exit_code == 1 and result.stdout.strip().splitlines() == ["tokens chunk 2: altered (checksum mismatch)"]


def test_a_cache_without_digests_still_opens_and_verify_says_so():
    assert verify_digests(V1_CACHE) is None
    result = runner.invoke(app, ["cache", "verify", str(V1_CACHE), "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(f"note: {V1_CACHE} carries no content digest") and lines[1].startswith("ok:")


# --- train checks each chunk on first read ----------------------------------------------------------------------
def train(cache: Path, out: Path, *more: str):
    return runner.invoke(app, ["train", "--cache", str(cache), "--out", str(out), *TRAIN, *more])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and result.stderr.count("error") == 1 and "Traceback" not in result.output
    return lines[-1]


@pytest.mark.parametrize("array", [LAYER19, fmt.TOKENS, fmt.SPECIAL_MASK])
def test_train_stops_at_a_flipped_byte_naming_the_chunk(cache_copy, tmp_path, array):
    """Checked in the background on first read; nothing saved (a checkpoint every step) ever used the chunk."""
    flip_a_byte(chunk_file(cache_copy, array, 2))
    line = one_error_line(train(cache_copy, tmp_path / "run", "--checkpoint-every", "1"))
    assert f"chunk 2 of {array} in {cache_copy} does not match its recorded sha256 digest" in line
    assert not (tmp_path / "run" / "final").exists()
    assert not list((tmp_path / "run").glob("checkpoints/step_*"))


def test_train_stops_at_a_flipped_seq_offsets_byte(cache_copy, tmp_path):
    flip_a_byte(chunk_file(cache_copy, fmt.SEQ_OFFSETS, 0), at=8 * 3)
    line = one_error_line(train(cache_copy, tmp_path / "run"))
    assert f"chunk 0 of {fmt.SEQ_OFFSETS} in {cache_copy} does not match" in line


def test_train_stops_at_a_deleted_index_chunk(cache_copy, tmp_path):
    chunk_file(cache_copy, fmt.DOC_SEQ_OFFSETS, 0).unlink()
    line = one_error_line(train(cache_copy, tmp_path / "run"))
    assert f"chunk 0 of {fmt.DOC_SEQ_OFFSETS} in {cache_copy}" in line and "missing" in line


@pytest.mark.parametrize("field,value,message", [
    # caught before any chunk is read: by the manifest schema, and by the arrays against the manifest
    ("dtype", "float16", "but dtype float16 is stored as float16"),
    ("d_model", 65, "does not match its manifest"),
])
def test_train_stops_at_an_altered_manifest(cache_copy, tmp_path, field, value, message):
    set_manifest(cache_copy, **{field: value})
    assert message in one_error_line(train(cache_copy, tmp_path / "run"))


def test_train_stops_at_an_edit_the_layout_cannot_show(cache_copy, tmp_path):
    """A manifest edit that still fits the arrays (here: the fingerprint) fails the data digest."""
    set_manifest(cache_copy, fingerprint="0" * 64)
    assert "does not match its data digest" in one_error_line(train(cache_copy, tmp_path / "run"))


def test_train_on_a_cache_without_digests_checks_its_crc32s(tmp_path):
    copy = tmp_path / "v1.zarr"
    shutil.copytree(V1_CACHE, copy)
    flip_a_byte(chunk_file(copy, fmt.activation_path(19), 1))
    line = one_error_line(train(copy, tmp_path / "run", "--holdout-fraction", "0.3", "--window", "8"))
    assert f"chunk 1 of {fmt.activation_path(19)} in {copy} does not match its recorded crc32" in line


def test_train_on_an_intact_cache_checks_every_chunk_once(tiny_cache_path, tmp_path, monkeypatch):
    checked: list = []
    real = digests.ChunkChecker._check

    def counted(self, name, index, read):
        checked.append((name, index))
        return real(self, name, index, read)

    monkeypatch.setattr(digests.ChunkChecker, "_check", counted)
    result = train(tiny_cache_path, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert len(checked) == len(set(checked)) and {name for name, _ in checked} == {LAYER19, fmt.TOKENS, fmt.SPECIAL_MASK}


def test_checks_run_in_a_thread_that_ends_with_them(tiny_cache_path):
    import threading

    from mtsae.errors import MtsaeError

    cache = open_cache(tiny_cache_path)
    checker = digests.ChunkChecker(cache.path, cache.manifest)
    arr = cache.group[LAYER19]
    rows = arr.chunks[0]
    checker.submit(LAYER19, 0, lambda: arr[:rows])
    checker.submit(LAYER19, 1, lambda: arr[:rows])  # chunk 0's rows offered as chunk 1
    checker.submit(LAYER19, 1, lambda: arr[rows : 2 * rows])  # already queued: not checked again
    with pytest.raises(MtsaeError, match=f"chunk 1 of {LAYER19} in .* does not match its recorded sha256"):
        checker.wait()
    assert not any(t.name == "mtsae-digest" for t in threading.enumerate())
    with pytest.raises(MtsaeError, match="chunk 1 of"):
        checker.raise_failure()  # it stays failed
