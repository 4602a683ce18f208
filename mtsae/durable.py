"""Atomic, durable publishing: the one implementation every stage uses.

A file or folder is written into a hidden temporary sibling (``.NAME.tmp-…``),
fsynced, and renamed into place; the parent folder is fsynced so the rename
survives a power cut. Readers therefore see the old version or the whole new
one, never a half-written one; a crash leaves at worst a hidden temporary
(the caller's sweep, or :func:`sweep_stale_temps`, removes it).

Two uses:

* **replace** (:func:`publish_dir`, :func:`publish_file`, :func:`write_text_atomic`):
  a checkpoint, ``run.json``, a rewritten log. An existing folder is moved aside
  (``.NAME.old-…``) in one rename, the new one renamed in, the old one deleted.
* **build once** (:func:`materialise_dir`, :func:`materialise_file`): the embedded
  model, corpus and evaluation mirror. A complete result is reused; when two
  processes build at once, the first to publish wins and the other's copy is
  discarded; an incomplete folder at the final name is replaced.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

_PUBLISH_TRIES = 5


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (a directory's fsync makes the renames inside it survive a power cut)."""
    fd = os.open(Path(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then ``root`` itself."""
    for path in root.rglob("*"):
        if path.is_file():
            fsync_path(path)
    fsync_path(root)


def publish_dir(final: Path, build: Callable[[Path], None], *, keep: Callable[[Path], bool] | None = None) -> Path:
    """Build a folder with ``build(tmp)`` in a temporary sibling and rename it to ``final``; returns ``final``.

    ``keep`` None: whatever folder is at ``final`` is replaced. Otherwise a
    ``final`` for which ``keep(final)`` holds when the rename is refused (a
    concurrent builder published first) is kept and ours discarded. The
    temporary is removed on any failure.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        fsync_tree(tmp)  # the contents are on disk before the rename makes them visible
        _rename_into_place(tmp, final, keep)
        fsync_path(final.parent)  # the rename itself survives a power cut
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op once renamed
    return final


def _rename_into_place(tmp: Path, final: Path, keep: Callable[[Path], bool] | None) -> None:
    refused: OSError | None = None
    for _ in range(_PUBLISH_TRIES):
        try:
            os.rename(tmp, final)  # atomic; refused while final is a non-empty folder
            return
        except OSError as exc:
            refused = exc
            if keep is not None and keep(final):
                return  # a concurrent builder won; the caller discards ours
            if not final.exists():
                continue
        aside = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
        try:
            os.rename(final, aside)  # out of the way in one step; only a complete tmp replaces it
        except FileNotFoundError:
            continue  # another process moved it first
        try:
            os.rename(tmp, final)
            return
        except OSError as exc:
            refused = exc  # somebody published in between: look again
        finally:
            _remove(aside)
    raise refused or OSError(f"could not publish {tmp} as {final}")


def publish_file(final: Path, build: Callable[[Path], None]) -> Path:
    """Write a file with ``build(tmp)`` into a temporary sibling and rename it over ``final``; returns ``final``.

    The temporary is created empty with the umask's mode (as ``open(path, "w")``
    would give ``final``); racing writers of identical bytes are harmless, since
    whichever rename lands last is as good as the first.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:12]}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        build(tmp)
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def write_text_atomic(path: Path, text: str) -> None:
    """Replace the text file ``path`` atomically and durably."""
    publish_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def materialise_dir(final: Path, build: Callable[[Path], None], *, complete: Callable[[Path], bool],
                    stale_after_s: float | None = None) -> Path:
    """``final`` if ``complete(final)``, else built once by :func:`publish_dir` (an incomplete one is replaced).

    ``build`` must leave the folder complete (write the marker ``complete`` looks
    for). ``stale_after_s``: first remove temporaries that old, left by crashed builds.
    """
    if complete(final):
        return final
    if stale_after_s is not None:
        sweep_stale_temps(final, stale_after_s)
    return publish_dir(final, build, keep=complete)


def materialise_file(final: Path, build: Callable[[Path], None], *, stale_after_s: float | None = None) -> Path:
    """``final`` if it is a file (files appear only by rename, so existing means complete), else built once."""
    if final.is_file():
        return final
    if stale_after_s is not None:
        sweep_stale_temps(final, stale_after_s)
    return publish_file(final, build)


def sweep_stale_temps(final: Path, age_s: float) -> None:
    """Remove hidden siblings of ``final`` (``.NAME.*``) older than ``age_s``: crashed builds' leftovers.

    Young ones may belong to a build running right now in another process.
    """
    if not final.parent.is_dir():
        return
    cutoff = time.time() - age_s
    for path in final.parent.glob(f".{final.name}.*"):
        try:
            if path.lstat().st_mtime < cutoff:
                _remove(path)
        except OSError:
            pass  # somebody else is sweeping it


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
