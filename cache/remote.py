"""Caches at fsspec URLs (``s3://``, ``gs://``, ...): which paths are URLs, how to reach and list them.

A local path, or a ``file://`` URL (turned into a path), keeps the local code
path: zarr's LocalStore, ``np.memmap`` of raw chunks, ``flock``. Anything else
with ``://`` goes through fsspec. Credentials come from the backend's usual
places (``AWS_*`` variables, ``AWS_ENDPOINT_URL``, ``~/.aws``, ...) plus
``MTSAE_STORAGE_OPTIONS``, a JSON object of fsspec storage options passed to
every remote filesystem (e.g. ``{"endpoint_url": "http://minio:9000"}``).
docs/remote-caches.md is the user's description of this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import zarr

from mtsae import env
from mtsae.cache import format as fmt
from mtsae.errors import MtsaeError

STORAGE_OPTIONS_ENV = env.STORAGE_OPTIONS.name
INSTALL_HINT = 'pip install "mtsae[remote]"'
ROOT_METADATA = "zarr.json"

# Exceptions of remote backends (credentials, endpoints, HTTP) that are the user's to fix, not bugs.
_BACKEND_MODULES = ("botocore", "aiobotocore", "s3fs", "gcsfs", "google", "aiohttp", "adlfs", "azure", "fsspec")


def is_url(path: str | os.PathLike) -> bool:
    """True for a remote fsspec URL; ``file://`` URLs count as local paths."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str | os.PathLike) -> str:
    """A local path as the OS wants it (``file:///x`` -> ``/x``)."""
    text = str(path)
    return text[len("file://"):] if text.startswith("file://") else text


def join(base: str | os.PathLike, *names: str) -> str:
    """``base/name`` for a URL or a local path."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *names])
    return os.path.join(local_path(base), *names)


def storage_options() -> dict[str, Any]:
    """Options for remote filesystems: no listing cache (another process may have written since), then the user's."""
    options: dict[str, Any] = {"use_listings_cache": False}
    text = (env.get(env.STORAGE_OPTIONS) or "").strip()
    if text:
        try:
            user = json.loads(text)
        except ValueError as exc:
            raise MtsaeError(f"{STORAGE_OPTIONS_ENV} must be a JSON object of fsspec storage options ({exc})") from None
        if not isinstance(user, dict):
            raise MtsaeError(f'{STORAGE_OPTIONS_ENV} must be a JSON object such as {{"endpoint_url": "http://host:9000"}}')
        options.update(user)
    return options


@contextlib.contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """Turn a missing backend, refused credentials or an unreachable endpoint into one line for the user."""
    try:
        yield
    except MtsaeError:
        raise
    except ImportError as exc:
        protocol = str(url).split("://", 1)[0]
        raise MtsaeError(f"{url}: no fsspec backend for {protocol}:// is installed ({_first_line(exc)}); "
                         f"for s3:// run: {INSTALL_HINT}") from None
    except Exception as exc:
        if not (isinstance(exc, OSError) or _from_backend(exc)):
            raise
        raise MtsaeError(f"cannot reach {url}: {type(exc).__name__}: {_first_line(exc)}") from None


def _from_backend(exc: BaseException) -> bool:
    return any(type(exc).__module__.startswith(name) for name in _BACKEND_MODULES)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def filesystem(url: str):
    """``(fs, path)``: the fsspec filesystem of ``url`` and the path inside it (no protocol, no trailing /)."""
    import fsspec  # a dependency of datasets, always there; its backends (s3fs, ...) may not be

    if not is_url(url):
        return fsspec.filesystem("file"), str(Path(local_path(url)).absolute())
    with remote_errors(url):
        try:
            fs, path = fsspec.url_to_fs(str(url), **storage_options())
        except ValueError as exc:  # e.g. "Protocol not known: s4"
            raise MtsaeError(f"{url}: {_first_line(exc)}; use a local path or an fsspec URL such as s3://bucket/prefix") from None
    return fs, path.rstrip("/")


def open_group(path: str | os.PathLike, mode: str, **kwargs: Any) -> zarr.Group:
    """``zarr.open_group`` of a local path or a URL (with the storage options)."""
    if not is_url(path):
        return zarr.open_group(local_path(path), mode=mode, **kwargs)
    filesystem(str(path))  # a missing backend ends here, in one line, not deep inside zarr
    with remote_errors(str(path)):
        return zarr.open_group(str(path), mode=mode, storage_options=storage_options(), **kwargs)


def exists(path: str | os.PathLike, key: str = "") -> bool:
    """Whether the object ``key`` below ``path`` (or ``path`` itself) exists."""
    if not is_url(path):
        return Path(local_path(path), key).exists()
    fs, root = filesystem(str(path))
    with remote_errors(str(path)):
        return fs.exists(f"{root}/{key}" if key else root)


def list_objects(path: str | os.PathLike) -> dict[str, int]:
    """Every file/object below ``path``: key relative to it ('/'-separated) -> size in bytes."""
    if not is_url(path):
        root = Path(local_path(path))
        return {f.relative_to(root).as_posix(): f.stat().st_size for f in root.rglob("*") if f.is_file()}
    return {key: int(info["size"]) for key, info in _find(str(path)).items()}


def md5_etags(url: str) -> dict[str, str]:
    """Key -> MD5 hex of the objects whose ETag is a plain MD5 (S3 single-part uploads); others are left out."""
    etags = {key: str(info.get("ETag", "")).strip('"').lower() for key, info in _find(url).items()}
    return {key: tag for key, tag in etags.items() if len(tag) == 32 and all(c in "0123456789abcdef" for c in tag)}


def _find(url: str) -> dict[str, dict[str, Any]]:
    fs, root = filesystem(url)
    with remote_errors(url):
        found = fs.find(root, detail=True)
    prefix = root + "/"
    return {name[len(prefix):]: info for name, info in found.items() if name.startswith(prefix)}


def subfolders(path: str | os.PathLike) -> list[str]:
    """The folders directly below ``path`` (as paths or URLs), sorted."""
    if not is_url(path):
        root = Path(local_path(path))
        return [str(p) for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []
    fs, root = filesystem(str(path))
    with remote_errors(str(path)):
        try:
            entries = fs.ls(root, detail=True)
        except FileNotFoundError:
            return []
    names = sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")
    return [join(path, name) for name in names]


def clear_cache(path: str | os.PathLike) -> None:
    """Empty an mtsae cache at a path or URL (callers only ever pass one), keeping the lock files held on it."""
    if is_url(path):
        remove_tree(path)
        return
    for entry in Path(local_path(path)).iterdir():
        if entry.name.startswith(".mtsae-") and entry.name.endswith(".lock"):
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def remove_zarr_temporaries(path: str | os.PathLike) -> list[str]:
    """Delete the ``<name>.<uuid>.partial`` files zarr's LocalStore leaves when a write is killed; their keys.

    Only that exact name pattern is removed, only in a local store mtsae is writing under its lock (a resumed or
    completing harvest), and a URL has none: an object store's PUT leaves no temporary behind.
    """
    if is_url(path):
        return []
    root = Path(local_path(path))
    removed = []
    for found in root.rglob("*.partial"):
        if fmt.ZARR_TEMPORARY.search(found.name) and found.is_file() and not found.is_symlink():
            found.unlink(missing_ok=True)
            removed.append(found.relative_to(root).as_posix())
    return removed


def remove_tree(path: str | os.PathLike) -> None:
    """Delete every object below a remote ``path`` (callers only ever pass an mtsae cache)."""
    fs, root = filesystem(str(path))
    with remote_errors(str(path)):
        if fs.exists(root):
            fs.rm(root, recursive=True)
