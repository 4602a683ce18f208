"""`mtsae cache push` / `mtsae cache pull`: copy a finished cache between a local folder and a URL, resumably.

The copy follows the harvest's own commit protocol. The destination's root
``zarr.json`` is written first with ``status: "incomplete"`` (and otherwise
the source's manifest, so that a re-run can tell it is copying the same
cache), then every other object, then -- last -- the source's root
``zarr.json`` byte for byte. A copy cut short anywhere therefore never looks
complete, and a re-run only copies what is missing: objects already there
with the right size (and, on S3, the right MD5 ETag) are skipped. A pull
checks every chunk of the local copy against the manifest's crc32s before
its last write; a push checks the local source before the first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from mtsae.cache import format as fmt
from mtsae.cache import remote
from mtsae.cache.reader import read_attrs
from mtsae.errors import MtsaeError, write_error, writing

PULL_LOCK = ".mtsae-pull.lock"
PART_SUFFIX = ".mtsae-part"  # a local object being downloaded; renamed into place when whole
DEFAULT_JOBS = 8
GB = 10**9
# Write failures only a local disk gives (s3fs reports a refused request as EACCES too, so that one is not here).
LOCAL_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


@dataclass
class TransferOutcome:
    destination: str
    attrs: dict[str, Any]
    copied: int  # objects copied by this run
    skipped: int  # objects already at the destination
    bytes_copied: int
    already_complete: bool  # the destination held this very cache: nothing was done


# --- the two commands -----------------------------------------------------------------------------
def push(path: str, url: str, *, force: bool = False, verify: bool = True, jobs: int = DEFAULT_JOBS,
         log: Callable[[str], None] = print, progress: bool = True) -> TransferOutcome:
    """Upload the complete local cache at ``path`` to ``url`` (or copy it to a shared folder); the manifest goes last."""
    if remote.is_url(path):
        raise MtsaeError(f"push uploads a local cache; {path} is a URL (`mtsae cache pull` it first)")
    path, url = remote.local_path(path), url if remote.is_url(url) else remote.local_path(url)
    attrs = complete_cache_attrs(path)
    if verify and not holds_complete_copy(url, attrs):  # nothing would be uploaded: no need to read it all
        _verify_source(path, log)
    return _copy(path, url, attrs, force=force, jobs=jobs, log=log, progress=progress)


def pull(url: str, dest: str | None = None, *, force: bool = False, jobs: int = DEFAULT_JOBS,
         log: Callable[[str], None] = print, progress: bool = True) -> TransferOutcome:
    """Make (or finish) a verified local copy of the complete cache at ``url``; default ``caches/<fingerprint[:12]>``.

    Refused, before anything is copied, when the disk lacks the space.
    """
    url = url if remote.is_url(url) else remote.local_path(url)
    attrs = complete_cache_attrs(url)
    dest = remote.local_path(dest) if dest else str(Path("caches") / attrs["fingerprint"][:12])
    if remote.is_url(dest):
        raise MtsaeError(f"pull writes a local folder; {dest} is a URL")
    with _pull_lock(Path(dest), log):
        return _copy(url, dest, attrs, force=force, jobs=jobs, log=log, progress=progress)


def complete_cache_attrs(path: str) -> dict[str, Any]:
    """The manifest of the complete cache at ``path``; a one-line error for anything else."""
    attrs = read_attrs(path)
    if attrs is None:
        raise MtsaeError(f"no mtsae cache at {path}")
    if attrs.get("status") != fmt.STATUS_COMPLETE:
        raise MtsaeError(f"cache at {path} is incomplete (an unfinished harvest or copy); only a complete cache is copied")
    if not attrs.get("checksums"):
        raise MtsaeError(f"cache at {path} records no checksums, so a copy of it could not be verified")
    fmt.check_manifest(attrs, path)  # untrusted: it names the objects copied and the folder a pull defaults to
    inconsistent = fmt.provenance_problems(attrs)
    if inconsistent:
        raise MtsaeError(f"cache at {path} has an inconsistent manifest: {inconsistent[0]}; it is not copied")
    return attrs


def same_cache(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Same content, same layout, same bytes (as far as the per-chunk checksums tell)."""
    return a is not None and all(a.get(key) == b.get(key) for key in ("fingerprint", "storage", "checksums"))


def holds_complete_copy(path: str, attrs: dict[str, Any]) -> bool:
    """Whether ``path`` holds a complete copy of the cache whose manifest is ``attrs``."""
    there = read_attrs(path)
    return same_cache(there, attrs) and there.get("status") == fmt.STATUS_COMPLETE


# --- the copy ---------------------------------------------------------------------------------------
def _copy(src: str, dst: str, attrs: dict[str, Any], *, force: bool, jobs: int, log, progress) -> TransferOutcome:
    wanted = _format_objects(src, dst, attrs, log)  # before anything is written: a pull may refuse the source
    started = _prepare_destination(src, dst, attrs, force, log)
    if started is None:
        log(f"{dst} already holds this cache (fingerprint {attrs['fingerprint'][:12]}); nothing to copy")
        return TransferOutcome(dst, attrs, 0, 0, 0, already_complete=True)
    todo = _missing_objects(src, dst, wanted) if started == "resume" else dict(wanted)
    if not remote.is_url(dst):
        _check_room(src, dst, sum(todo.values()))
    root_metadata = _read_root_metadata(src)
    if started == "new":
        _write_root_metadata(dst, _incomplete(root_metadata, src))
    log(f"{'resuming' if started == 'resume' else 'copying'} {src} -> {dst}: {len(todo)} of {len(wanted)} objects, "
        f"{sum(todo.values()) / 2**20:,.1f} MiB to copy")
    _copy_objects(src, dst, todo, jobs, progress)
    if not remote.is_url(dst):
        _verify_copy(src, dst, attrs, log)
    _write_root_metadata(dst, root_metadata)  # the commit point: from now on the copy is complete
    return TransferOutcome(dst, attrs, len(todo), len(wanted) - len(todo), sum(todo.values()), already_complete=False)


def _prepare_destination(src: str, dst: str, attrs: dict[str, Any], force: bool, log) -> str | None:
    """``"new"`` (nothing there), ``"resume"`` (an unfinished copy of this cache) or None (already complete)."""
    there = read_attrs(dst)
    if there is None:
        if _payload(_listing(dst)):
            raise MtsaeError(f"{dst} exists and is not an mtsae cache; refusing to overwrite it, choose another destination")
        return "new"
    if same_cache(there, attrs):
        return None if there.get("status") == fmt.STATUS_COMPLETE else "resume"
    if not force:
        state = "a different cache" if there.get("status") == fmt.STATUS_COMPLETE else "an unfinished harvest or copy of another cache"
        raise MtsaeError(f"{dst} holds {state} (fingerprint {str(there.get('fingerprint'))[:12]}); "
                         "choose another destination or pass --force to replace it")
    log(f"--force: replacing the cache at {dst}")
    remote.clear_cache(dst)
    return "new"


def _listing(path: str) -> dict[str, int]:
    if not remote.is_url(path) and not Path(path).is_dir():
        return {}
    return remote.list_objects(path)


def _payload(objects: dict[str, int]) -> dict[str, int]:
    """Every object but the root metadata (written on its own, last), locks and partial downloads."""
    return {key: size for key, size in objects.items()
            if key != remote.ROOT_METADATA and not key.rsplit("/", 1)[-1].startswith(".mtsae-")
            and not key.endswith(PART_SUFFIX)}


def _format_objects(src: str, dst: str, attrs: dict[str, Any], log) -> dict[str, int]:
    """The objects to copy: only names the cache format defines (root metadata and locks aside).

    A pull refuses a source holding anything else, since a remote key such as ``x/../y`` or ``/etc/y`` would
    name a local path outside the destination; a push leaves a local cache's strays (zarr temporaries) behind.
    """
    expected = fmt.expected_objects(attrs)
    wanted, foreign = {}, []
    for key, size in remote.list_objects(src).items():
        if key == remote.ROOT_METADATA or fmt.is_lock_file(key):
            continue
        if fmt.is_format_object(key, expected):
            wanted[key] = size
        else:
            foreign.append(key)
    if foreign and not remote.is_url(dst):
        raise MtsaeError(f"{src} holds the object {foreign[0]!r}, which is not part of the cache format"
                         f"{f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''}; refusing to copy from it, "
                         "nothing was copied")
    if foreign:
        log(f"not copied: {len(foreign)} file(s) that are not part of the cache format, first {foreign[0]} "
            "(see `mtsae cache verify`)")
    return wanted


def inside(root: str | os.PathLike, key: str) -> Path:
    """The local path of object ``key`` below ``root``, proven to stay inside it (resolved, so no ``..``,
    absolute part or symbolic link leads out); a one-line error naming the key otherwise."""
    base = Path(root).resolve()
    target = (base / key).resolve()
    if target == base or not target.is_relative_to(base):
        raise MtsaeError(f"object key {key!r} names a path outside {root}; refusing it, nothing is written there")
    return target


def _missing_objects(src: str, dst: str, wanted: dict[str, int]) -> dict[str, int]:
    """What a resumed copy still has to copy: objects absent, of another size or (S3) another MD5."""
    there = _payload(_listing(dst))
    todo = {key: size for key, size in wanted.items() if there.get(key) != size}
    if remote.is_url(dst) and not remote.is_url(src):
        etags = remote.md5_etags(dst)
        todo.update({key: wanted[key] for key in wanted.keys() - todo.keys()
                     if key in etags and _md5(Path(src, key)) != etags[key]})
    return todo


def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _check_room(src: str, dst: str, needed: int) -> None:
    folder = Path(dst).absolute()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise MtsaeError(f"{src} needs {needed / GB:,.2f} GB more but only {free / GB:,.2f} GB are free at {folder}; "
                         "free some space or pull to another disk")


# --- objects ---------------------------------------------------------------------------------------------
def _copy_objects(src: str, dst: str, todo: dict[str, int], jobs: int, progress: bool) -> None:
    """Copy ``todo`` in ``jobs`` threads (per-object latency dominates remote stores); the first error stops it."""
    from tqdm.auto import tqdm

    if not todo:
        return
    copy_one = _uploader(src, dst) if remote.is_url(dst) else _downloader(src, dst)
    url = dst if remote.is_url(dst) else src  # the side whose errors are the user's to fix
    with tqdm(total=sum(todo.values()), unit="B", unit_scale=True, desc="push" if remote.is_url(dst) else "pull",
              disable=not progress) as bar, remote.remote_errors(url):
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="mtsae-transfer") as pool:
            futures = {pool.submit(copy_one, key): size for key, size in todo.items()}
            try:
                for future in _as_done(futures):
                    future.result()
                    bar.update(futures[future])
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


def _as_done(futures) -> Iterator:
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
        yield from done


def _uploader(src: str, dst: str) -> Callable[[str], None]:
    fs, root = remote.filesystem(dst)
    return lambda key: fs.put_file(str(Path(src, key)), f"{root}/{key}")


def _downloader(src: str, dst: str) -> Callable[[str], None]:
    fs, root = remote.filesystem(src)  # a local source (a shared folder) gets fsspec's local filesystem

    def download(key: str) -> None:
        target = inside(dst, key)
        part = target.with_name(target.name + PART_SUFFIX)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{root}/{key}", str(part))
            os.replace(part, target)  # a file at its final name is always whole
        except OSError as exc:
            if exc.errno in LOCAL_WRITE_ERRNOS:  # the local disk's fault, not the remote's
                raise write_error(exc, str(target), "re-run the same pull to resume") from None
            raise

    return download


# --- root metadata: the commit point -----------------------------------------------------------------
def _read_root_metadata(path: str) -> bytes:
    if not remote.is_url(path):
        return Path(path, remote.ROOT_METADATA).read_bytes()
    fs, root = remote.filesystem(path)
    with remote.remote_errors(path):
        return fs.cat_file(f"{root}/{remote.ROOT_METADATA}")


def _incomplete(root_metadata: bytes, src: str) -> bytes:
    """The source's root metadata, marked incomplete and naming the copy's source."""
    doc = json.loads(root_metadata)
    attrs = doc["attributes"][fmt.ATTRS_KEY]
    attrs["status"] = fmt.STATUS_INCOMPLETE
    attrs["transfer"] = {"source": src, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return json.dumps(doc, indent=2).encode()


def _write_root_metadata(path: str, data: bytes) -> None:
    if remote.is_url(path):
        fs, root = remote.filesystem(path)
        with remote.remote_errors(path):
            fs.pipe_file(f"{root}/{remote.ROOT_METADATA}", data)  # one PUT: atomic on object stores
        return
    target = Path(path, remote.ROOT_METADATA)
    part = target.with_name(target.name + PART_SUFFIX)
    with writing(str(target), "re-run the same command to resume"):
        target.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(data)
        os.replace(part, target)


# --- checks ---------------------------------------------------------------------------------------------
def _verify_source(path: str, log) -> None:
    from mtsae.cache.verify import verify_cache

    problems = [problem for problem in verify_cache(path) if problem.kind != "stray"]  # strays are not pushed
    if problems:
        raise MtsaeError(f"{path} fails verification ({len(problems)} problem(s), first: {problems[0]}); "
                         f"nothing was pushed (see `mtsae cache verify {path}`)")
    log(f"verified {path}: every chunk matches its checksum")


def _verify_copy(src: str, dst: str, attrs: dict[str, Any], log) -> None:
    """Check the local copy before it is committed; damaged objects are deleted so a re-run fetches them again."""
    from mtsae.cache.verify import verify_store

    problems = verify_store(dst, remote.open_group(dst, mode="r"), attrs, strays=False)
    if not problems:
        log(f"verified {dst}: every chunk matches the manifest's checksum")
        return
    for key in _objects_to_fetch_again(problems, attrs):
        inside(dst, key).unlink(missing_ok=True)
    raise MtsaeError(f"{len(problems)} object(s) copied from {src} do not match its manifest (first: {problems[0]}); "
                     f"the source is damaged: check it with `mtsae cache verify {src}`")


def _objects_to_fetch_again(problems, attrs: dict[str, Any]) -> set[str]:
    """The objects behind ``problems``, named by the format from its own list of arrays, never by the manifest."""
    keys = set()
    for name in fmt.array_names(attrs["layers"]):
        for problem in (p for p in problems if p.array == name):
            if problem.kind == "mismatch":  # the array's metadata disagrees with the manifest
                keys.add(f"{name}/zarr.json")
            else:  # a damaged chunk, or an index array (always one chunk)
                keys.add(fmt.chunk_key(name, problem.chunk or 0))
    return keys


@contextlib.contextmanager
def _pull_lock(dest: Path, log) -> Iterator[None]:
    """One pull at a time into ``dest``: a second one waits, then finds the copy complete."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        lock: IO = open(dest / PULL_LOCK, "a+")
    except OSError as exc:
        raise MtsaeError(f"cannot write to {dest}: {exc.strerror or exc}; choose a writable destination") from None
    try:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another pull into {dest} to finish")
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield
        if (read_attrs(dest) or {}).get("status") == fmt.STATUS_COMPLETE:
            (dest / PULL_LOCK).unlink(missing_ok=True)  # a complete cache keeps no lock file (as after a harvest)
    finally:
        lock.close()
