"""`mtsae cache verify` catches a flipped byte, a truncated chunk and a deleted chunk, and names them."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtsae.cache.verify import verify_cache
from mtsae.cli import app

runner = CliRunner()


def _chunk_index(cache: Path, array: str, chunk_file: Path) -> int:
    return int(chunk_file.relative_to(cache / array / "c").parts[0])  # c/<i>/0 (2-D) or c/<i> (1-D)


def _chunk_files(cache: Path, array: str) -> list[Path]:
    files = [p for p in (cache / array / "c").rglob("*") if p.is_file()]
    return sorted(files, key=lambda p: _chunk_index(cache, array, p))


def test_a_pristine_cache_verifies(tiny_cache_path):
    assert verify_cache(tiny_cache_path) == []
    result = runner.invoke(app, ["cache", "verify", str(tiny_cache_path), "--no-progress"])
    assert result.exit_code == 0 and result.stdout.startswith("ok:")


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("array", ["activations/blocks.19.hook_resid_post", "tokens"])
def test_damage_is_caught_and_named(cache_copy, damage, array):
    rng = random.Random(f"{damage}{array}")
    victim = rng.choice(_chunk_files(cache_copy, array))
    chunk = _chunk_index(cache_copy, array, victim)
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[rng.randrange(len(data))] ^= 0x01
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(bytes(data[: len(data) // 2]))
    else:
        victim.unlink()
    problems = verify_cache(cache_copy)
    expected_kind = {"flip": "altered", "truncate": "truncated", "delete": "missing"}[damage]
    assert [(p.array, p.chunk, p.kind) for p in problems] == [(array, chunk, expected_kind)]

    result = runner.invoke(app, ["cache", "verify", str(cache_copy), "--no-progress"])
    assert result.exit_code == 1
    assert f"{array} chunk {chunk}: {expected_kind}" in result.stdout
    assert result.stderr.strip().startswith("error: ") and "1 problem(s)" in result.stderr


def test_damaged_index_array_is_caught(cache_copy):
    victim = next(p for p in (cache_copy / "index" / "seq_offsets" / "c").rglob("*") if p.is_file())
    data = bytearray(victim.read_bytes())
    data[3] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert [(p.array, p.kind) for p in verify_cache(cache_copy)] == [("index/seq_offsets", "altered")]


def test_compressed_cache_damage_is_caught(tmp_path):
    from conftest import tiny_harvest

    out = tmp_path / "z.zarr"
    tiny_harvest(out, compression="zstd", max_tokens=1000)
    victim = _chunk_files(out, "activations/blocks.5.hook_resid_post")[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))
    problems = verify_cache(out)
    assert len(problems) == 1 and problems[0].kind in {"altered", "unreadable"} and problems[0].chunk == 0


# --- the manifest against the arrays and itself (issue 12, point 5) -------------------------------------------
def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _edit_manifest(cache: Path, edit) -> None:
    _edit_json(cache / "zarr.json", lambda doc: edit(doc["attributes"]["mtsae"]))


LAYER19 = "activations/blocks.19.hook_resid_post"
MANIFEST_EDITS = {
    "more-tokens": (lambda m: m["counts"].update(tokens=m["counts"]["tokens"] + 1), "manifest implies (3001, 64)"),
    "fewer-sequences": (lambda m: m["counts"].update(sequences=m["counts"]["sequences"] - 1), "index/seq_offsets: mismatch"),
    "other-dtype": (lambda m: m.update(dtype="float16"), "storage_dtype"),
    "other-d-model": (lambda m: m.update(d_model=32), f"{LAYER19}: mismatch"),
    "forged-content": (lambda m: m["content"].update(max_tokens=10**9), "not the sha256 of its content"),
    "forged-fingerprint": (lambda m: m.update(fingerprint="0" * 64), "not the sha256 of its content"),
    "emptied-checksums": (lambda m: m.update(checksums={}), "manifest checksums are {}"),
    "emptied-chunk-table": (lambda m: m["checksums"].update(chunks={}), "has no entry for"),
    "one-checksum-short": (lambda m: m["checksums"]["chunks"]["tokens"].pop(), "checksums.chunks['tokens']"),
    "layer-attribute": (lambda m: m.update(layers=[5, 20], hook_names=["blocks.5.hook_resid_post", "blocks.20.hook_resid_post"]),
                        "checksums.chunks names"),
}


@pytest.mark.parametrize("edit", MANIFEST_EDITS)
def test_verify_checks_the_manifest_against_the_arrays_and_its_content(cache_copy, edit):
    change, phrase = MANIFEST_EDITS[edit]
    _edit_manifest(cache_copy, change)
    result = runner.invoke(app, ["cache", "verify", str(cache_copy), "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert phrase in result.stdout, result.stdout
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_the_array_attributes_are_checked_too(cache_copy):
    _edit_json(cache_copy / LAYER19 / "zarr.json", lambda doc: doc["attributes"].update(mtsae_dtype="float16"))
    assert [(p.array, p.kind) for p in verify_cache(cache_copy)] == [(LAYER19, "mismatch")]


def test_the_committed_v1_cache_still_verifies():
    assert verify_cache(Path(__file__).parent / "data" / "cache-v1") == []


# --- stray files and zarr temporaries (points 5 and 7) ---------------------------------------------------------
PARTIAL = ".0123456789abcdef0123456789abcdef.partial"  # zarr's LocalStore: <name>.<uuid4 hex>.partial


def test_verify_reports_stray_files_and_zarr_temporaries(cache_copy):
    (cache_copy / "notes.txt").write_text("not mine")
    (cache_copy / "tokens" / "c" / f"0{PARTIAL}").write_bytes(b"half a chunk")
    (cache_copy / f"zarr{PARTIAL}").write_text("{}")
    problems = verify_cache(cache_copy)
    assert sorted((p.array, p.kind) for p in problems) == [
        ("notes.txt", "stray"), ("tokens/c/0" + PARTIAL, "stray"), ("zarr" + PARTIAL, "stray")]
    assert "zarr temporary" in str(next(p for p in problems if p.array.startswith("tokens")))


def test_completion_removes_zarr_temporaries(tmp_path):
    from conftest import tiny_harvest

    from mtsae.cache import writer as writer_module

    planted = []
    original = writer_module.CacheWriter._commit

    def commit_after_a_killed_write(self, manifest, more):  # as a kill -9 inside an earlier zarr write leaves them
        for key in ("tokens/c/0", "zarr.json", f"{LAYER19.replace('19', '5')}/zarr.json"):
            planted.append(tmp_path / "c.zarr" / (str(Path(key).with_suffix("")) + PARTIAL))
            planted[-1].write_bytes(b"x")
        return original(self, manifest, more)

    writer_module.CacheWriter._commit = commit_after_a_killed_write
    try:
        tiny_harvest(tmp_path / "c.zarr", max_tokens=600)
    finally:
        writer_module.CacheWriter._commit = original
    assert planted and not any(p.exists() for p in planted)
    assert verify_cache(tmp_path / "c.zarr") == []


def test_resume_removes_zarr_temporaries(tmp_path):
    from mtsae.cache.reader import read_attrs
    from mtsae.harvest.target import Action, prepare_target

    store = tmp_path / "c.zarr"
    shutil.copytree(Path(__file__).parent / "data" / "cache-v1", store)
    _edit_manifest(store, lambda m: m.update(status="incomplete", progress={"sequences": 2, "tokens": 64}))
    temporary = store / "tokens" / "c" / f"1{PARTIAL}"
    temporary.write_bytes(b"x")
    lookalike = store / "notes.partial"  # not zarr's name pattern: not ours to delete
    lookalike.write_text("keep")
    target = prepare_target(str(store), read_attrs(store)["fingerprint"], force=False, log=lambda _line: None)
    try:
        assert target.action is Action.RESUME
        assert not temporary.exists() and lookalike.read_text() == "keep"
    finally:
        target.release()


# --- damaged caches: one line in train, listed by verify (point 8) ----------------------------------------------
def _truncate_chunk(cache: Path) -> None:
    victim = cache / LAYER19 / "c" / "3" / "0"
    victim.write_bytes(victim.read_bytes()[:100])


DAMAGED = {
    "truncated-chunk": (_truncate_chunk, f"chunk 3 of {LAYER19}", f"{LAYER19} chunk 3: truncated"),
    "manifest-d-model": (lambda c: _edit_manifest(c, lambda m: m.update(d_model=32)), "shape is (3000, 64) but the "
                         "manifest implies (3000, 32)", f"{LAYER19}: mismatch"),
    "shrunk-shape": (lambda c: _edit_json(c / LAYER19 / "zarr.json", lambda d: d["shape"].__setitem__(0, 1000)),
                     "shape is (1000, 64)", f"{LAYER19}: mismatch"),
    "missing-array-metadata": (lambda c: (c / LAYER19 / "zarr.json").unlink(), "zarr.json is missing",
                               f"{LAYER19}: mismatch"),
}
TRAIN_SMALL = ["--layer", "19", "--arch", "relu", "--d-sae", "16", "--window", "16", "--batch-windows", "4",
               "--steps", "2", "--eval-every", "0", "--holdout-fraction", "0.1", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("damage", DAMAGED)
def test_damaged_caches_are_one_line_in_train_and_listed_by_verify(cache_copy, tmp_path, damage):
    make_damage, train_phrase, verify_phrase = DAMAGED[damage]
    make_damage(cache_copy)
    trained = runner.invoke(app, ["train", "--cache", str(cache_copy), "--out", str(tmp_path / "run"), *TRAIN_SMALL])
    assert trained.exit_code == 1 and "Traceback" not in trained.output, trained.output
    errors = trained.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and train_phrase in errors[0], trained.stderr
    verified = runner.invoke(app, ["cache", "verify", str(cache_copy), "--no-progress"])
    assert verified.exit_code == 1 and "Traceback" not in verified.output, verified.output
    assert verify_phrase in verified.stdout and verified.stderr.strip().startswith("error: ")


def test_a_damaged_compressed_chunk_is_one_line_in_train(tmp_path):
    from conftest import tiny_harvest

    out = tmp_path / "z.zarr"
    tiny_harvest(out, compression="zstd", max_tokens=1000)
    victim = _chunk_files(out, LAYER19)[2]
    victim.write_bytes(victim.read_bytes()[:100])
    trained = runner.invoke(app, ["train", "--cache", str(out), "--out", str(tmp_path / "run"), *TRAIN_SMALL])
    assert trained.exit_code == 1 and "Traceback" not in trained.output, trained.output
    errors = trained.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: chunk 2 of " + LAYER19) and "cannot be decoded" in errors[0]


def test_info_and_ls_describe_an_invalid_manifest_without_a_traceback(cache_copy):
    _edit_manifest(cache_copy, lambda m: m.update(layers="5", model=3, counts=[1], harvest="fast"))
    info = runner.invoke(app, ["cache", "info", str(cache_copy)])
    assert info.exit_code == 0 and "Traceback" not in info.output, info.output
    assert "invalid manifest: manifest field 'layers' is '5'" in info.stdout
    listing = runner.invoke(app, ["cache", "ls", str(cache_copy.parent)])
    assert listing.exit_code == 0 and "invalid manifest" in listing.stdout, listing.output
    verified = runner.invoke(app, ["cache", "verify", str(cache_copy), "--no-progress"])
    assert verified.exit_code == 1 and "manifest: invalid (manifest field 'layers'" in verified.stdout
