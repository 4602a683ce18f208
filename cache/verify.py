"""`mtsae cache verify`: every chunk and index array against the manifest's checksums.

Works on a local path or a URL: checksums are recomputed from the chunks as
stored there (a remote cache is read, never copied). ``verify_store`` also
checks a copy that is not committed yet (`mtsae cache pull` before its last write).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zarr

from mtsae.cache import digests
from mtsae.cache import format as fmt
from mtsae.cache import remote
from mtsae.cache.reader import open_cache
from mtsae.cache.writer import crc32

REMOTE_READS_IN_FLIGHT = 8


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
    return verify_store(path, cache.group, cache.manifest, progress)


def verify_store(path: str | os.PathLike, group: zarr.Group, manifest: dict[str, Any], progress=None) -> list[Problem]:
    """Check the store at ``path`` (opened as ``group``) against ``manifest["checksums"]``."""
    checksums = manifest.get("checksums")
    if not checksums:
        return [Problem("manifest", None, "unverifiable", "no checksums recorded")]
    sizes = remote.list_objects(path)  # one listing tells missing and truncated chunks apart before decoding
    problems: list[Problem] = []
    for name, expected in checksums["chunks"].items():
        problems += _verify_chunks(path, group[name], expected, sizes, progress)
    for name, expected in checksums["arrays"].items():
        try:
            if crc32(group[name][:]) != expected:
                problems.append(Problem(name, None, "altered", "checksum mismatch"))
        except Exception as exc:  # a damaged index array may not even decode
            problems.append(Problem(name, None, "unreadable", str(exc).splitlines()[0][:120]))
    return problems


def _verify_chunks(path, arr: zarr.Array, expected: list, sizes: dict[str, int], progress, checksum=crc32) -> list[Problem]:
    rows = arr.chunks[0]

    def check(i: int) -> Problem | None:
        problem = _file_problem(path, arr, i, sizes)
        if problem is None:
            try:
                if checksum(arr[i * rows : (i + 1) * rows]) != expected[i]:
                    problem = ("altered", "checksum mismatch")
            except Exception as exc:
                problem = ("unreadable", str(exc).splitlines()[0][:120])
        return Problem(arr.path, i, *problem) if problem else None

    # Remote reads are latency-bound: keep a few in flight (results still come back in chunk order).
    workers = REMOTE_READS_IN_FLIGHT if remote.is_url(path) else 1
    problems = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mtsae-verify") as pool:
        for problem in pool.map(check, range(len(expected))):
            if problem:
                problems.append(problem)
            if progress is not None:
                progress(1)
    return problems


def chunk_key(arr: zarr.Array, index: int) -> str:
    """The object key of chunk ``index`` (along rows) of ``arr``, relative to the cache root."""
    return f"{arr.path}/{arr.metadata.encode_chunk_key((index,) + (0,) * (arr.ndim - 1))}"


def _file_problem(path, arr: zarr.Array, index: int, sizes: dict[str, int]) -> tuple[str, str] | None:
    """Missing or wrongly sized chunk objects, told apart before decoding."""
    key = chunk_key(arr, index)
    size = sizes.get(key)
    if size is None:
        return ("missing", remote.join(path, key))
    if not arr.compressors:  # raw chunks have an exact size
        want = arr.dtype.itemsize * arr.chunks[0] * (arr.shape[1] if arr.ndim > 1 else 1)
        if size != want:
            return ("truncated", f"{size} of {want} bytes")
    return None


def n_chunks_to_check(path: str | os.PathLike) -> int:
    attrs = open_cache(path).manifest
    return sum(len(v) for v in attrs.get("checksums", {}).get("chunks", {}).values())


# --- content digests (sha256) ----------------------------------------------------------------------------
def verify_digests(path: str | os.PathLike, progress=None) -> list[Problem] | None:
    """Every chunk and index array of the format against the manifest's sha256 digests (cache/digests.py).

    None when the cache records no digests (written before them): its crc32s are then all there is.
    Only the arrays the format defines are read, whatever names the manifest lists.
    """
    cache = open_cache(path)
    section = digests.recorded(cache.manifest)
    if section is None:
        return None
    altered = digests.manifest_problem(cache.manifest)
    problems = [Problem("manifest", None, "altered", altered)] if altered else []
    chunk_digests, array_digests = section.get("chunks") or {}, section.get("arrays") or {}
    sizes = remote.list_objects(path)
    for name in _chunked_arrays(cache.layers):
        expected = chunk_digests.get(name)
        arr = cache.group[name]
        n_chunks = -(-arr.shape[0] // arr.chunks[0])
        if not isinstance(expected, list) or len(expected) != n_chunks:
            problems.append(Problem(name, None, "unverifiable", f"{n_chunks} chunk(s) but no digest list of that length"))
            continue
        problems += _verify_chunks(path, arr, expected, sizes, progress, checksum=digests.digest)
    for name in (fmt.SEQ_OFFSETS, fmt.DOC_SEQ_OFFSETS, fmt.DOC_ROW):
        try:
            if digests.digest(cache.group[name][:]) != array_digests.get(name):
                problems.append(Problem(name, None, "altered", "sha256 digest mismatch"))
        except Exception as exc:  # a damaged index array may not even decode
            problems.append(Problem(name, None, "unreadable", str(exc).splitlines()[0][:120]))
    return problems


def _chunked_arrays(layers: list[int]) -> list[str]:
    """The per-token arrays of the format, by construction (never a name read from the manifest)."""
    return [fmt.activation_path(int(layer)) for layer in layers] + [fmt.TOKENS, fmt.SPECIAL_MASK]


def n_digests_to_check(path: str | os.PathLike) -> int:
    section = digests.recorded(open_cache(path).manifest) or {}
    return sum(len(v) for v in (section.get("chunks") or {}).values() if isinstance(v, list))
