"""One process at a time in a folder: an exclusive ``flock`` on a lock file inside it.

Harvest locks its store with it, training its run directory. The lock is the
open file itself: closing it (or the process dying, even by kill -9) drops it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from mtsae.errors import MtsaeError


def hold_folder_lock(folder: Path, name: str, *, busy: str, unwritable: str) -> IO:
    """Create ``folder`` if needed and lock ``folder/name`` without waiting; returns the open lock file.

    ``busy`` is the error when another process holds it; ``unwritable`` starts the error when the
    folder cannot be written (the reason and a way out follow).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / name, "a+")
    except OSError as exc:
        raise MtsaeError(f"{unwritable}: {exc.strerror or exc}; choose a writable --out") from None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise MtsaeError(busy) from None
    if _still_there(lock, folder / name):
        return lock
    lock.close()  # its holder removed the file between our open and our lock: lock the file there now
    return hold_folder_lock(folder, name, busy=busy, unwritable=unwritable)


def _still_there(lock: IO, path: Path) -> bool:
    try:
        return os.fstat(lock.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def release_folder_lock(lock: IO, folder: Path, name: str) -> None:
    """Remove the lock file, then drop the lock (removed first, a waiting process cannot lock the stale file)."""
    try:
        (folder / name).unlink(missing_ok=True)
    finally:
        lock.close()
