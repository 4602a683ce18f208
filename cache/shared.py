"""Where caches live besides a local folder: a shared root of caches by fingerprint, and read-through copies.

* **Shared root** (``--shared-root`` or ``MTSAE_SHARED_ROOT``): a folder or URL
  that holds caches at ``<root>/<fingerprint[:12]>``, the harvest's own
  content address. A harvest first looks there for a complete cache of the
  same fingerprint and reuses it instead of recomputing.
* **Read-through** (``mtsae train --cache s3://...``): training wants a local
  store it can memory-map, so a URL is pulled once, verified, into
  ``$MTSAE_REMOTE_CACHE_DIR/<fingerprint[:12]>`` (default
  ``$MTSAE_HOME/remote-caches``), refusing caches over
  ``MTSAE_REMOTE_CACHE_MAX_GB`` (default 200) or the free disk space.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from mtsae.cache import format as fmt
from mtsae.cache import remote
from mtsae.cache.reader import read_attrs
from mtsae.cache.transfer import GB, complete_cache_attrs, holds_complete_copy, pull, push
from mtsae.errors import MtsaeError
from mtsae.home import mtsae_home

SHARED_ROOT_ENV = "MTSAE_SHARED_ROOT"
READTHROUGH_DIR_ENV = "MTSAE_REMOTE_CACHE_DIR"
READTHROUGH_MAX_GB_ENV = "MTSAE_REMOTE_CACHE_MAX_GB"
DEFAULT_READTHROUGH_MAX_GB = 200.0


# --- shared root --------------------------------------------------------------------------------------
def shared_root(option: str | None = None) -> str | None:
    """The shared root in effect: the option, else ``$MTSAE_SHARED_ROOT``, else none."""
    return option or os.environ.get(SHARED_ROOT_ENV) or None


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


def publish(path: str, root: str, log: Callable[[str], None] = print, progress: bool = True) -> str:
    """Copy the complete cache at ``path`` to its address in the shared root (resumable; nothing if already there)."""
    address = shared_address(root, complete_cache_attrs(path)["fingerprint"])
    if str(path).rstrip("/") == address:
        return address  # reused from the shared root: nothing to copy
    if remote.is_url(path):
        log(f"{path} is remote, so it was not copied to the shared root; push a local copy of it")
        return path
    push(path, address, log=log, progress=progress)
    return address


# --- read-through ---------------------------------------------------------------------------------------
def readthrough_dir() -> Path:
    env = os.environ.get(READTHROUGH_DIR_ENV)
    return Path(env).expanduser() if env else mtsae_home() / "remote-caches"


def readthrough_max_bytes() -> int:
    text = os.environ.get(READTHROUGH_MAX_GB_ENV, "").strip()
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
