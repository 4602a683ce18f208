"""`mtsae cache upgrade PATH`: a format-1 bfloat16 cache becomes format 2, in place, by rewriting metadata only.

Format 2 types bfloat16 activations with Zarr's ``bfloat16`` instead of ``uint16``; the chunk bytes are the same,
so no chunk is read or written. The steps, each one atomic replace of one ``zarr.json``:

1. each activation array's ``zarr.json``: ``data_type`` ``uint16`` -> ``bfloat16`` and ``fill_value`` 0 -> 0.0;
2. last, the manifest: ``format_version`` 2, ``storage.storage_dtype`` ``bfloat16``, the ``digests`` data digest
   recomputed over the unchanged chunk digests (it binds ``storage_dtype``), and an ``upgraded`` record.

Killed between two steps, the store is a readable version-1 cache whose arrays are partly retyped (format 1
readers of this mtsae accept that, cache/format.py); running the command again finishes the job. It refuses,
in one line and before writing anything, what is not a complete, valid, self-consistent version-1 bfloat16 cache:
it never re-signs a manifest whose data digest no longer matches.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from mtsae.cache import digests
from mtsae.cache import format as fmt
from mtsae.cache import remote
from mtsae.cache.reader import read_attrs
from mtsae.durable import fsync_path
from mtsae.errors import MtsaeError

TARGET_VERSION = 2
# The two array-metadata fields format 2 changes, as format 1 wrote them and as format 2 writes them.
V1_ARRAY_FIELDS = {"data_type": "uint16", "fill_value": 0}
V2_ARRAY_FIELDS = {"data_type": "bfloat16", "fill_value": 0.0}


def upgrade_cache(path: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Upgrade the cache at ``path`` to format 2 in place (see the module docstring); returns its manifest.

    A cache already at format 2 is left as it is."""
    if remote.is_url(path):
        raise MtsaeError(f"{path}: `mtsae cache upgrade` works on a local cache; `mtsae cache pull` it, upgrade the "
                         "copy, then `mtsae cache push` that")
    root = Path(remote.local_path(path))
    attrs = _upgradable_manifest(str(root))
    if attrs["format_version"] == TARGET_VERSION:
        log(f"{path} is already format {TARGET_VERSION}: nothing to do")
        return attrs
    for layer in attrs["layers"]:
        _retype_array(root / fmt.activation_path(layer) / "zarr.json", str(path))
    upgraded = upgraded_manifest(attrs)
    group = remote.open_group(str(root), mode="r+")
    group.attrs[fmt.ATTRS_KEY] = upgraded  # zarr replaces zarr.json atomically: the commit point, last
    fsync_path(root)
    log(f"{path}: format 1 -> {TARGET_VERSION}, {len(attrs['layers'])} activation array(s) retyped bfloat16, "
        "no chunk rewritten; `mtsae cache verify` checks every byte")
    return upgraded


def _upgradable_manifest(path: str) -> dict[str, Any]:
    """The manifest of a complete, valid version-1 (or already version-2) bfloat16 cache, else one error line."""
    attrs = read_attrs(path)
    if attrs is None:
        raise MtsaeError(f"no mtsae cache at {path}")
    version = attrs.get("format_version")
    if type(version) is not int or not 1 <= version <= fmt.FORMAT_VERSION:
        raise MtsaeError(f"cache at {path} has format version {repr(version)[:40]}, this mtsae knows 1 to "
                         f"{fmt.FORMAT_VERSION}; it upgrades version 1 only")
    if attrs.get("status") != fmt.STATUS_COMPLETE:
        raise MtsaeError(f"cache at {path} is incomplete (its harvest did not finish); finish it with the same "
                         "`mtsae harvest`, which keeps its format, then upgrade")
    fmt.check_manifest(attrs, path)
    if attrs["dtype"] != "bfloat16":
        raise MtsaeError(f"cache at {path} holds {attrs['dtype']} activations; format {TARGET_VERSION} changed only "
                         "how bfloat16 is stored, so it has nothing to upgrade and reads as it is")
    problem = digests.manifest_problem(attrs) or next(iter(fmt.provenance_problems(attrs)), None)
    if problem is not None:
        raise MtsaeError(f"cache at {path} has an altered manifest ({problem}); it is not upgraded, "
                         f"see `mtsae cache verify {path}`")
    mismatched = fmt.array_problems(remote.open_group(path, mode="r"), attrs)
    if mismatched:
        name, text = next(iter(mismatched.items()))
        raise MtsaeError(f"cache at {path} does not match its manifest (array {name}: {text}); it is not upgraded, "
                         f"see `mtsae cache verify {path}`")
    return attrs


def _retype_array(metadata: Path, path: str) -> None:
    """One activation array's ``zarr.json`` from uint16 to bfloat16 (atomic replace); already done: nothing."""
    for leftover in metadata.parent.glob(f"{metadata.name}.*.partial"):  # a killed run's (or zarr's) temporary
        if fmt.ZARR_TEMPORARY.search(leftover.name) and leftover.is_file() and not leftover.is_symlink():
            leftover.unlink()
    doc = json.loads(metadata.read_text())
    have = {key: doc.get(key) for key in V1_ARRAY_FIELDS}
    if have == V2_ARRAY_FIELDS:
        return  # an interrupted run got this far
    if have != V1_ARRAY_FIELDS:
        raise MtsaeError(f"{metadata.parent.name} in cache {path} has data_type {repr(have['data_type'])[:40]} and "
                         f"fill_value {repr(have['fill_value'])[:40]}, not those of mtsae's format 1; it is not upgraded")
    doc.update(V2_ARRAY_FIELDS)
    temporary = metadata.with_name(f"{metadata.name}.{uuid.uuid4().hex}.partial")  # zarr's own temporary name
    with open(temporary, "w") as out:
        out.write(json.dumps(doc, indent=2))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, metadata)
    fsync_path(metadata.parent)


def upgraded_manifest(attrs: dict[str, Any]) -> dict[str, Any]:
    """The version-2 manifest of the version-1 bfloat16 manifest ``attrs`` (same content, same chunk digests)."""
    new = {**attrs, "format_version": TARGET_VERSION,
           "storage": {**attrs["storage"], "storage_dtype": fmt.storage_dtype_name("bfloat16", TARGET_VERSION)},
           "upgraded": {"from_format_version": attrs["format_version"],
                        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    section = digests.recorded(attrs)
    if section is not None:  # the data digest binds storage_dtype; the chunk and array digests stay as they are
        new[digests.DIGESTS_KEY] = digests.record(new, section["chunks"], section["arrays"])
    return new
