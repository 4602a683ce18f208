"""The README's ecosystem table, cache rows: plain zarr, tensorstore and xarray read an mtsae cache.

(The SAELens, SAE-Bench and wandb rows are tests/test_saelens.py, test_eval_saelens.py, test_wandb.py.)
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import zarr

from mtsae.cache import as_torch, open_cache, register_bfloat16
from mtsae.cache import format as fmt

LAYER = "activations/blocks.5.hook_resid_post"


def ours(path) -> np.ndarray:
    cache = open_cache(str(path))
    return np.asarray(cache.rows(5, 0, cache.n_tokens))


def test_plain_zarr_reads_bfloat16_after_one_registration_call(tiny_cache_path):
    """The README's zarr row, in a fresh interpreter: zarr alone cannot read Zarr's bfloat16, one call fixes it."""
    script = textwrap.dedent(f"""
        import zarr
        path = {str(tiny_cache_path)!r}
        try:
            zarr.open_group(path, mode="r")["{LAYER}"]
            raise SystemExit("zarr read bfloat16 without mtsae's registration: this test no longer tests anything")
        except ValueError as exc:
            assert "bfloat16" in str(exc), exc
        import mtsae.cache
        mtsae.cache.register_bfloat16()
        array = zarr.open_group(path, mode="r")["{LAYER}"]
        print(array.dtype, array.attrs["mtsae_dtype"], array[:].view("uint16").tobytes().hex())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dtype, true_dtype, bits = done.stdout.split()
    assert dtype == true_dtype == "bfloat16" and bits == ours(tiny_cache_path).tobytes().hex()


def test_plain_zarr_values_are_ours_as_floats(tiny_cache_path):
    register_bfloat16()
    stored = zarr.open_group(str(tiny_cache_path), mode="r")[LAYER][:]
    assert np.array_equal(stored.view(np.uint16), ours(tiny_cache_path))  # the very bytes mtsae reads
    floats = torch.from_numpy(stored.astype(np.float32))
    assert torch.equal(floats, as_torch(ours(tiny_cache_path), "bfloat16").float()) and floats.abs().max() < 1e3


def test_tensorstore_reads_it_as_bfloat16_bit_for_bit(tiny_cache_path):
    ts = pytest.importorskip("tensorstore", reason="tensorstore is not installed (pip install -e '.[test]')")
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tiny_cache_path / LAYER)}}).result()
    assert store.dtype == ts.bfloat16
    stored = store.read().result()
    assert np.array_equal(stored.view(np.uint16), ours(tiny_cache_path))
    floats = stored.astype(np.float32)
    assert np.array_equal(floats, as_torch(ours(tiny_cache_path), "bfloat16").float().numpy())


def test_xarray_opens_the_groups_with_named_dimensions(tiny_cache_path):
    """Regression: without zarr v3 dimension_names, xarray refused the cache (KeyError)."""
    xr = pytest.importorskip("xarray", reason="xarray is not installed (pip install -e '.[test]')")
    register_bfloat16()
    activations = xr.open_zarr(str(tiny_cache_path), group="activations", consolidated=False)
    data = activations["blocks.5.hook_resid_post"]
    assert data.dims == ("token", "d_model") and data.attrs["mtsae_dtype"] == "bfloat16"
    assert data.dtype == fmt.storage_dtype("bfloat16")  # values, not bits (format 2)
    assert np.array_equal(data.values.view(np.uint16), ours(tiny_cache_path))
    root = xr.open_zarr(str(tiny_cache_path), consolidated=False)
    assert root["tokens"].dims == ("token",) and root.sizes["token"] == activations.sizes["token"]
