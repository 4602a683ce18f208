"""Windows of cached activations as ``[B, T, d]`` float32 batches.

:class:`WindowDataset` turns the windows of one layer and one split (see
:mod:`mtsae.train.windows` for the index math and the special-token policy)
into batches:

* Reads are zero-copy ``np.memmap`` slices of the raw chunk files when the
  store is local and uncompressed; otherwise (compressed or remote stores) the
  rows come from zarr, one decoded chunk at a time through a small LRU cache.
  Both paths yield bit-identical windows.
* Each batch is assembled into one preallocated buffer in the stored dtype
  (bfloat16 stays as its uint16 bits until then), cast once to float32 into
  a second preallocated buffer (pinned when the target is CUDA), and rows
  flagged in ``special_mask`` are zeroed.
* Each chunk is checked the first time it is read (its activations, and the
  tokens and special mask of the same rows) against the manifest's sha256
  digests, or crc32s for caches without them (cache/digests.py), in a
  background thread; a mismatch stops the batches with one error line naming
  the chunk, and :meth:`WindowDataset.wait_checked` (called by the trainer
  before every checkpoint) waits for the checks of everything read so far.
  The index arrays, the data digest and the manifest's dtype/d_model are
  checked once, when the dataset is made.
* :class:`Prefetcher` runs the assembly in a background thread with a bounded
  queue, so the accelerator does not wait on I/O; the consumer moves each
  batch to the device with ``non_blocking=True``. An error in the thread is
  re-raised in the consumer.

Every architecture gets the same windows; per-token baselines flatten them to
tokens in the trainer.
"""

from __future__ import annotations

import collections
import mmap
import os
import threading
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from mtsae.cache import ActivationCache, open_cache
from mtsae.cache import format as fmt
from mtsae.cache.bfloat16 import as_bits
from mtsae.cache.digests import checker_for
from mtsae.errors import MtsaeError
from mtsae.prefetch import Prefetcher
from mtsae.train import windows as W

SPLITS = ("train", "heldout")


class WindowDataset:
    """The windows of ``layer`` in one split of a cache.

    Args:
        cache: an opened :class:`~mtsae.cache.ActivationCache` or a cache path.
        layer: residual-stream layer; must be one the cache holds.
        window: tokens per window (T).
        stride: distance between window starts in a sequence; default ``window``.
        split: ``"train"`` or ``"heldout"`` (sequences split by
            :func:`mtsae.train.windows.split_sequences`).
        holdout_fraction, seed: the split's parameters (the same for both splits
            of one run, or they would overlap).
    """

    def __init__(
        self,
        cache: ActivationCache | str | os.PathLike,
        layer: int,
        window: int = 128,
        stride: int | None = None,
        split: str = "train",
        holdout_fraction: float = 0.05,
        seed: int = 0,
        *,
        zarr_chunk_cache: int = 4,
    ) -> None:
        if split not in SPLITS:
            raise MtsaeError(f"split must be one of {SPLITS}, got {split!r}")
        self.cache = cache if isinstance(cache, ActivationCache) else open_cache(cache)
        self.layer = layer
        self.array = self.cache.layer_array(layer)  # refuses a layer the cache lacks
        self.window = window
        self.stride = W.check_window_args(window, stride)
        self.split = split
        self.seed = seed
        self.d_model = self.cache.d_model
        self.dtype_name: str = self.cache.manifest["dtype"]
        self.storage_dtype = as_bits(np.empty(0, self.array.dtype)).dtype  # bfloat16 (format 2) read as uint16 bits
        self._check_layout()
        self._checker = checker_for(self.cache)  # the manifest and index against their digests, once per cache
        self._submitted: set[int] = set()  # chunks whose checks are queued or done
        self._tokens = self.cache.group[fmt.TOKENS]  # read a chunk at a time, only to be checked
        offsets = self.cache.seq_offsets
        train_seqs, heldout_seqs = W.split_sequences(len(offsets) - 1, holdout_fraction, seed)
        self.sequences = train_seqs if split == "train" else heldout_seqs
        self.starts = W.window_starts(offsets, window, self.stride, self.sequences)
        self.special_mask = self.cache.special_mask
        self.memmaps = self.cache.chunk_memmaps(layer)
        self.chunk_rows = int(self.memmaps[0].shape[0]) if self.memmaps else int(self.array.chunks[0])
        self._zarr_chunks: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._zarr_chunk_cache = max(1, zarr_chunk_cache)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ info
    def __len__(self) -> int:
        return len(self.starts)

    @property
    def uses_memmap(self) -> bool:
        """True when windows are read from memory-mapped raw chunks (else through zarr)."""
        return self.memmaps is not None

    @property
    def n_tokens(self) -> int:
        return len(self) * self.window

    def batches_per_epoch(self, batch_windows: int, drop_last: bool = True) -> int:
        return len(self) // batch_windows if drop_last else -(-len(self) // batch_windows)

    # ------------------------------------------------------------- reading
    def read_rows(self, start: int, stop: int, out: np.ndarray) -> None:
        """Copy cache rows ``[start, stop)`` of the layer (stored dtype) into ``out``."""
        first, last = start // self.chunk_rows, (stop - 1) // self.chunk_rows
        filled = 0
        for c in range(first, last + 1):
            lo = max(start, c * self.chunk_rows) - c * self.chunk_rows
            hi = min(stop, (c + 1) * self.chunk_rows) - c * self.chunk_rows
            out[filled : filled + hi - lo] = self._chunk(c)[lo:hi]
            filled += hi - lo

    def _chunk(self, c: int) -> np.ndarray:
        if self.memmaps is not None:
            if c not in self._submitted:
                self._check_chunk(c, lambda: self.memmaps[c][: self._rows_in(c)])
            return self.memmaps[c]
        with self._lock:  # the prefetch thread and the caller may both read
            chunk = self._zarr_chunks.get(c)
            if chunk is None:
                chunk = self._decode_chunk(c)
                if c not in self._submitted:
                    self._check_chunk(c, lambda: chunk)
                self._zarr_chunks[c] = chunk
                while len(self._zarr_chunks) > self._zarr_chunk_cache:
                    self._zarr_chunks.popitem(last=False)
            else:
                self._zarr_chunks.move_to_end(c)
            return chunk

    def _decode_chunk(self, c: int) -> np.ndarray:
        try:
            return as_bits(self.array[c * self.chunk_rows : (c + 1) * self.chunk_rows])
        except Exception as exc:  # a truncated or altered compressed chunk does not decode (codec errors vary)
            raise MtsaeError(f"chunk {c} of {self.array.path} in cache {self.cache.path} cannot be decoded "
                             f"({type(exc).__name__}: {str(exc).strip()[:100]}); the cache is damaged, "
                             f"see `mtsae cache verify {self.cache.path}`") from None

    # ------------------------------------------------------------ integrity
    def _check_layout(self) -> None:
        """The manifest's dtype and d_model must describe the layer's array (an edited manifest misreads every row)."""
        where = f"cache {self.cache.path}"
        if self.array.attrs.get("mtsae_dtype") not in (None, self.dtype_name) or \
                self.dtype_name not in fmt.STORAGE_DTYPES or fmt.STORAGE_DTYPES[self.dtype_name] != self.storage_dtype:
            raise MtsaeError(f"{where}: its manifest says dtype {self.dtype_name!r} but {self.array.path} holds "
                             f"{self.array.attrs.get('mtsae_dtype') or self.storage_dtype}; the manifest was altered, "
                             "re-pull or re-harvest the cache")
        if self.array.ndim != 2 or self.array.shape[1] != self.d_model:
            raise MtsaeError(f"{where}: its manifest says d_model {self.d_model} but {self.array.path} has shape "
                             f"{tuple(self.array.shape)}; the manifest was altered, re-pull or re-harvest the cache")

    def _rows_in(self, c: int) -> int:
        return min(self.chunk_rows, self.array.shape[0] - c * self.chunk_rows)

    def _check_chunk(self, c: int, activations) -> None:
        """The first read of chunk ``c``: its activations, tokens and special mask are checked in the background."""
        rows = slice(c * self.chunk_rows, c * self.chunk_rows + self._rows_in(c))
        self._checker.submit(self.array.path, c, activations)
        self._checker.submit(fmt.TOKENS, c, lambda: self._tokens[rows])
        self._checker.submit(fmt.SPECIAL_MASK, c, lambda: self.special_mask[rows])
        self._submitted.add(c)

    def wait_checked(self) -> None:
        """Return once every chunk read so far passed its check; raise the first that did not (one line)."""
        self._checker.wait()

    def advise_willneed(self, indices: np.ndarray) -> None:
        """Ask the kernel to read every window of a batch now (``madvise(MADV_WILLNEED)``).

        Copying a shuffled window from a cold memmap faults its pages in one
        small read at a time; announcing the whole batch first lets the kernel
        issue all those reads at once, so a cold epoch reads near the disk's
        rate instead of at one page fault's latency per window.
        """
        if self.memmaps is None or not hasattr(mmap, "MADV_WILLNEED"):
            return
        row_bytes = self.d_model * np.dtype(self.storage_dtype).itemsize
        for i in indices:
            start = int(self.starts[i])
            first, last = start // self.chunk_rows, (start + self.window - 1) // self.chunk_rows
            for c in range(first, last + 1):
                lo = max(start, c * self.chunk_rows) - c * self.chunk_rows
                hi = min(start + self.window, (c + 1) * self.chunk_rows) - c * self.chunk_rows
                mapped = getattr(self.memmaps[c], "_mmap", None)
                if mapped is None:
                    continue
                begin = lo * row_bytes // mmap.PAGESIZE * mmap.PAGESIZE  # madvise needs a page-aligned start
                mapped.madvise(mmap.MADV_WILLNEED, begin, hi * row_bytes - begin)

    def raw_window(self, i: int) -> np.ndarray:
        """Window ``i`` as stored (uint16 bits for bfloat16), ``[T, d]``, specials *not* zeroed; a copy."""
        out = np.empty((self.window, self.d_model), dtype=self.storage_dtype)
        start = int(self.starts[i])
        self.read_rows(start, start + self.window, out)
        return out

    def window_special(self, i: int) -> np.ndarray:
        """``[T]`` bool: which rows of window ``i`` are special tokens (zeroed in batches)."""
        start = int(self.starts[i])
        return self.special_mask[start : start + self.window]

    def window_tensor(self, i: int) -> torch.Tensor:
        """Window ``i`` as the SAE sees it: ``[T, d]`` float32, special rows zeroed."""
        return self.assemble(np.array([i]))[0][0]

    def assemble(self, indices: np.ndarray, pin_memory: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [B, T, d] float32, special [B, T] bool)`` for windows ``indices``, specials zeroed.

        One buffer in the stored dtype receives the rows, one float32 buffer
        (pinned if asked) receives the single cast.
        """
        B, T = len(indices), self.window
        raw = np.empty((B, T, self.d_model), dtype=self.storage_dtype)
        special = np.empty((B, T), dtype=bool)
        for b, i in enumerate(indices):
            start = int(self.starts[i])
            self.read_rows(start, start + T, raw[b])
            special[b] = self.special_mask[start : start + T]
        x = torch.empty((B, T, self.d_model), dtype=torch.float32, pin_memory=pin_memory)
        stored = torch.from_numpy(raw)
        x.copy_(stored.view(torch.bfloat16) if self.dtype_name == "bfloat16" else stored)
        special_t = torch.from_numpy(special)
        if special.any():
            x.masked_fill_(special_t.unsqueeze(-1), 0.0)
        return x, special_t

    # ------------------------------------------------------------- batches
    def batch_indices(
        self,
        batch_windows: int,
        epoch: int = 0,
        shuffle: bool = True,
        *,
        start_batch: int = 0,
        drop_last: bool = False,
        limit: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Window indices of each batch of one epoch, from batch ``start_batch`` on.

        ``limit`` keeps only the first ``limit`` windows of the epoch order.
        """
        if batch_windows < 1:
            raise MtsaeError(f"batch_windows must be at least 1, got {batch_windows}")
        order = W.epoch_order(len(self), self.seed, epoch, shuffle)
        if limit is not None:
            order = order[:limit]
        n_batches = len(order) // batch_windows if drop_last else -(-len(order) // batch_windows)
        for b in range(start_batch, n_batches):
            yield order[b * batch_windows : (b + 1) * batch_windows]

    def batches(
        self,
        batch_windows: int,
        epoch: int = 0,
        shuffle: bool = True,
        *,
        epochs: int | None = 1,
        start_batch: int = 0,
        drop_last: bool = False,
        limit: int | None = None,
        device: torch.device | str | None = None,
        prefetch: int = 2,
        with_special: bool = False,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[Any]:
        """``[B, T, d]`` float32 batches (specials zeroed) of epochs ``epoch, epoch+1, …``.

        ``epochs`` consecutive epochs (``None``: endless), the first one
        starting at batch ``start_batch``; each epoch in its own seeded order
        (:func:`mtsae.train.windows.epoch_order`). ``prefetch`` batches are
        assembled ahead in a background thread (0: in the caller's thread).
        ``device``: where batches are delivered (CUDA batches are built in
        pinned memory and copied with ``non_blocking=True``).
        ``with_special``: yield ``(x, special [B, T] bool)`` pairs instead.
        ``shard=(rank, size)``: keep only that rank's contiguous ``1/size`` of each batch
        (data-parallel training, :mod:`mtsae.train.parallel`).
        """
        device = torch.device(device) if device is not None else torch.device("cpu")
        pin = device.type == "cuda"

        def indices() -> Iterator[np.ndarray]:
            e, first = epoch, start_batch
            while epochs is None or e < epoch + epochs:
                for idx in self.batch_indices(batch_windows, e, shuffle, start_batch=first, drop_last=drop_last, limit=limit):
                    if shard is not None:
                        idx = idx[len(idx) * shard[0] // shard[1] : len(idx) * (shard[0] + 1) // shard[1]]
                    yield idx
                e, first = e + 1, 0

        def produce() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            # One batch of read-ahead: the next batch's pages load while this one is copied.
            upcoming = indices()
            current = next(upcoming, None)
            if current is not None:
                self.advise_willneed(current)
            while current is not None:
                following = next(upcoming, None)
                if following is not None:
                    self.advise_willneed(following)
                yield self.assemble(current, pin_memory=pin)
                current = following

        source: Iterable[tuple[torch.Tensor, torch.Tensor]] = Prefetcher(produce, prefetch) if prefetch > 0 else produce()
        for x, special in source:
            self._checker.raise_failure()  # a chunk read earlier failed its check: stop here
            if device.type != "cpu":
                x = x.to(device, non_blocking=True)
                special = special.to(device, non_blocking=True)
            yield (x, special) if with_special else x
