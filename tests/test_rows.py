"""The cache's row reader (cache/rows.py): chunk arithmetic by property, reads against plain zarr."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from test_loader import write_cache

from mtsae.cache.bfloat16 import as_bits
from mtsae.cache import format as fmt
from mtsae.cache import open_cache
from mtsae.cache.rows import chunk_slice, chunk_spans


@st.composite
def row_ranges(draw):
    chunk_rows = draw(st.integers(1, 20))
    n_rows = draw(st.integers(1, 200))
    start = draw(st.integers(0, n_rows - 1))
    stop = draw(st.integers(start + 1, n_rows))
    return start, stop, chunk_rows, n_rows


@settings(max_examples=300, deadline=None)
@given(row_ranges())
def test_chunk_spans_cover_the_rows_once_in_order_inside_their_chunks(case):
    start, stop, chunk_rows, n_rows = case
    covered = []
    for c, lo, hi in chunk_spans(start, stop, chunk_rows):
        inside = chunk_slice(c, chunk_rows, n_rows)
        assert 0 <= lo < hi <= inside.stop - inside.start  # a non-empty part of a chunk the array has
        covered.extend(range(inside.start + lo, inside.start + hi))
    assert covered == list(range(start, stop))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20), st.integers(1, 200))
def test_chunk_slices_tile_the_array(chunk_rows, n_rows):
    n_chunks = -(-n_rows // chunk_rows)
    rows = [r for c in range(n_chunks) for r in range(n_rows)[chunk_slice(c, chunk_rows, n_rows)]]
    assert rows == list(range(n_rows))


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    stored = write_cache(root / "raw.zarr")
    write_cache(root / "zstd.zarr", compression="zstd")
    return root, stored


@pytest.mark.parametrize("store", ["raw.zarr", "zstd.zarr"])
@pytest.mark.parametrize("chunk_cache", [1, 4])
def test_every_row_range_reads_what_plain_zarr_reads(caches, store, chunk_cache):
    root, stored = caches
    cache = open_cache(root / store)
    reader = cache.layer_rows(19, chunk_cache=chunk_cache)
    assert reader.uses_memmap == (store == "raw.zarr")
    plain = as_bits(zarr.open_group(str(root / store), mode="r")[fmt.activation_path(19)][:])  # format 2: bf16 typed
    np.testing.assert_array_equal(plain, stored[19])
    rng = np.random.default_rng(0)
    for start in rng.integers(0, len(plain) - 1, size=40):
        stop = int(rng.integers(start + 1, min(len(plain), start + 90) + 1))
        out = np.empty((stop - start, plain.shape[1]), dtype=plain.dtype)
        reader.read_into(int(start), stop, out)
        np.testing.assert_array_equal(out, plain[start:stop])
        np.testing.assert_array_equal(reader.rows(int(start), stop), plain[start:stop])


class _AdviceSpy:
    """Stands in for a memmap's mmap: records each madvise and passes it on."""

    def __init__(self, mapped, calls):
        self.mapped, self.calls = mapped, calls

    def madvise(self, *args):
        self.calls.append(args)
        return self.mapped.madvise(*args)


def test_prefetch_is_a_hint_that_changes_no_row(caches):
    root, stored = caches
    raw, zstd = open_cache(root / "raw.zarr").layer_rows(19), open_cache(root / "zstd.zarr").layer_rows(19)
    advised = []
    for m in raw.memmaps:
        m._mmap = _AdviceSpy(m._mmap, advised)
    n = len(stored[19])
    spans = [(0, 10), (30, 80), (n - 5, n)]
    raw.prefetch(spans)
    zstd.prefetch(spans)  # no memmap: nothing to announce
    if hasattr(mmap, "MADV_WILLNEED"):
        # one call per chunk part: (0, 10) in chunk 0, (30, 80) across chunks 0..2, the tail in the last chunk
        assert len(advised) == 1 + 3 + 1 and all(a[0] == mmap.MADV_WILLNEED for a in advised)
        row_bytes = stored[19].shape[1] * stored[19].dtype.itemsize
        assert advised[0][1] == 0 and advised[0][2] == 10 * row_bytes  # page-aligned start, up to the last row
    for start, stop in spans:
        np.testing.assert_array_equal(raw.rows(start, stop), stored[19][start:stop])


def test_checked_reads_queue_each_chunk_once_and_unchecked_none(caches, monkeypatch):
    from mtsae.cache import digests

    root, _ = caches
    queued = []
    real = digests.ChunkChecker.submit
    monkeypatch.setattr(digests.ChunkChecker, "submit",
                        lambda self, name, index, read: (queued.append((name, index)), real(self, name, index, read)))
    cache = open_cache(root / "raw.zarr")
    cache.layer_rows(19).rows(0, 100)
    assert queued == []
    checked = cache.layer_rows(19, checked=True)
    checked.rows(0, 40)
    checked.rows(10, 74)  # chunks 0 and 1 again: nothing more is queued
    names = (fmt.activation_path(19), fmt.TOKENS, fmt.SPECIAL_MASK)
    assert queued == [(name, c) for c in (0, 1) for name in names]
    checked.wait_checked()
