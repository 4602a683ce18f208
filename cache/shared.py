"""Where caches live besides a local folder: a shared root of caches by fingerprint, and read-through copies.

* **Shared root** (``--shared-root`` or ``MTSAE_SHARED_ROOT``): a folder or URL
  that holds caches at ``<root>/<fingerprint[:12]>``, the harvest's own
  content address. A harvest first looks there for a complete cache of the
  same fingerprint and reuses it instead of recomputing -- after checking it
  (`check_shared`: its digests, then a small audit), unless told not to. The
  root is write-once per fingerprint: `publish` never replaces what is there.
* **Read-through** (``mtsae train --cache s3://...``): training wants a local
  store it can memory-map, so a URL is pulled once, verified, into
  ``$MTSAE_REMOTE_CACHE_DIR/<fingerprint[:12]>`` (default
  ``$MTSAE_HOME/remote-caches``), refusing caches over
  ``MTSAE_REMOTE_CACHE_MAX_GB`` (default 200) or the free disk space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mtsae import env
from mtsae.cache import format as fmt
from mtsae.cache import remote
from mtsae.cache.reader import read_attrs
from mtsae.cache import digests
from mtsae.cache.transfer import GB, complete_cache_attrs, holds_complete_copy, pull, push, same_cache
from mtsae.errors import MtsaeError
from mtsae.home import mtsae_home

SHARED_ROOT_ENV = env.SHARED_ROOT.name
READTHROUGH_DIR_ENV = env.REMOTE_CACHE_DIR.name
READTHROUGH_MAX_GB_ENV = env.REMOTE_CACHE_MAX_GB.name
DEFAULT_READTHROUGH_MAX_GB = 200.0
SHARED_AUDIT_SEQUENCES = 2
"""Sequences a reuse from the shared root re-runs (a forged cache fails on any of them)."""


# --- shared root --------------------------------------------------------------------------------------
def shared_root(option: str | None = None) -> str | None:
    """The shared root in effect: the option, else ``$MTSAE_SHARED_ROOT``, else none."""
    return option or env.get(env.SHARED_ROOT) or None


def shared_address(root: str, fingerprint: str) -> str:
    """Where the cache of ``fingerprint`` lives in a shared root (the harvest's default name)."""
    return remote.join(root, fingerprint[:12])


def find_shared(root: str, fingerprint: str) -> tuple[str, dict[str, Any]] | None:
    """``(address, manifest)`` of a complete cache of ``fingerprint`` in the shared root, else None."""
    address = shared_address(root, fingerprint)
    attrs = read_attrs(address)
    if attrs is None or attrs.get("fingerprint") != fingerprint or attrs.get("status") != fmt.STATUS_COMPLETE:
        return None
    return address, attrs


def check_shared(address: str, log: Callable[[str], None] = print, *, audit_sequences: int = SHARED_AUDIT_SEQUENCES,
                 device: str = "auto") -> None:
    """Before reusing the shared cache at ``address``: every chunk against its digests, then a small audit.

    Anyone who can write the shared root can replace a cache and recompute its checksums and digests;
    the audit re-runs the recorded model, which they cannot fake. Raises one line when either fails.
    """
    from mtsae.cache.audit import audit_or_refuse
    from mtsae.cache.verify import verify_cache, verify_digests

    skip = " (skip these checks with --no-check-shared only if you trust everyone who can write the shared root)"
    problems = verify_digests(address)
    if problems is None:
        log(f"{address} carries no content digest (written before mtsae recorded them); checking its crc32s only")
        problems = verify_cache(address)
    if problems:
        raise MtsaeError(f"the shared cache {address} fails verification ({len(problems)} problem(s), first: "
                         f"{problems[0]}); it was not reused, see `mtsae cache verify {address}`")
    result = audit_or_refuse(address, audit_sequences, device=device, log=log,
                             what=f"; it was not reused: tell whoever writes the shared root{skip}")
    log(f"checked the shared cache {address}: digests match, audit passed ({result.summary()})")


def publish(path: str, root: str, log: Callable[[str], None] = print, progress: bool = True) -> str:
    """Copy the complete cache at ``path`` to its address in the shared root (resumable; nothing if already there).

    Write-once: an address that holds another cache (or another copy being written) is never replaced.
    """
    attrs = complete_cache_attrs(path)
    address = shared_address(root, attrs["fingerprint"])
    if str(path).rstrip("/") == address:
        return address  # reused from the shared root: nothing to copy
    if remote.is_url(path):
        log(f"{path} is remote, so it was not copied to the shared root; push a local copy of it")
        return path
    refuse_overwrite(address, attrs)
    push(path, address, log=log, progress=progress)
    return address


def refuse_overwrite(address: str, attrs: dict[str, Any]) -> None:
    """A shared root is write-once per fingerprint: refuse ``address`` unless it is empty or a copy of ``attrs``'s cache."""
    there = read_attrs(address)
    if there is None and not (remote.exists(address) and remote.list_objects(address)):
        return
    if there is not None and same_content(there, attrs):
        return  # already there, or an unfinished copy of it to resume
    raise MtsaeError(f"the shared root already holds another cache at {address} (fingerprint "
                     f"{str((there or {}).get('fingerprint'))[:12]}, other bytes); a shared root is write-once per "
                     "fingerprint, so it is not replaced: use the cache there, or push yours elsewhere")


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same cache: same data digest where both record one, else the same checksums and layout."""
    ours, theirs = digests.recorded(a), digests.recorded(b)
    if ours is not None and theirs is not None:
        return ours.get("data") == theirs.get("data") and a.get("storage") == b.get("storage")
    return same_cache(a, b)


# --- read-through ---------------------------------------------------------------------------------------
def readthrough_dir() -> Path:
    folder = env.get(env.REMOTE_CACHE_DIR)
    return Path(folder).expanduser() if folder else mtsae_home() / "remote-caches"


def readthrough_max_bytes() -> int:
    text = (env.get(env.REMOTE_CACHE_MAX_GB) or "").strip()
    try:
        gigabytes = float(text) if text else DEFAULT_READTHROUGH_MAX_GB
    except ValueError:
        raise MtsaeError(f"{READTHROUGH_MAX_GB_ENV} must be a number of GB, got {text!r}") from None
    return int(gigabytes * GB)


def local_cache(path: str, log: Callable[[str], None] = print, progress: bool = True) -> str:
    """A local path for the cache at ``path``: itself if local, else a verified local copy pulled once."""
    if not remote.is_url(path):
        return remote.local_path(path)
    attrs = complete_cache_attrs(path)
    dest = readthrough_dir() / attrs["fingerprint"][:12]
    if holds_complete_copy(str(dest), attrs):
        return str(dest)  # pulled before: one small read of the remote manifest, nothing else
    size, limit = sum(remote.list_objects(path).values()), readthrough_max_bytes()
    if size > limit:
        raise MtsaeError(f"{path} is {size / GB:,.2f} GB, over the read-through limit of {limit / GB:,.2f} GB; "
                         f"raise {READTHROUGH_MAX_GB_ENV} or `mtsae cache pull` it to a disk of your choice")
    log(f"reading {path} through a local copy in {dest}")
    # force: the folder is mtsae's own; another layout of the same content there is replaced, not an error.
    pull(path, str(dest), force=True, log=log, progress=progress)
    return str(dest)
