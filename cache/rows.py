"""Rows of one layer's activations: the one place that maps cache rows to chunks.

Every activation array is chunked by rows (``chunk_tokens`` rows a chunk, the
last one partial). :func:`chunk_spans` is that arithmetic, pure and alone;
:class:`LayerRows` is the reader built on it, used by the cache's own
``rows``/``activations`` and by the training loader:

* zero-copy ``np.memmap`` slices of the raw chunk files when the store is
  local and uncompressed (``ActivationCache.chunk_memmaps``); otherwise one
  decoded zarr chunk at a time through a small LRU cache. Both are bit-identical.
* :meth:`LayerRows.prefetch` is a hint: the memory-mapped pages of the rows
  about to be read are announced to the kernel (``madvise(MADV_WILLNEED)``).
* ``checked=True``: the first read of each chunk queues a background check of
  its activations, and of the tokens and special mask of the same rows,
  against the manifest's digests (cache/digests.py); :meth:`LayerRows.raise_failure`
  and :meth:`LayerRows.wait_checked` report a mismatch in one line.
"""

from __future__ import annotations

import collections
import mmap
import threading
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from mtsae.cache import format as fmt
from mtsae.errors import MtsaeError
from mtsae.cache.bfloat16 import as_bits

if TYPE_CHECKING:
    from mtsae.cache.reader import ActivationCache


def chunk_spans(start: int, stop: int, chunk_rows: int) -> Iterator[tuple[int, int, int]]:
    """Rows ``[start, stop)`` as ``(chunk, lo, hi)``: rows ``lo:hi`` of each chunk they cover, in order."""
    first, last = start // chunk_rows, (stop - 1) // chunk_rows
    for c in range(first, last + 1):
        base = c * chunk_rows
        yield c, max(start, base) - base, min(stop, base + chunk_rows) - base


def chunk_slice(c: int, chunk_rows: int, n_rows: int) -> slice:
    """The array rows chunk ``c`` holds (the last chunk of an array may be partial)."""
    return slice(c * chunk_rows, min((c + 1) * chunk_rows, n_rows))


class LayerRows:
    """The activations of one layer of a cache, read by row ranges (see the module doc)."""

    def __init__(self, cache: "ActivationCache", layer: int, *, chunk_cache: int = 4, checked: bool = False) -> None:
        self.cache = cache
        self.array = cache.layer_array(layer)  # refuses a layer the cache lacks
        self._checker = None
        if checked:
            from mtsae.cache.digests import checker_for

            self._checker = checker_for(cache)  # the manifest and index against their digests, once per cache
            self._tokens = cache.group[fmt.TOKENS]  # read a chunk at a time, only to be checked
            self._special = cache.special_mask
        self._first_reads: set[int] = set()  # chunks whose checks are queued or done
        self.memmaps = cache.chunk_memmaps(layer)
        self.n_rows = int(self.array.shape[0])
        self.chunk_rows = int(self.memmaps[0].shape[0]) if self.memmaps else int(self.array.chunks[0])
        self._decoded: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._chunk_cache = max(1, chunk_cache)
        self._lock = threading.Lock()  # the prefetch thread and the caller may both read

    @property
    def uses_memmap(self) -> bool:
        """True when rows are read from memory-mapped raw chunks (else through zarr)."""
        return self.memmaps is not None

    # ------------------------------------------------------------- reading
    def read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        """Copy rows ``[start, stop)`` (stored dtype) into ``out``."""
        filled = 0
        for c, lo, hi in chunk_spans(start, stop, self.chunk_rows):
            out[filled : filled + hi - lo] = self.chunk(c)[lo:hi]
            filled += hi - lo

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` in the stored dtype: a view when they lie in one raw local chunk, else a copy."""
        if self.memmaps is None:
            return as_bits(self.array[start:stop])  # one zarr read decodes the chunks it needs, without the LRU
        spans = list(chunk_spans(start, stop, self.chunk_rows))
        if len(spans) == 1:
            c, lo, hi = spans[0]
            return self.chunk(c)[lo:hi]
        out = np.empty((stop - start, self.array.shape[1]), dtype=self.memmaps[0].dtype)
        self.read_into(start, stop, out)
        return out

    def chunk(self, c: int) -> np.ndarray:
        """Chunk ``c`` (a memmap, or the decoded rows), its check queued on its first read when ``checked``."""
        if self.memmaps is not None:
            if self._checker is not None and c not in self._first_reads:
                self._check(c, lambda: self.memmaps[c][: self._rows_in(c)])
            return self.memmaps[c]
        with self._lock:
            chunk = self._decoded.get(c)
            if chunk is None:
                chunk = self._decode(c)
                if self._checker is not None and c not in self._first_reads:
                    self._check(c, lambda: chunk)
                self._decoded[c] = chunk
                while len(self._decoded) > self._chunk_cache:
                    self._decoded.popitem(last=False)
            else:
                self._decoded.move_to_end(c)
            return chunk

    def _decode(self, c: int) -> np.ndarray:
        try:
            return as_bits(self.array[chunk_slice(c, self.chunk_rows, self.n_rows)])
        except Exception as exc:  # a truncated or altered compressed chunk does not decode (codec errors vary)
            path = self.cache.path
            raise MtsaeError(f"chunk {c} of {self.array.path} in cache {path} cannot be decoded "
                             f"({type(exc).__name__}: {str(exc).strip()[:100]}); the cache is damaged, "
                             f"see `mtsae cache verify {path}`") from None

    def _rows_in(self, c: int) -> int:
        rows = chunk_slice(c, self.chunk_rows, self.n_rows)
        return rows.stop - rows.start

    # ---------------------------------------------------------- prefetch hint
    def prefetch(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Ask the kernel to read the rows of ``ranges`` now (``madvise(MADV_WILLNEED)``); zarr reads ignore it.

        Copying a shuffled window from a cold memmap faults its pages in one
        small read at a time; announcing a whole batch first lets the kernel
        issue all those reads at once, so a cold epoch reads near the disk's
        rate instead of at one page fault's latency per window.
        """
        if self.memmaps is None or not hasattr(mmap, "MADV_WILLNEED"):
            return
        row_bytes = self.array.shape[1] * self.memmaps[0].dtype.itemsize
        for start, stop in ranges:
            for c, lo, hi in chunk_spans(start, stop, self.chunk_rows):
                mapped = getattr(self.memmaps[c], "_mmap", None)
                if mapped is None:
                    continue
                begin = lo * row_bytes // mmap.PAGESIZE * mmap.PAGESIZE  # madvise needs a page-aligned start
                mapped.madvise(mmap.MADV_WILLNEED, begin, hi * row_bytes - begin)

    # ------------------------------------------------------------- integrity
    def _check(self, c: int, activations: Callable[[], np.ndarray]) -> None:
        """Queue the checks of chunk ``c``: its activations, and the tokens and special mask of its rows."""
        rows = chunk_slice(c, self.chunk_rows, self.n_rows)
        self._checker.submit(self.array.path, c, activations)
        self._checker.submit(fmt.TOKENS, c, lambda: self._tokens[rows])
        self._checker.submit(fmt.SPECIAL_MASK, c, lambda: self._special[rows])
        self._first_reads.add(c)

    def raise_failure(self) -> None:
        """Raise the first failed check found so far (one line); nothing when unchecked or all passed."""
        if self._checker is not None:
            self._checker.raise_failure()

    def wait_checked(self) -> None:
        """Return once every chunk read so far passed its check; raise the first that did not (one line)."""
        if self._checker is not None:
            self._checker.wait()
