"""WindowDataset: windows equal the cache rows (specials zeroed), memmap == zarr, prefetching."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import tiny_harvest

from mtsae.cache import CacheWriter, as_torch, open_cache
from mtsae.errors import MtsaeError
from mtsae.train.config import Windowing
from mtsae.train.loader import Prefetcher, WindowDataset
from mtsae.train.windows import window_sequences

D = 8
LAYERS = [5, 19]
# (doc_row, length): short sequences (no window), odd lengths, chunks of 37 rows so windows straddle them.
SEQUENCES = [(0, 50), (0, 3), (1, 64), (2, 20), (2, 33), (3, 70), (4, 5), (5, 41), (6, 29), (7, 66)]


def write_cache(path, *, compression="none", dtype="bfloat16", chunk=37):
    """A synthetic cache: BOS special at every sequence start plus a few special rows mid-sequence."""
    rng = np.random.default_rng(0)
    total = sum(n for _, n in SEQUENCES)
    make = CacheWriter.create
    writer = make(
        str(path), layers=LAYERS, d_model=D, dtype_name=dtype, capacity_tokens=total, chunk_tokens=chunk,
        compression=compression, header={"fingerprint": "f" * 64, "layers": LAYERS, "d_model": D, "dtype": dtype},
    )
    stored = {layer: [] for layer in LAYERS}
    for doc_row, n in SEQUENCES:
        special = np.zeros(n, bool)
        special[0] = True
        if n > 1:
            special[rng.integers(1, n, size=min(2, n - 1))] = True
        values = {layer: torch.from_numpy(rng.standard_normal((n, D), dtype=np.float32)).to(getattr(torch, dtype))
                  for layer in LAYERS}
        rows = {layer: (v.view(torch.uint16) if dtype == "bfloat16" else v).numpy() for layer, v in values.items()}
        writer.add_sequence(doc_row, rng.integers(0, 100, n).astype(np.int32), special, rows)
        for layer in LAYERS:
            stored[layer].append(rows[layer])
    writer.finish({"counts": {"tokens": total, "sequences": writer.n_sequences, "documents": writer.n_documents}})
    return {layer: np.concatenate(parts) for layer, parts in stored.items()}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    stored = write_cache(root / "raw.zarr")
    write_cache(root / "zstd.zarr", compression="zstd")
    write_cache(root / "f32.zarr", dtype="float32")
    return root, stored


def expected_window(stored_rows, special_mask, start, window, dtype_name="bfloat16"):
    rows = stored_rows[start : start + window]
    x = as_torch(rows.copy(), dtype_name).float()
    x[torch.from_numpy(special_mask[start : start + window])] = 0
    return x


@pytest.mark.parametrize("store", ["raw.zarr", "zstd.zarr"])
@pytest.mark.parametrize("split", ["train", "heldout"])
@pytest.mark.parametrize("window,stride", [(16, None), (7, 3)])
def test_every_window_is_the_cache_rows_with_specials_zeroed(synthetic, store, split, window, stride):
    root, stored = synthetic
    ds = WindowDataset(root / store, 19, Windowing(window=window, stride=stride, holdout_fraction=0.3, seed=1), split=split)
    assert ds.uses_memmap == (store == "raw.zarr")
    assert len(ds) > 0
    special = ds.cache.special_mask
    for i, start in enumerate(ds.starts):
        raw = ds.raw_window(i)
        assert raw.dtype == np.uint16
        np.testing.assert_array_equal(raw, stored[19][start : start + window])  # bf16 bits, before any cast
        np.testing.assert_array_equal(raw, ds.cache.rows(19, int(start), int(start) + window))
        assert torch.equal(ds.window_tensor(i), expected_window(stored[19], special, start, window))
    batches = list(ds.batches(3, shuffle=False, prefetch=0, with_special=True))
    x = torch.cat([b for b, _ in batches])
    assert x.dtype == torch.float32 and x.shape == (len(ds), window, D)
    for i, start in enumerate(ds.starts):
        assert torch.equal(x[i], expected_window(stored[19], special, start, window))
    mask = torch.cat([s for _, s in batches])
    assert bool((x[mask] == 0).all()) and bool(mask[:, 0].any())  # BOS rows are present, zeroed


def test_memmap_and_zarr_fallback_yield_identical_batches(synthetic):
    root, _ = synthetic
    kwargs = dict(window=9, holdout_fraction=0.2, seed=4)
    a = WindowDataset(root / "raw.zarr", 5, Windowing(**kwargs))
    b = WindowDataset(root / "zstd.zarr", 5, Windowing(**kwargs))
    np.testing.assert_array_equal(a.starts, b.starts)
    for xa, xb in zip(a.batches(4, epoch=2, epochs=2), b.batches(4, epoch=2, epochs=2), strict=True):
        assert torch.equal(xa, xb)


def test_float32_cache_is_read_exactly(synthetic):
    root, stored = synthetic
    f32 = write_cache(root / "f32b.zarr", dtype="float32")
    ds = WindowDataset(root / "f32b.zarr", 19, Windowing(window=10, holdout_fraction=0.2))
    for i, start in enumerate(ds.starts):
        np.testing.assert_array_equal(ds.raw_window(i), f32[19][start : start + 10])
        assert torch.equal(ds.window_tensor(i), expected_window(f32[19], ds.cache.special_mask, start, 10, "float32"))


def test_windows_stay_in_their_split_and_sequence(synthetic):
    root, _ = synthetic
    train = WindowDataset(root / "raw.zarr", 19, Windowing(window=5, holdout_fraction=0.3, seed=2))
    held = WindowDataset(root / "raw.zarr", 19, Windowing(window=5, holdout_fraction=0.3, seed=2), split="heldout")
    offsets = train.cache.seq_offsets
    assert set(window_sequences(offsets, train.starts)) <= set(train.sequences)
    assert set(window_sequences(offsets, held.starts)) <= set(held.sequences)
    assert set(train.sequences).isdisjoint(held.sequences)


def test_epochs_shuffle_and_resume_positions(synthetic):
    root, _ = synthetic
    ds = WindowDataset(root / "raw.zarr", 19, Windowing(window=6, holdout_fraction=0.1, seed=3))
    one = [x for x in ds.batches(4, epoch=0, drop_last=True, prefetch=0)]
    assert len(one) == ds.batches_per_epoch(4)
    # Every window once per epoch.
    seen = torch.cat(one).reshape(-1, 6 * D)
    assert len({tuple(r.tolist()) for r in seen}) == len(one) * 4
    two = list(ds.batches(4, epoch=0, epochs=2, drop_last=True, prefetch=0))
    again = list(ds.batches(4, epoch=1, drop_last=True, prefetch=0))
    assert all(torch.equal(p, q) for p, q in zip(two, one + again, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(one, again))  # a new order each epoch
    skipped = list(ds.batches(4, epoch=0, epochs=2, start_batch=2, drop_last=True, prefetch=0))
    assert all(torch.equal(p, q) for p, q in zip(skipped, two[2:], strict=True))


def test_prefetcher_yields_the_same_batches_in_the_same_order(synthetic):
    root, _ = synthetic
    ds = WindowDataset(root / "zstd.zarr", 19, Windowing(window=8, holdout_fraction=0.1, seed=5))
    plain = list(ds.batches(3, epoch=0, epochs=3, prefetch=0))
    ahead = list(ds.batches(3, epoch=0, epochs=3, prefetch=2))
    assert len(plain) == len(ahead) > 3
    assert all(torch.equal(p, q) for p, q in zip(plain, ahead, strict=True))


def test_prefetcher_reraises_errors_in_the_consumer(synthetic, monkeypatch):
    def items():
        yield 1
        yield 2
        raise ValueError("disk on fire")

    got = []
    with pytest.raises(ValueError, match="disk on fire"):
        for item in Prefetcher(items, depth=1):
            got.append(item)
    assert got == [1, 2]

    root, _ = synthetic
    ds = WindowDataset(root / "raw.zarr", 19, Windowing(window=4))
    calls = {"n": 0}
    original = ds.assemble

    def flaky(indices, pin_memory=False):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("read failed")
        return original(indices, pin_memory)

    monkeypatch.setattr(ds, "assemble", flaky)
    seen = 0
    with pytest.raises(OSError, match="read failed"):
        for _ in ds.batches(2, prefetch=2):
            seen += 1
    assert seen == 2


def test_closing_the_consumer_stops_the_thread(synthetic):
    root, _ = synthetic
    ds = WindowDataset(root / "raw.zarr", 19, Windowing(window=4))
    before = threading.active_count()
    for i, _ in enumerate(ds.batches(2, epochs=None, prefetch=2)):  # endless
        if i == 3:
            break
    ds.wait_checked()  # the digest checks of the chunks read run on in their own thread, which then ends
    assert threading.active_count() == before


def test_refusals(synthetic):
    root, _ = synthetic
    with pytest.raises(MtsaeError, match="layer 7 is not in cache"):
        WindowDataset(root / "raw.zarr", 7)
    with pytest.raises(MtsaeError, match="split"):
        WindowDataset(root / "raw.zarr", 5, split="test")
    with pytest.raises(MtsaeError, match="no mtsae cache"):
        WindowDataset(root / "missing.zarr", 5)
    with pytest.raises(MtsaeError, match="batch_windows"):
        next(WindowDataset(root / "raw.zarr", 5).batches(0))


def test_real_harvest_memmap_equals_zstd(tiny_cache_path, tmp_path):
    """A real `--compression zstd` harvest reads through zarr and yields the memmap windows bit for bit."""
    zstd = tmp_path / "zstd.zarr"
    tiny_harvest(zstd, compression="zstd")
    raw_cache, zstd_cache = open_cache(tiny_cache_path), open_cache(zstd)
    assert raw_cache.fingerprint == zstd_cache.fingerprint
    for split in ("train", "heldout"):
        a = WindowDataset(raw_cache, 19, Windowing(window=16, holdout_fraction=0.1), split=split)
        b = WindowDataset(zstd_cache, 19, Windowing(window=16, holdout_fraction=0.1), split=split)
        assert a.uses_memmap and not b.uses_memmap and len(a) == len(b) > 0
        for i in range(len(a)):
            np.testing.assert_array_equal(a.raw_window(i), b.raw_window(i))
        for xa, xb in zip(a.batches(8), b.batches(8), strict=True):
            assert torch.equal(xa, xb)
        start = int(a.starts[0])
        assert torch.equal(a.window_tensor(0), expected_window(raw_cache.rows(19, 0, raw_cache.n_tokens),
                                                               raw_cache.special_mask, start, 16))
