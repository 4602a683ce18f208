"""`mtsae cache verify` catches a flipped byte, a truncated chunk and a deleted chunk, and names them."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtsae.cache.verify import verify_cache
from mtsae.cli import app

runner = CliRunner()


@pytest.fixture
def cache_copy(tiny_cache_path, tmp_path) -> Path:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_cache_path, copy)
    return copy


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
