"""`mtsae cache verify`: every chunk and index array against the manifest's checksums."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zarr
from zarr.storage import LocalStore

from mtsae.cache.reader import open_cache
from mtsae.cache.writer import crc32


@dataclass(frozen=True)
class Problem:
    array: str
    chunk: int | None  # None: the whole (index) array
    kind: str  # missing | truncated | altered | unreadable
    detail: str = ""

    def __str__(self) -> str:
        where = f"{self.array} chunk {self.chunk}" if self.chunk is not None else self.array
        return f"{where}: {self.kind}{' (' + self.detail + ')' if self.detail else ''}"


def verify_cache(path: str | os.PathLike, progress=None) -> list[Problem]:
    """All problems found; an empty list means every checksum matched."""
    cache = open_cache(path)
    checksums = cache.manifest.get("checksums")
    if not checksums:
        return [Problem("manifest", None, "unverifiable", "no checksums recorded")]
    problems: list[Problem] = []
    for name, expected in checksums["chunks"].items():
        problems += _verify_chunks(cache.group[name], expected, progress)
    for name, expected in checksums["arrays"].items():
        try:
            if crc32(cache.group[name][:]) != expected:
                problems.append(Problem(name, None, "altered", "checksum mismatch"))
        except Exception as exc:  # a damaged index array may not even decode
            problems.append(Problem(name, None, "unreadable", str(exc).splitlines()[0][:120]))
    return problems


def _verify_chunks(arr: zarr.Array, expected: list[int], progress) -> list[Problem]:
    problems = []
    rows = arr.chunks[0]
    for i, want in enumerate(expected):
        problem = _file_problem(arr, i)
        if problem is None:
            try:
                if crc32(arr[i * rows : (i + 1) * rows]) != want:
                    problem = ("altered", "checksum mismatch")
            except Exception as exc:
                problem = ("unreadable", str(exc).splitlines()[0][:120])
        if problem:
            problems.append(Problem(arr.path, i, *problem))
        if progress is not None:
            progress(1)
    return problems


def _file_problem(arr: zarr.Array, index: int) -> tuple[str, str] | None:
    """Missing or wrongly sized chunk files, told apart before decoding (local stores only)."""
    store = arr.store_path.store
    if not isinstance(store, LocalStore):
        return None
    key = arr.metadata.encode_chunk_key((index,) + (0,) * (arr.ndim - 1))
    chunk_file = Path(store.root) / arr.store_path.path / key
    if not chunk_file.is_file():
        return ("missing", str(chunk_file))
    if not arr.compressors:  # raw chunks have an exact size
        size = chunk_file.stat().st_size
        want = arr.dtype.itemsize * arr.chunks[0] * (arr.shape[1] if arr.ndim > 1 else 1)
        if size != want:
            return ("truncated", f"{size} of {want} bytes")
    return None


def n_chunks_to_check(path: str | os.PathLike) -> int:
    attrs = open_cache(path).manifest
    return sum(len(v) for v in attrs.get("checksums", {}).get("chunks", {}).values())

