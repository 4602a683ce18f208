"""The README's ecosystem table, cache rows: plain zarr, tensorstore and xarray read an mtsae cache.

(The SAELens, SAE-Bench and wandb rows are tests/test_saelens.py, test_eval_saelens.py, test_wandb.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from mtsae.cache import as_torch, open_cache

LAYER = "activations/blocks.5.hook_resid_post"


def ours(path) -> np.ndarray:
    cache = open_cache(str(path))
    return np.asarray(cache.rows(5, 0, cache.n_tokens))


def test_plain_zarr_reads_the_bits_and_the_true_dtype(tiny_cache_path):
    array = zarr.open_group(str(tiny_cache_path), mode="r")[LAYER]
    assert array.dtype == np.uint16 and array.attrs["mtsae_dtype"] == "bfloat16"
    stored = array[:]
    assert np.array_equal(stored, ours(tiny_cache_path))
    values = torch.from_numpy(stored).view(torch.bfloat16)  # reinterpret, never convert
    assert torch.equal(values, as_torch(ours(tiny_cache_path), "bfloat16")) and values.abs().max() < 1e3


def test_tensorstore_reads_it_bit_for_bit(tiny_cache_path):
    ts = pytest.importorskip("tensorstore", reason="tensorstore is not installed (pip install -e '.[test]')")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tiny_cache_path / LAYER)}}).result()
    stored = store.read().result()
    assert np.array_equal(stored, ours(tiny_cache_path))
    floats = stored.view(ml_dtypes.bfloat16).astype(np.float32)
    assert np.array_equal(floats, as_torch(ours(tiny_cache_path), "bfloat16").float().numpy())


def test_xarray_opens_the_groups_with_named_dimensions(tiny_cache_path):
    """Regression: without zarr v3 dimension_names, xarray refused the cache (KeyError)."""
    xr = pytest.importorskip("xarray", reason="xarray is not installed (pip install -e '.[test]')")
    activations = xr.open_zarr(str(tiny_cache_path), group="activations", consolidated=False)
    data = activations["blocks.5.hook_resid_post"]
    assert data.dims == ("token", "d_model") and data.attrs["mtsae_dtype"] == "bfloat16"
    assert np.array_equal(data.values, ours(tiny_cache_path))
    root = xr.open_zarr(str(tiny_cache_path), consolidated=False)
    assert root["tokens"].dims == ("token",) and root.sizes["token"] == activations.sizes["token"]
