"""Windows of cached activations as ``[B, T, d]`` float32 batches.

:class:`WindowDataset` turns the windows of one layer and one split (see
:mod:`mtsae.train.windows` for the index math and the special-token policy)
into batches:

* Rows come from the cache's one row reader, :class:`mtsae.cache.rows.LayerRows`:
  zero-copy ``np.memmap`` slices of the raw chunk files when the store is
  local and uncompressed, otherwise one decoded zarr chunk at a time through a
  small LRU cache (both bit-identical); each batch's windows are announced to
  its prefetch hint one batch ahead.
* Each batch is assembled into one preallocated buffer in the stored dtype
  (bfloat16 stays as its uint16 bits until then), cast once to float32 into
  a second preallocated buffer (pinned when the target is CUDA), and rows
  flagged in ``special_mask`` are zeroed.
* Each chunk is checked the first time it is read (its activations, and the
  tokens and special mask of the same rows) against the manifest's sha256
  digests, or crc32s for caches without them (cache/digests.py), in a
  background thread (the reader queues it); a mismatch stops the batches with
  one error line naming the chunk, and :meth:`WindowDataset.wait_checked`
  (called by the trainer before every checkpoint) waits for the checks of
  everything read so far. The index arrays, the data digest and the
  manifest's dtype/d_model are checked once, when the dataset is made.
* :class:`Prefetcher` runs the assembly in a background thread with a bounded
  queue, so the accelerator does not wait on I/O; the consumer moves each
  batch to the device with ``non_blocking=True``. An error in the thread is
  re-raised in the consumer.

Every architecture gets the same windows; per-token baselines flatten them to
tokens in the trainer.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from mtsae.cache import ActivationCache, open_cache
from mtsae.cache import format as fmt
from mtsae.cache.bfloat16 import as_bits
from mtsae.errors import MtsaeError
from mtsae.prefetch import Prefetcher
from mtsae.train.config import Windowing
from mtsae.train import windows as W

SPLITS = ("train", "heldout")


class WindowDataset:
    """The windows of ``layer`` in one split of a cache.

    Args:
        cache: an opened :class:`~mtsae.cache.ActivationCache` or a cache path.
        layer: residual-stream layer; must be one the cache holds.
        windowing: window length, stride, held-out fraction and seed, checked when made
            (:class:`~mtsae.train.config.Windowing`; the same for both splits of one run,
            or they would overlap). Default: the training defaults.
        split: ``"train"`` or ``"heldout"`` (sequences split by
            :func:`mtsae.train.windows.split_sequences`).
    """

    def __init__(
        self,
        cache: ActivationCache | str | os.PathLike,
        layer: int,
        windowing: Windowing = Windowing(),
        split: str = "train",
        *,
        zarr_chunk_cache: int = 4,
    ) -> None:
        if split not in SPLITS:
            raise MtsaeError(f"split must be one of {SPLITS}, got {split!r}")
        self.cache = cache if isinstance(cache, ActivationCache) else open_cache(cache)
        self.layer = layer
        self.array = self.cache.layer_array(layer)  # refuses a layer the cache lacks
        self.windowing = windowing
        self.window, self.stride, self.seed = windowing.window, windowing.stride, windowing.seed
        self.split = split
        self.d_model = self.cache.d_model
        self.dtype_name: str = self.cache.manifest["dtype"]
        self.storage_dtype = as_bits(np.empty(0, self.array.dtype)).dtype  # bfloat16 (format 2) read as uint16 bits
        self._check_layout()
        # Reads, the prefetch hint and the background digest checks of each chunk's first read (cache/rows.py).
        self.reader = self.cache.layer_rows(layer, chunk_cache=zarr_chunk_cache, checked=True)
        offsets = self.cache.seq_offsets
        train_seqs, heldout_seqs = W.split_sequences(len(offsets) - 1, windowing.holdout_fraction, self.seed)
        self.sequences = train_seqs if split == "train" else heldout_seqs
        self.starts = W.window_starts(offsets, self.window, self.stride, self.sequences)
        self.special_mask = self.cache.special_mask

    # ------------------------------------------------------------------ info
    def __len__(self) -> int:
        return len(self.starts)

    @property
    def uses_memmap(self) -> bool:
        """True when windows are read from memory-mapped raw chunks (else through zarr)."""
        return self.reader.uses_memmap

    @property
    def n_tokens(self) -> int:
        return len(self) * self.window

    def batches_per_epoch(self, batch_windows: int, drop_last: bool = True) -> int:
        return len(self) // batch_windows if drop_last else -(-len(self) // batch_windows)

    # ------------------------------------------------------------- reading
    def read_rows(self, start: int, stop: int, out: np.ndarray) -> None:
        """Copy cache rows ``[start, stop)`` of the layer (stored dtype) into ``out``."""
        self.reader.read_into(start, stop, out)

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

    def wait_checked(self) -> None:
        """Return once every chunk read so far passed its check; raise the first that did not (one line)."""
        self.reader.wait_checked()

    def advise_willneed(self, indices: np.ndarray) -> None:
        """Announce every window of a batch to the reader's prefetch hint (pages read ahead on a memmap)."""
        self.reader.prefetch((int(self.starts[i]), int(self.starts[i]) + self.window) for i in indices)

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
            self.reader.raise_failure()  # a chunk read earlier failed its check: stop here
            if device.type != "cpu":
                x = x.to(device, non_blocking=True)
                special = special.to(device, non_blocking=True)
            yield (x, special) if with_special else x
