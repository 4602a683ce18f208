"""Streams sequences into a new cache; only `finish` makes it complete.

Rows are staged one chunk at a time and handed whole to a background thread,
so every chunk is written once (no read-modify-write) and compute overlaps
I/O. Memory is bounded by ``queue_chunks`` staged chunks per array,
whatever the number of tokens harvested.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np
import zarr
import zarr.codecs

from mtsae.cache import format as fmt

COMPRESSIONS = ("none", "zstd", "blosc")


def compressors_for(compression: str) -> Any:
    if compression == "none":
        return None  # raw chunks: train memory-maps them
    if compression == "zstd":
        return zarr.codecs.ZstdCodec(level=3)
    if compression == "blosc":
        return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    raise ValueError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}")


class _ChunkWriterThread:
    """Writes (array, chunk_index, rows) jobs in order; re-raises its errors on the caller's side."""

    def __init__(self, queue_chunks: int):
        self._jobs: queue.Queue = queue.Queue(maxsize=queue_chunks)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mtsae-chunk-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            array, start, rows = job
            if self._error is None:
                try:
                    array[start : start + len(rows)] = rows
                except BaseException as exc:  # surfaced in submit()/close()
                    self._error = exc

    def submit(self, array: zarr.Array, start: int, rows: np.ndarray) -> None:
        self._raise_if_failed()
        self._jobs.put((array, start, rows))

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


class CacheWriter:
    """Create a cache at ``path`` (the caller has checked the target may be replaced).

    ``header`` is stored in the root attributes right away (with status
    "incomplete"); ``finish(manifest)`` writes the index, shrinks the arrays to
    the tokens actually written and stores the manifest with status "complete"
    as the very last write.
    """

    def __init__(
        self,
        path: str,
        *,
        layers: list[int],
        d_model: int,
        dtype_name: str,
        capacity_tokens: int,
        chunk_tokens: int,
        compression: str = "none",
        header: dict[str, Any],
        queue_chunks: int = 4,
    ):
        self.path = path
        self.layers = list(layers)
        self.chunk_tokens = chunk_tokens
        self._root = zarr.open_group(path, mode="w", zarr_format=3)
        self._root.attrs[fmt.ATTRS_KEY] = {
            "format": fmt.FORMAT_NAME,
            "format_version": fmt.FORMAT_VERSION,
            "status": fmt.STATUS_INCOMPLETE,
            **header,
        }
        compressors = compressors_for(compression)
        # write_empty_chunks: every chunk file exists, so readers can memory-map all of them.
        config = {"write_empty_chunks": True}
        self._arrays: dict[str, zarr.Array] = {}
        for layer in self.layers:
            arr = self._root.create_array(
                fmt.activation_path(layer),
                shape=(capacity_tokens, d_model),
                chunks=(chunk_tokens, d_model),
                dtype=fmt.storage_dtype(dtype_name),
                compressors=compressors,
                config=config,
            )
            arr.attrs.update({"mtsae_dtype": dtype_name, "hook_name": fmt.hook_name(layer), "layer": layer})
            self._arrays[fmt.activation_path(layer)] = arr
        for name, dtype in ((fmt.TOKENS, "int32"), (fmt.SPECIAL_MASK, "bool")):
            self._arrays[name] = self._root.create_array(
                name, shape=(capacity_tokens,), chunks=(chunk_tokens,), dtype=dtype,
                compressors=compressors, config=config,
            )
        self._staging = {name: self._new_buffer(arr) for name, arr in self._arrays.items()}
        self._fill = 0  # rows staged in the current chunk
        self._chunk = 0  # index of the chunk being staged
        self._seq_offsets = [0]
        self._doc_seq_offsets: list[int] = []
        self._doc_rows: list[int] = []
        self._thread = _ChunkWriterThread(queue_chunks)
        self._closed = False

    def _new_buffer(self, arr: zarr.Array) -> np.ndarray:
        return np.empty((self.chunk_tokens, *arr.shape[1:]), dtype=arr.dtype)

    @property
    def n_tokens(self) -> int:
        return self._seq_offsets[-1]

    @property
    def n_sequences(self) -> int:
        return len(self._seq_offsets) - 1

    @property
    def n_documents(self) -> int:
        return len(self._doc_rows)

    def add_sequence(self, doc_row: int, tokens: np.ndarray, special: np.ndarray, activations: dict[int, np.ndarray]) -> None:
        """Append one sequence; a new ``doc_row`` starts a new document."""
        n = len(tokens)
        if not self._doc_rows or self._doc_rows[-1] != doc_row:
            self._doc_rows.append(doc_row)
            self._doc_seq_offsets.append(self.n_sequences)
        columns = {fmt.TOKENS: tokens, fmt.SPECIAL_MASK: special}
        for layer in self.layers:
            columns[fmt.activation_path(layer)] = activations[layer]
        done = 0
        while done < n:
            take = min(n - done, self.chunk_tokens - self._fill)
            for name, values in columns.items():
                self._staging[name][self._fill : self._fill + take] = values[done : done + take]
            self._fill += take
            done += take
            if self._fill == self.chunk_tokens:
                self._flush_chunk()
        self._seq_offsets.append(self.n_tokens + n)

    def _flush_chunk(self) -> None:
        start = self._chunk * self.chunk_tokens
        for name, arr in self._arrays.items():
            rows = self._staging[name][: self._fill]
            self._thread.submit(arr, start, rows)
            self._staging[name] = self._new_buffer(arr)
        self._chunk += 1
        self._fill = 0

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write the tail, the index and, last, the manifest. Returns the stored attributes."""
        if self._fill:
            self._flush_chunk()
        self._close_thread()
        n = self.n_tokens
        for arr in self._arrays.values():
            arr.resize((n, *arr.shape[1:]))
        index = {
            fmt.SEQ_OFFSETS: np.asarray(self._seq_offsets, dtype=np.int64),
            fmt.DOC_SEQ_OFFSETS: np.asarray(self._doc_seq_offsets + [self.n_sequences], dtype=np.int64),
            fmt.DOC_ROW: np.asarray(self._doc_rows, dtype=np.int64),
        }
        for name, values in index.items():
            self._root.create_array(name, data=values, chunks=(max(len(values), 1),), compressors=None)
        attrs = dict(self._root.attrs[fmt.ATTRS_KEY])
        attrs.update(manifest)
        attrs["status"] = fmt.STATUS_COMPLETE
        attrs["completed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._root.attrs[fmt.ATTRS_KEY] = attrs  # zarr.json is replaced atomically: this is the commit point
        return attrs

    def abort(self) -> None:
        """Stop the writer thread; the store stays marked incomplete."""
        try:
            self._close_thread()
        except BaseException:
            pass

    def _close_thread(self) -> None:
        if not self._closed:
            self._closed = True
            self._thread.close()
