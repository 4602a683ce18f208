"""Read API of an activation cache: what training and evaluation use.

`open_cache(path)` checks the format and completeness; `ActivationCache`
exposes the manifest, the token/sequence/document index and the activations
of each layer, read by :class:`~mtsae.cache.rows.LayerRows` (cache/rows.py):
zero-copy through ``np.memmap`` of the raw chunk files where the store is local
and uncompressed, through zarr reads otherwise.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
import zarr.codecs
from zarr.storage import LocalStore

from mtsae.cache import format as fmt
from mtsae.cache.bfloat16 import as_bits, is_bfloat16
from mtsae.cache import remote
from mtsae.cache.rows import LayerRows
from mtsae.errors import MtsaeError


def read_attrs(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``mtsae`` root attributes of the store at ``path`` (a path or URL); None when it is not an mtsae cache."""
    if not remote.exists(path, "zarr.json"):  # unreachable remotes and missing backends raise MtsaeError here
        return None
    try:
        group = remote.open_group(path, mode="r")
    except Exception:
        return None
    attrs = group.attrs.get(fmt.ATTRS_KEY)
    if not isinstance(attrs, dict) or attrs.get("format") != fmt.FORMAT_NAME:
        return None
    return dict(attrs)


def open_cache(path: str | os.PathLike, *, require_complete: bool = True) -> "ActivationCache":
    """Open a cache, refusing what is not one, a newer format, or (by default) an unfinished harvest."""
    attrs = read_attrs(path)
    if attrs is None:
        raise MtsaeError(f"no mtsae cache at {path} (expected a Zarr group written by `mtsae harvest`)")
    version = attrs.get("format_version")
    if not isinstance(version, int) or version > fmt.FORMAT_VERSION:
        raise MtsaeError(
            f"cache at {path} has format version {version}, this mtsae reads up to {fmt.FORMAT_VERSION}; upgrade mtsae"
        )
    if require_complete and attrs.get("status") != fmt.STATUS_COMPLETE:
        raise MtsaeError(f"cache at {path} is incomplete (its harvest did not finish); re-run the same `mtsae harvest`")
    fmt.check_manifest(attrs, str(path))
    cache = ActivationCache(str(path), attrs)
    if cache.complete:
        check_arrays(cache)
    return cache


def check_arrays(cache: "ActivationCache") -> None:
    """Refuse, in one line, a cache whose arrays disagree with its manifest (shapes, d_model, dtypes, metadata)."""
    problems = fmt.array_problems(cache.group, cache.manifest)
    if problems:
        name, problem = next(iter(problems.items()))
        more = f" (and {len(problems) - 1} more array(s))" if len(problems) > 1 else ""
        raise MtsaeError(f"cache at {cache.path} does not match its manifest: array {name}: {problem}{more}; "
                         f"it is damaged, see `mtsae cache verify {cache.path}`")


class ActivationCache:
    """A harvested cache. Index arrays are loaded eagerly (they are small); activations lazily."""

    def __init__(self, path: str, attrs: dict[str, Any]):
        self.path = path
        self.manifest = attrs
        self.group = remote.open_group(path, mode="r")
        self._layer_rows: dict[int, LayerRows] = {}  # the readers behind rows()

    # --- manifest --------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == fmt.STATUS_COMPLETE

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def layers(self) -> list[int]:
        return list(self.manifest["layers"])

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.manifest["dtype"])

    @property
    def n_tokens(self) -> int:
        return int(self.group[fmt.TOKENS].shape[0])

    # --- index -------------------------------------------------------------------------------
    @functools.cached_property
    def tokens(self) -> np.ndarray:
        return self.group[fmt.TOKENS][:]

    @functools.cached_property
    def special_mask(self) -> np.ndarray:
        return self.group[fmt.SPECIAL_MASK][:]

    @functools.cached_property
    def seq_offsets(self) -> np.ndarray:
        """[n_seq + 1]: sequence i occupies rows ``seq_offsets[i] : seq_offsets[i + 1]``."""
        return self.group[fmt.SEQ_OFFSETS][:]

    @functools.cached_property
    def doc_seq_offsets(self) -> np.ndarray:
        """[n_doc + 1]: document j is made of sequences ``doc_seq_offsets[j] : doc_seq_offsets[j + 1]``."""
        return self.group[fmt.DOC_SEQ_OFFSETS][:]

    @functools.cached_property
    def doc_row(self) -> np.ndarray:
        """[n_doc]: the row of each document in the source dataset."""
        return self.group[fmt.DOC_ROW][:]

    @property
    def n_sequences(self) -> int:
        return len(self.seq_offsets) - 1

    @property
    def n_documents(self) -> int:
        return len(self.doc_row)

    @functools.cached_property
    def seq_doc(self) -> np.ndarray:
        """[n_seq]: the document index of each sequence."""
        counts = np.diff(self.doc_seq_offsets)
        return np.repeat(np.arange(self.n_documents, dtype=np.int64), counts)

    def sequence_tokens(self, i: int) -> np.ndarray:
        return self.tokens[self.seq_offsets[i] : self.seq_offsets[i + 1]]

    def document_tokens(self, j: int) -> np.ndarray:
        """A document's token ids as tokenized: its sequences joined, each without its leading BOS."""
        first, last = self.doc_seq_offsets[j], self.doc_seq_offsets[j + 1]
        starts = self.seq_offsets[first:last]
        ends = self.seq_offsets[first + 1 : last + 1]
        return np.concatenate([self.tokens[s + 1 : e] for s, e in zip(starts, ends)])

    # --- activations --------------------------------------------------------------------------
    def layer_array(self, layer: int) -> zarr.Array:
        if layer not in self.layers:
            raise MtsaeError(f"layer {layer} is not in cache {self.path} (it holds layers {self.layers})")
        return self.group[fmt.activation_path(layer)]

    def chunk_memmaps(self, layer: int) -> list[np.memmap] | None:
        """Read-only memory maps of every raw chunk of ``layer``; None if the store is compressed or not local."""
        arr = self.layer_array(layer)
        store = arr.store_path.store
        if not isinstance(store, LocalStore) or not _is_raw_little_endian(arr):
            return None
        chunk_rows = arr.chunks[0]
        n_chunks = -(-arr.shape[0] // chunk_rows)
        base = Path(store.root) / arr.store_path.path
        files = [base / arr.metadata.encode_chunk_key((i, 0)) for i in range(n_chunks)]
        _check_chunk_files(arr, files, self.path)
        bits = np.uint16 if is_bfloat16(arr.dtype) else arr.dtype  # bfloat16 as its bits, as format 1 stored it
        return [np.memmap(f, dtype=bits, mode="r", shape=(chunk_rows, arr.shape[1])) for f in files]

    def layer_rows(self, layer: int, *, chunk_cache: int = 4, checked: bool = False) -> LayerRows:
        """A reader of ``layer``'s rows (cache/rows.py): ``chunk_cache`` decoded zarr chunks kept, ``checked``:
        each chunk checked against the manifest's digests on its first read, in the background."""
        return LayerRows(self, layer, chunk_cache=chunk_cache, checked=checked)

    def rows(self, layer: int, start: int, stop: int) -> np.ndarray:
        """Activation rows ``[start, stop)`` as stored, bfloat16 as its uint16 bits (formats 1 and 2 alike).

        Zero-copy when the rows lie in one raw local chunk; otherwise a copy.
        """
        if layer not in self._layer_rows:
            self._layer_rows[layer] = self.layer_rows(layer)
        return self._layer_rows[layer].rows(start, stop)

    def activations(self, layer: int, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` as a torch tensor of the true dtype (a copy, safe to modify)."""
        return as_torch(np.array(self.rows(layer, start, stop)), self.manifest["dtype"])


def _check_chunk_files(arr: zarr.Array, files: list[Path], path: str) -> None:
    """Every raw chunk file is there and whole, or one line naming the first that is not (np.memmap would raise)."""
    want = arr.dtype.itemsize * arr.chunks[0] * arr.shape[1]
    for i, f in enumerate(files):
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            size = None
        if size != want:
            state = "missing" if size is None else f"truncated ({size} of {want} bytes)"
            raise MtsaeError(f"chunk {i} of {arr.path} in cache {path} is {state}; "
                             f"the cache is damaged, see `mtsae cache verify {path}`")


def as_torch(stored: np.ndarray, dtype_name: str) -> torch.Tensor:
    """Reinterpret stored rows (bfloat16: uint16 bits or ml_dtypes.bfloat16) as their true dtype without changing a bit."""
    tensor = torch.from_numpy(as_bits(stored))
    return tensor.view(torch.bfloat16) if dtype_name == "bfloat16" else tensor


def _is_raw_little_endian(arr: zarr.Array) -> bool:
    """True when chunk files are headerless C-order arrays that np.memmap can read as they are."""
    if arr.compressors or arr.filters:
        return False
    serializer = arr.serializer
    if not isinstance(serializer, zarr.codecs.BytesCodec):
        return False  # e.g. sharding: chunks are not separate files
    return serializer.endian is None or serializer.endian.value == "little"
