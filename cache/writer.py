"""Streams sequences into a cache; only `finish` makes it complete; a crash can be resumed.

Rows are staged one chunk at a time and handed whole to a background thread,
so every chunk is written once (no read-modify-write) and compute overlaps
I/O. Memory is bounded by ``queue_chunks`` staged chunks, whatever the
number of tokens harvested.

Resumability: the producer calls `mark()` after each batch. Once every row
of a marked point is on disk, the writer thread records it as
``attrs["mtsae"]["progress"] = {"sequences": S, "tokens": N}``. A resumed
harvest replays the first S sequences of the (deterministic) sequence stream
into the index without running the model, reloads the rows of the partial
chunk from disk and continues with the same batches, so the finished store
is byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import zlib
from typing import Any, NamedTuple

import numpy as np
import zarr
import zarr.codecs
from zarr.storage import LocalStore

from mtsae.cache import digests
from mtsae.cache.bfloat16 import as_bits, is_bfloat16
from mtsae.cache import format as fmt
from mtsae.cache import remote  # paths or fsspec URLs: each chunk is one whole PUT
from mtsae.errors import writing

COMPRESSIONS = ("none", "zstd", "blosc")
RESUME_HINT = "re-run the same command to resume (what is on disk is kept)"


def _writing(what: str) -> contextlib.AbstractContextManager[None]:
    """A full disk or an unwritable folder as one line; the store stays incomplete and resumable."""
    return writing(what, RESUME_HINT)


def compressors_for(compression: str) -> Any:
    if compression == "none":
        return None  # raw chunks: train memory-maps them
    if compression == "zstd":
        return zarr.codecs.ZstdCodec(level=3)
    if compression == "blosc":
        return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    raise ValueError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}")


def crc32(values: np.ndarray) -> int:
    """Checksum of an array's logical bytes (C order), the unit `mtsae cache verify` compares."""
    return zlib.crc32(np.ascontiguousarray(values).view(np.uint8))


class ChunkSums(NamedTuple):
    """What the writer records of each chunk: the fast crc32 and the sha256 digest (cache/digests.py)."""

    crc32: int
    sha256: str


def chunk_sums(values: np.ndarray) -> ChunkSums:
    return ChunkSums(crc32(values), digests.digest(values))


def _writing_every_chunk(root: zarr.Group, name: str) -> zarr.Array:
    """Array ``name`` of ``root`` with write_empty_chunks on: a runtime setting that reopening an array loses, so an
    all-zero chunk (a synthetic cache's tokens, a mask without specials) would otherwise have no file at all. An array
    takes zarr's global config when it is opened, and keeps it."""
    with zarr.config.set({"array.write_empty_chunks": True}):
        return root[name]


class _ChunkWriterThread:
    """Writes chunks in order, checksums them and records durable progress marks.

    Errors are kept and re-raised on the producer's side at its next call.
    """

    def __init__(self, writer: "CacheWriter", queue_chunks: int):
        self._writer = writer
        self._jobs: queue.Queue = queue.Queue(maxsize=queue_chunks)
        self._error: BaseException | None = None
        self._pending_marks: list[tuple[int, int]] = []  # (sequences, tokens) not yet durable
        self._durable_rows = writer.durable_rows
        self._thread = threading.Thread(target=self._run, name="mtsae-chunk-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self._error is not None:
                continue
            try:
                if job[0] == "chunk":
                    self._write_chunk(*job[1:])
                else:
                    self._pending_marks.append(job[1:])
                self._record_progress()
            except BaseException as exc:  # surfaced in submit()/close()
                self._error = exc

    def _write_chunk(self, index: int, columns: dict[str, np.ndarray]) -> None:
        start = index * self._writer.chunk_tokens
        for name, rows in columns.items():
            with _writing(f"chunk {index} of {name} in {self._writer.location}"):
                arr = self._writer.arrays[name]
                arr[start : start + len(rows)] = rows.view(arr.dtype)  # uint16 bits -> bfloat16: same bytes
            self._writer.checksums[name][index] = chunk_sums(rows)
        self._durable_rows = start + len(next(iter(columns.values())))

    def _record_progress(self) -> None:
        durable = [mark for mark in self._pending_marks if mark[1] <= self._durable_rows]
        if durable:
            self._pending_marks = [mark for mark in self._pending_marks if mark[1] > self._durable_rows]
            sequences, tokens = durable[-1]
            self._writer.write_progress(sequences, tokens)

    def submit(self, job: tuple) -> None:
        self._raise_if_failed()
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


class CacheWriter:
    """Write a cache at ``path``: `create` a new one or `resume` an unfinished one.

    The header is stored in the root attributes at creation (status
    "incomplete"); ``finish(manifest)`` writes the index, shrinks the arrays to
    the tokens written and stores the manifest with status "complete" as the
    very last write.
    """

    def __init__(self, root: zarr.Group, attrs: dict[str, Any], queue_chunks: int = 4):
        self.root = root
        self.attrs = attrs
        self.layers: list[int] = list(attrs["layers"])
        self.chunk_tokens: int = attrs["storage"]["chunk_tokens"]
        self.arrays: dict[str, zarr.Array] = {
            name: _writing_every_chunk(root, name)
            for name in [fmt.activation_path(layer) for layer in self.layers] + [fmt.TOKENS, fmt.SPECIAL_MASK]
        }
        self.checksums: dict[str, dict[int, ChunkSums]] = {name: {} for name in self.arrays}
        self._staging = {name: self._new_buffer(arr) for name, arr in self.arrays.items()}
        self._fill = 0  # rows staged in the current chunk
        self._chunk = 0  # index of the chunk being staged
        self._seq_offsets = [0]
        self._doc_seq_offsets: list[int] = []
        self._doc_rows: list[int] = []
        self._queue_chunks = queue_chunks
        self._thread: _ChunkWriterThread | None = None
        self._attrs_lock = threading.Lock()

    # --- opening ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, *, layers: list[int], d_model: int, dtype_name: str, capacity_tokens: int,
               chunk_tokens: int, compression: str = "none", header: dict[str, Any]) -> "CacheWriter":
        # mode "a", not "w": the directory is empty but for the harvest's lock file, which must survive.
        root = remote.open_group(path, mode="a", zarr_format=3)
        attrs = {
            "format": fmt.FORMAT_NAME,
            "format_version": fmt.FORMAT_VERSION,
            "status": fmt.STATUS_INCOMPLETE,
            **header,
            "layers": list(layers),
            "storage": {**header.get("storage", {}), "chunk_tokens": chunk_tokens, "compression": compression,
                        "storage_dtype": fmt.storage_dtype_name(dtype_name), "capacity_tokens": capacity_tokens},
        }
        root.attrs[fmt.ATTRS_KEY] = attrs
        compressors = compressors_for(compression)
        # write_empty_chunks: every chunk file exists, so readers can memory-map all of them.
        config = {"write_empty_chunks": True}
        for layer in layers:
            arr = root.create_array(fmt.activation_path(layer), shape=(capacity_tokens, d_model),
                                    chunks=(chunk_tokens, d_model), dtype=fmt.storage_dtype(dtype_name),
                                    compressors=compressors, config=config, dimension_names=("token", "d_model"))
            arr.attrs.update({"mtsae_dtype": dtype_name, "hook_name": fmt.hook_name(layer), "layer": layer})
        for name, dtype in ((fmt.TOKENS, "int32"), (fmt.SPECIAL_MASK, "bool")):
            root.create_array(name, shape=(capacity_tokens,), chunks=(chunk_tokens,), dtype=dtype,
                              compressors=compressors, config=config, dimension_names=("token",))
        return cls(root, attrs)

    @classmethod
    def resume(cls, path: str) -> "CacheWriter":
        """Reopen an unfinished store; call `replay` for its first ``progress["sequences"]`` sequences, then `resume_staging`."""
        root = remote.open_group(path, mode="r+")
        return cls(root, dict(root.attrs[fmt.ATTRS_KEY]))

    @classmethod
    def at_chunk(cls, path: str, first_chunk: int) -> "CacheWriter":
        """Reopen a store created by another process to write rows from chunk ``first_chunk`` on (no index, no marks)."""
        root = remote.open_group(path, mode="r+")
        writer = cls(root, dict(root.attrs[fmt.ATTRS_KEY]))
        writer._chunk = first_chunk
        return writer

    @property
    def progress(self) -> dict[str, int]:
        """Durable point to resume from: the first ``sequences`` sequences (``tokens`` rows) are on disk."""
        return dict(self.attrs.get("progress", {"sequences": 0, "tokens": 0}))

    def _new_buffer(self, arr: zarr.Array) -> np.ndarray:
        """Staging rows as callers hand them in: bfloat16 as uint16 bits (format 1 or 2 alike)."""
        return np.empty((self.chunk_tokens, *arr.shape[1:]), dtype=np.uint16 if is_bfloat16(arr.dtype) else arr.dtype)

    # --- counts --------------------------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return self._seq_offsets[-1]

    @property
    def n_sequences(self) -> int:
        return len(self._seq_offsets) - 1

    @property
    def n_documents(self) -> int:
        return len(self._doc_rows)

    @property
    def durable_rows(self) -> int:
        """Rows of complete chunks already handed to the writer thread (all of them on disk once it drains)."""
        return self._chunk * self.chunk_tokens

    # --- writing ---------------------------------------------------------------------------------
    def _index_sequence(self, doc_row: int, n: int) -> None:
        if not self._doc_rows or self._doc_rows[-1] != doc_row:
            self._doc_rows.append(doc_row)
            self._doc_seq_offsets.append(self.n_sequences)
        self._seq_offsets.append(self.n_tokens + n)

    def replay(self, doc_row: int, n_tokens: int) -> None:
        """Account for a sequence that a previous run already wrote (index only, no data)."""
        self._index_sequence(doc_row, n_tokens)
        self._chunk, self._fill = divmod(self.n_tokens, self.chunk_tokens)

    def resume_staging(self) -> None:
        """After `replay`: reload the partial chunk's rows from disk, then start the writer thread."""
        start = self._chunk * self.chunk_tokens
        if self._fill:
            for name, arr in self.arrays.items():
                self._staging[name][: self._fill] = as_bits(arr[start : start + self._fill])
        self._start_thread()

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = _ChunkWriterThread(self, self._queue_chunks)

    def add_sequence(self, doc_row: int, tokens: np.ndarray, special: np.ndarray, activations: dict[int, np.ndarray]) -> None:
        """Append one sequence; a new ``doc_row`` starts a new document."""
        self.add_rows(self.sequence_columns(tokens, special, activations))
        self._index_sequence(doc_row, len(tokens))

    def sequence_columns(self, tokens: np.ndarray, special: np.ndarray, activations: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        """One sequence's rows of every per-token array, keyed by array name."""
        columns = {fmt.TOKENS: tokens, fmt.SPECIAL_MASK: special}
        for layer in self.layers:
            columns[fmt.activation_path(layer)] = activations[layer]
        return columns

    def add_rows(self, columns: dict[str, np.ndarray]) -> None:
        """Stage rows of every per-token array (no index entry: `add_sequence` adds one)."""
        self._start_thread()
        n = len(columns[fmt.TOKENS])
        done = 0
        while done < n:
            take = min(n - done, self.chunk_tokens - self._fill)
            for name, values in columns.items():
                self._staging[name][self._fill : self._fill + take] = values[done : done + take]
            self._fill += take
            done += take
            if self._fill == self.chunk_tokens:
                self._flush_chunk()

    def mark(self) -> None:
        """A resumable point (the end of a batch): recorded once all its rows are on disk."""
        self._start_thread()
        self._thread.submit(("mark", self.n_sequences, self.n_tokens))

    def _flush_chunk(self) -> None:
        columns = {name: self._staging[name][: self._fill] for name in self.arrays}
        self._thread.submit(("chunk", self._chunk, columns))
        self._staging = {name: self._new_buffer(arr) for name, arr in self.arrays.items()}
        self._chunk += 1
        self._fill = 0

    def write_progress(self, sequences: int, tokens: int) -> None:
        with self._attrs_lock, _writing(f"the progress record of {self.location}"):
            self.attrs["progress"] = {"sequences": sequences, "tokens": tokens}
            self.root.attrs[fmt.ATTRS_KEY] = self.attrs

    @property
    def location(self) -> str:
        """The store's path or URL, for messages."""
        store = self.root.store
        return str(getattr(store, "root", None) or getattr(store, "path", None) or store)

    # --- committing --------------------------------------------------------------------------------
    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write the tail, the index, the checksums and, last, the manifest. Returns the stored attributes."""
        self.flush()
        return self.commit(manifest)

    def flush(self) -> dict[str, dict[int, ChunkSums]]:
        """Write the staged tail and wait for every chunk; returns the sums of each chunk written, per array."""
        self._start_thread()
        if self._fill:
            self._flush_chunk()
        self._close_thread()
        return self.checksums

    def commit(self, manifest: dict[str, Any], more_checksums: dict[str, dict[int, ChunkSums]] | None = None) -> dict[str, Any]:
        """After `flush`: the index, the checksums and digests and, last, the manifest.

        ``more_checksums``: sums of chunks other writers wrote (the other ranks of a parallel harvest).
        """
        with _writing(f"the index and manifest of {self.location}"):
            return self._commit(manifest, more_checksums)

    def _commit(self, manifest: dict[str, Any], more_checksums: dict[str, dict[int, ChunkSums]] | None) -> dict[str, Any]:
        for name, known in (more_checksums or {}).items():
            self.checksums[name].update(known)
        n = self.n_tokens
        for arr in self.arrays.values():
            arr.resize((n, *arr.shape[1:]))
        index = {
            fmt.SEQ_OFFSETS: np.asarray(self._seq_offsets, dtype=np.int64),
            fmt.DOC_SEQ_OFFSETS: np.asarray(self._doc_seq_offsets + [self.n_sequences], dtype=np.int64),
            fmt.DOC_ROW: np.asarray(self._doc_rows, dtype=np.int64),
        }
        for name, values in index.items():
            self.root.create_array(name, data=values, chunks=(max(len(values), 1),), compressors=None, overwrite=True)
        attrs = dict(self.attrs)
        attrs.pop("progress", None)
        attrs.update(manifest)
        sums = {name: self._chunk_sums(name) for name in self.arrays}
        attrs["checksums"] = {
            "algorithm": "crc32",
            "chunks": {name: [s.crc32 for s in chunks] for name, chunks in sums.items()},
            "arrays": {name: crc32(values) for name, values in index.items()},
        }
        attrs[digests.DIGESTS_KEY] = digests.record(
            attrs, {name: [s.sha256 for s in chunks] for name, chunks in sums.items()},
            {name: digests.digest(values) for name, values in index.items()})
        attrs["status"] = fmt.STATUS_COMPLETE
        attrs["completed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if isinstance(self.root.store, LocalStore):  # temporaries a killed earlier run left: not part of the cache
            remote.remove_zarr_temporaries(self.root.store.root)
        with self._attrs_lock:
            self.root.attrs[fmt.ATTRS_KEY] = attrs  # zarr.json is replaced atomically: the commit point
        return attrs

    def _chunk_sums(self, name: str) -> list[ChunkSums]:
        """One crc32 and digest per chunk; chunks written by an earlier (resumed) run are read back once."""
        arr, known = self.arrays[name], self.checksums[name]
        n_chunks = -(-self.n_tokens // self.chunk_tokens)
        return [known[i] if i in known else chunk_sums(arr[i * self.chunk_tokens : (i + 1) * self.chunk_tokens])
                for i in range(n_chunks)]

    def abort(self) -> None:
        """Stop the writer thread; the store stays marked incomplete (and resumable)."""
        try:
            self._close_thread()
        except BaseException:
            pass

    def _close_thread(self) -> None:
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.close()
