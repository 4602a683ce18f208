"""`mtsae cache verify`: the manifest against the format's schema and itself, the arrays against the manifest,
every chunk and index array against the manifest's checksums, and no stray objects.

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
from mtsae.cache.reader import open_cache, read_attrs
from mtsae.cache.writer import crc32
from mtsae.errors import MtsaeError

REMOTE_READS_IN_FLIGHT = 8


@dataclass(frozen=True)
class Problem:
    array: str  # an array name, "manifest", or the key of a stray object
    chunk: int | None  # None: the whole (index) array, the manifest or a stray object
    kind: str  # missing | truncated | altered | unreadable | invalid | mismatch | stray
    detail: str = ""

    def __str__(self) -> str:
        where = f"{self.array} chunk {self.chunk}" if self.chunk is not None else self.array
        return f"{where}: {self.kind}{' (' + self.detail + ')' if self.detail else ''}"


def verify_cache(path: str | os.PathLike, progress=None) -> list[Problem]:
    """All problems found; an empty list means the manifest is valid and self-consistent, the arrays are what it
    describes, every checksum matched and the store holds nothing else."""
    attrs = read_attrs(path)
    if attrs is None:
        raise MtsaeError(f"no mtsae cache at {path} (expected a Zarr group written by `mtsae harvest`)")
    if attrs.get("status") != fmt.STATUS_COMPLETE:
        raise MtsaeError(f"cache at {path} is incomplete (its harvest or copy did not finish); nothing to verify yet")
    problems = manifest_problems(attrs)
    if problems:
        return problems  # the rest of the manifest cannot be trusted to name what to read
    problems = [Problem("manifest", None, "invalid", text) for text in fmt.provenance_problems(attrs)]
    return problems + verify_store(path, remote.open_group(path, mode="r"), attrs, progress)


def verify_store(path: str | os.PathLike, group: zarr.Group, manifest: dict[str, Any], progress=None,
                 strays: bool = True) -> list[Problem]:
    """Check the store at ``path`` (opened as ``group``) against ``manifest``: its schema, the arrays' metadata,
    every chunk's checksum and (``strays``) objects that are not part of the format."""
    problems = manifest_problems(manifest)
    if problems:
        return problems
    sizes = remote.list_objects(path)  # one listing tells missing and truncated chunks apart before decoding
    problems = array_mismatches(group, manifest)
    damaged = {problem.array for problem in problems}
    checksums = manifest["checksums"]
    for name, expected in checksums["chunks"].items():
        if name not in damaged:
            problems += _verify_chunks(path, group[name], expected, sizes, progress)
    for name, expected in checksums["arrays"].items():
        if name not in damaged:
            problems += _verify_index_array(group, name, expected)
    return problems + (stray_objects(sizes, manifest) if strays else [])


def manifest_problems(manifest: Any) -> list[Problem]:
    """The manifest against the format's schema (cache/format.py): types, array names, counts."""
    return [Problem("manifest", None, "invalid", text) for text in fmt.manifest_problems(manifest)]


def array_mismatches(group: zarr.Group, manifest: dict[str, Any]) -> list[Problem]:
    """Arrays whose metadata (shape, chunks, dtype, attributes) disagree with the manifest, or is missing."""
    return [Problem(name, None, "mismatch", text) for name, text in fmt.array_problems(group, manifest).items()]


def stray_objects(sizes: dict[str, int], manifest: dict[str, Any]) -> list[Problem]:
    """Objects in the store that the format does not define (mtsae's own lock files aside)."""
    expected = fmt.expected_objects(manifest)
    strays = [key for key in sorted(sizes) if not fmt.is_format_object(key, expected) and not fmt.is_lock_file(key)]
    return [Problem(key, None, "stray", "a zarr temporary left by an interrupted write; delete it"
                    if fmt.ZARR_TEMPORARY.search(key) else "not part of the cache format") for key in strays]


def _verify_index_array(group: zarr.Group, name: str, expected: int) -> list[Problem]:
    try:
        if crc32(group[name][:]) != expected:
            return [Problem(name, None, "altered", "checksum mismatch")]
    except Exception as exc:  # a damaged index array may not even decode
        return [Problem(name, None, "unreadable", str(exc).splitlines()[0][:120])]
    return []


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
    return fmt.chunk_key(arr.path, index, arr.ndim)


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
    attrs = read_attrs(path)
    if attrs is None or fmt.manifest_problems(attrs) or attrs.get("status") != fmt.STATUS_COMPLETE:
        return 0  # verify_cache says why
    return sum(len(v) for v in attrs["checksums"]["chunks"].values())


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
