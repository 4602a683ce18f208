"""`mtsae cache upgrade`: format 1 -> 2 in place, metadata only, crash-safe, refusing what it must not touch."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from mtsae.cache import CacheWriter, open_cache, register_bfloat16
from mtsae.cache import digests
from mtsae.cache import format as fmt
from mtsae.cache import upgrade
from mtsae.cache.verify import verify_cache, verify_digests
from mtsae.cli import app

runner = CliRunner()
DATA = Path(__file__).parent / "data"
LAYERS = (0, 2)


def _write(path: Path, dtype: str = "bfloat16") -> dict[int, np.ndarray]:
    """A small complete cache as this mtsae writes it (format 2), with a self-consistent manifest and digests."""
    hooks = [fmt.hook_name(layer) for layer in LAYERS]
    content = {"dtype": dtype, "hook_names": hooks, "recipe": "tests/test_cache_upgrade.py"}
    header = {"fingerprint": fmt.fingerprint(content), "layers": list(LAYERS), "d_model": 6, "dtype": dtype,
              "hook_names": hooks, "content": content}
    w = CacheWriter.create(str(path), layers=list(LAYERS), d_model=6, dtype_name=dtype, capacity_tokens=20,
                           chunk_tokens=8, header=header)
    generator = torch.Generator().manual_seed(0)
    rows = {layer: torch.randn(20, 6, generator=generator).to(getattr(torch, dtype)) for layer in LAYERS}
    bits = {layer: (v.view(torch.uint16) if dtype == "bfloat16" else v).numpy() for layer, v in rows.items()}
    for doc, (lo, hi) in enumerate(((0, 9), (9, 20))):
        special = np.zeros(hi - lo, bool)
        special[0] = True
        w.add_sequence(doc, np.arange(lo, hi, dtype=np.int32), special, {k: v[lo:hi] for k, v in bits.items()})
    w.finish({"counts": {"tokens": 20, "sequences": 2, "documents": 2}})
    return bits


def as_version_1(path: Path) -> None:
    """Make a format-2 bfloat16 cache what format 1 wrote: uint16 arrays, version 1 manifest, its data digest."""
    for layer in LAYERS:
        meta = path / fmt.activation_path(layer) / "zarr.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), **upgrade.V1_ARRAY_FIELDS}, indent=2))
    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs[fmt.ATTRS_KEY])
    attrs.update(format_version=1, storage={**attrs["storage"], "storage_dtype": "uint16"})
    section = attrs[digests.DIGESTS_KEY]
    attrs[digests.DIGESTS_KEY] = digests.record(attrs, section["chunks"], section["arrays"])
    group.attrs[fmt.ATTRS_KEY] = attrs


@pytest.fixture
def v1_cache(tmp_path) -> tuple[Path, dict[int, np.ndarray]]:
    path = tmp_path / "v1.zarr"
    bits = _write(path)
    as_version_1(path)
    assert open_cache(path).manifest["format_version"] == 1 and verify_cache(path) == [] and verify_digests(path) == []
    return path, bits


def chunk_files(path: Path) -> dict[str, str]:
    """sha256 of every file but the metadata: what an upgrade must leave byte for byte."""
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file() and f.name != "zarr.json"}


def all_files(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def upgrade_cli(path: Path):
    return runner.invoke(app, ["cache", "upgrade", str(path)])


def assert_reads_as(path: Path, version: int, bits: dict[int, np.ndarray], temporaries: int = 0) -> None:
    """Opens as ``version`` with the very bits written, and verifies (but for ``temporaries`` killed writes' files)."""
    cache = open_cache(path)
    assert cache.manifest["format_version"] == version
    for layer, expected in bits.items():
        assert np.array_equal(cache.rows(layer, 0, cache.n_tokens), expected)
    problems = verify_cache(path)
    assert len(problems) == temporaries and all("zarr temporary" in p.detail for p in problems), problems
    assert verify_digests(path) in ([], None)


def test_the_committed_v1_cache_upgrades_metadata_only(tmp_path):
    path = tmp_path / "cache"
    shutil.copytree(DATA / "cache-v1", path)
    expected = json.loads((DATA / "cache-v1.expected.json").read_text())
    before = chunk_files(path)
    result = upgrade_cli(path)
    assert result.exit_code == 0 and result.stdout.strip() == str(path), result.output
    assert chunk_files(path) == before  # no chunk rewritten
    cache = open_cache(path)
    assert cache.manifest["format_version"] == 2 and cache.fingerprint == expected["fingerprint"]
    assert cache.manifest["storage"]["storage_dtype"] == "bfloat16" and cache.manifest["upgraded"]["from_format_version"] == 1
    for layer in cache.layers:
        assert cache.chunk_memmaps(layer) is not None  # still memory-mapped
        assert hashlib.sha256(cache.rows(layer, 0, cache.n_tokens).tobytes()).hexdigest() == expected["sha256"][str(layer)]
    assert verify_cache(path) == []
    register_bfloat16()
    assert zarr.open_group(str(path), mode="r")["activations/blocks.19.hook_resid_post"].dtype == fmt.storage_dtype("bfloat16")


def test_an_upgraded_array_is_typed_as_a_fresh_harvest_writes_it(v1_cache, tmp_path):
    path, _ = v1_cache
    assert upgrade_cli(path).exit_code == 0
    fresh = tmp_path / "fresh.zarr"
    _write(fresh)
    for layer in LAYERS:
        ours, theirs = (json.loads((p / fmt.activation_path(layer) / "zarr.json").read_text()) for p in (path, fresh))
        assert ours == theirs


def test_digests_survive_and_the_data_digest_follows_the_storage_dtype(v1_cache):
    path, bits = v1_cache
    old = open_cache(path).manifest[digests.DIGESTS_KEY]
    assert upgrade_cli(path).exit_code == 0
    new = open_cache(path).manifest[digests.DIGESTS_KEY]
    assert new["chunks"] == old["chunks"] and new["arrays"] == old["arrays"] and new["data"] != old["data"]
    assert_reads_as(path, 2, bits)
    assert verify_digests(path) == []


def test_tensorstore_reads_an_upgraded_cache_as_bfloat16(v1_cache):
    ts = pytest.importorskip("tensorstore", reason="tensorstore is not installed (pip install -e '.[test]')")
    path, bits = v1_cache
    assert upgrade_cli(path).exit_code == 0
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / fmt.activation_path(2))}}).result()
    assert store.dtype == ts.bfloat16 and np.array_equal(store.read().result().view(np.uint16), bits[2])


@pytest.mark.parametrize("arrays_done", [0, 1, 2])
def test_an_interrupted_upgrade_leaves_a_readable_v1_cache_and_a_rerun_finishes(v1_cache, monkeypatch, arrays_done):
    path, bits = v1_cache
    real, calls = upgrade._retype_array, []

    def killed_after_some(metadata, where):
        if len(calls) == arrays_done:
            metadata.with_name(f"zarr.json.{'0' * 32}.partial").write_text("{")  # killed mid-write
            raise KeyboardInterrupt
        calls.append(metadata)
        real(metadata, where)

    monkeypatch.setattr(upgrade, "_retype_array", killed_after_some)
    monkeypatch.setattr(upgrade, "upgraded_manifest", lambda attrs: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        upgrade.upgrade_cache(str(path), log=lambda line: None)
    assert_reads_as(path, 1, bits, temporaries=int(arrays_done < len(LAYERS)))  # a valid version-1 cache
    monkeypatch.undo()
    result = upgrade_cli(path)
    assert result.exit_code == 0, result.output
    assert_reads_as(path, 2, bits)
    assert not list(path.rglob("*.partial"))


def test_running_it_on_a_format_2_cache_changes_nothing(v1_cache):
    path, bits = v1_cache
    assert upgrade_cli(path).exit_code == 0
    before = all_files(path)
    result = upgrade_cli(path)
    assert result.exit_code == 0 and "already format 2" in result.stderr
    assert all_files(path) == before


def _edit_manifest(path: Path, **fields) -> None:
    group = zarr.open_group(str(path), mode="r+")
    group.attrs[fmt.ATTRS_KEY] = {**group.attrs[fmt.ATTRS_KEY], **fields}


REFUSALS = {
    "float32": (lambda p: None, "nothing to upgrade"),
    "future-version": (lambda p: _edit_manifest(p, format_version=99), "format version 99"),
    "version-as-text": (lambda p: _edit_manifest(p, format_version="1"), "format version '1'"),
    "incomplete": (lambda p: _edit_manifest(p, status="incomplete"), "incomplete"),
    "not-a-cache": (lambda p: _edit_manifest(p, format="something-else"), "no mtsae cache"),
    "hostile-layers": (lambda p: _edit_manifest(p, layers=["../../../etc"]), "invalid manifest"),
    "edited-d-model": (lambda p: _edit_manifest(p, d_model=7), "altered manifest"),
    "edited-content": (lambda p: _edit_manifest(p, content={"dtype": "bfloat16", "recipe": "forged"}), "altered manifest"),
    "retyped-array": (lambda p: (p / fmt.activation_path(2) / "zarr.json").write_text(
        (p / fmt.activation_path(2) / "zarr.json").read_text().replace('"uint16"', '"int16"')), "does not match its manifest"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_are_one_error_line_and_change_nothing(tmp_path, case):
    path = tmp_path / "c.zarr"
    _write(path, dtype="float32" if case == "float32" else "bfloat16")
    if case != "float32":
        as_version_1(path)
    make, phrase = REFUSALS[case]
    make(path)
    before = all_files(path)
    result = upgrade_cli(path)
    errors = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert len(errors) == 1 and errors[0].startswith("error: ") and phrase in errors[0], result.stderr
    assert all_files(path) == before


def test_a_url_is_refused_with_the_way_round(tmp_path):
    result = upgrade_cli("s3://bucket/caches/demo")
    assert result.exit_code == 1 and result.stderr.startswith("error: ") and "cache pull" in result.stderr


def test_the_v1_fixture_and_its_upgrade_audit_alike(tmp_path):
    """`mtsae cache audit` reads both versions: the recorded model reproduces the same stored rows."""
    from mtsae.cache.audit import audit_cache

    path = tmp_path / "cache"
    shutil.copytree(DATA / "cache-v1", path)
    before = audit_cache(path, 2, seed=0, device="cpu", log=lambda line: None)
    assert upgrade_cli(path).exit_code == 0
    after = audit_cache(path, 2, seed=0, device="cpu", log=lambda line: None)
    assert before.ok and after.ok and after.sequences == before.sequences and after.worst == before.worst
