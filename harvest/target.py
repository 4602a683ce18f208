"""What to do with the output path of a harvest, decided under a lock.

Only an mtsae cache is ever deleted, and only with --force: anything else at
the target is refused, so no user data can be lost. An unfinished harvest of
the same settings is resumed. One harvest at a time may write a store. A harvest
killed before it wrote its first attributes (only the lock file it creates first,
an empty Zarr group and perhaps zarr's temporary file remain) is started afresh.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

from mtsae.cache import format as fmt
from mtsae.cache import remote
from mtsae.cache.reader import read_attrs
from mtsae.errors import MtsaeError
from mtsae.locks import hold_folder_lock

LOCK_NAME = ".mtsae-harvest.lock"
_PARTIAL_WRITE = re.compile(r"zarr\.[0-9a-f]{32}\.partial")  # zarr's LocalStore: zarr.json written via a temp file


class Action(enum.Enum):
    SKIP = "skip"  # an identical complete cache is there
    RESUME = "resume"  # an unfinished harvest of the same settings is there
    CREATE = "create"  # nothing (or nothing left) there


@dataclass
class Target:
    path: Path | str  # a str for a URL
    action: Action
    attrs: dict[str, Any] | None
    lock: IO | None

    def release(self) -> None:
        """Drop the lock; a complete cache loses the lock file too (plain zarr would warn about it)."""
        if self.lock is None:
            return
        if (read_attrs(self.path) or {}).get("status") == fmt.STATUS_COMPLETE:
            # Safe while held: a harvest that grabs a fresh lock now finds a complete cache and stops.
            (self.path / LOCK_NAME).unlink(missing_ok=True)
        self.lock.close()  # closing the descriptor drops the flock
        self.lock = None


def prepare_target(out: str, fingerprint: str, force: bool, log: Callable[[str], None]) -> Target:
    if remote.is_url(out):
        return _prepare_remote_target(out, fingerprint, force, log)
    path = Path(remote.local_path(out))
    if (path.exists() and read_attrs(path) is None and (path.is_file() or _foreign_entries(path))
            and _never_started(path) is None):
        raise MtsaeError(f"{out} exists and is not an mtsae cache; refusing to overwrite it, choose another --out")
    lock = _acquire_lock(path)
    try:
        _clear_never_started(path, log)
        action, attrs = _decide(path, fingerprint, force, log)
        if action is not Action.CREATE:  # under the lock: a killed write's temporaries are no part of the cache
            _remove_zarr_temporaries(path, log)
    except BaseException:
        lock.close()
        raise
    return Target(path, action, attrs, lock)


def _remove_zarr_temporaries(path: Path, log: Callable[[str], None]) -> None:
    removed = remote.remove_zarr_temporaries(path)
    if removed:
        log(f"removed {len(removed)} temporary file(s) an interrupted write left in {path} (first: {removed[0]})")


def _prepare_remote_target(url: str, fingerprint: str, force: bool, log: Callable[[str], None]) -> Target:
    """A URL has no flock: keeping to one harvest per URL at a time is the user's part (docs/remote-caches.md)."""
    if read_attrs(url) is None and remote.list_objects(url):
        raise MtsaeError(f"{url} holds objects that are not an mtsae cache; refusing to overwrite them, choose another --out")
    action, attrs = _decide(url, fingerprint, force, log)
    return Target(url, action, attrs, lock=None)


def _decide(path: Path | str, fingerprint: str, force: bool, log: Callable[[str], None]) -> tuple[Action, dict | None]:
    attrs = read_attrs(path)
    if attrs is None:
        return Action.CREATE, None
    same = attrs.get("fingerprint") == fingerprint
    complete = attrs.get("status") == fmt.STATUS_COMPLETE
    if force:
        log(f"--force: replacing the cache at {path}")
        remote.clear_cache(path)
        return Action.CREATE, None
    if same and complete:
        log(f"cache {path} already holds this harvest (fingerprint {fingerprint[:12]}); nothing to do")
        return Action.SKIP, attrs
    if same and attrs.get("progress", {}).get("tokens", 0) > 0:
        return Action.RESUME, attrs
    if same:  # unfinished before anything was durable: nothing to keep
        remote.clear_cache(path)
        return Action.CREATE, None
    state = "a different cache" if complete else "an unfinished harvest of different settings"
    raise MtsaeError(
        f"{path} holds {state} (fingerprint {str(attrs.get('fingerprint'))[:12]}, model "
        f"{attrs.get('model', {}).get('id')}); choose another --out or pass --force to replace it"
    )


def _foreign_entries(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.name != LOCK_NAME]


def _never_started(path: Path) -> list[Path] | None:
    """What a harvest killed before its first attributes leaves, else None.

    The lock file is the marker: a harvest creates it before anything else, in a folder that
    was empty (anything else there is refused first). Killed between creating the Zarr group and
    writing its attributes, the folder then holds only the lock, a ``zarr.json`` of an empty group
    and perhaps zarr's temporary ``zarr.<uuid>.partial`` of the attributes write.
    """
    if not path.is_dir() or not (path / LOCK_NAME).is_file():
        return None
    leftovers = _foreign_entries(path)
    for entry in leftovers:
        if not entry.is_file() or not (_PARTIAL_WRITE.fullmatch(entry.name) or
                                       (entry.name == "zarr.json" and _is_empty_group(entry))):
            return None
    return leftovers


def _is_empty_group(metadata_file: Path) -> bool:
    try:
        metadata = json.loads(metadata_file.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(metadata, dict) and metadata.get("node_type") == "group" and not metadata.get("attributes")


def _clear_never_started(path: Path, log: Callable[[str], None]) -> None:
    """Under the lock: remove the remains of a harvest that never wrote anything (files only it creates)."""
    leftovers = _never_started(path) if read_attrs(path) is None else None
    if not leftovers:
        return
    log(f"{path} holds a harvest killed before it wrote anything; starting it afresh")
    for entry in leftovers:
        entry.unlink(missing_ok=True)


def _acquire_lock(path: Path) -> IO:
    return hold_folder_lock(path, LOCK_NAME, unwritable=f"cannot write the cache to {path}",
                            busy=f"another harvest is writing {path}; wait for it to finish or choose another --out")
