"""Zarr v3's ``bfloat16`` data type (the name zarr-extensions registers) for zarr-python, through ml_dtypes.

zarr-python 3.1 ships no bfloat16; tensorstore and other zarr v3 readers know it natively. One call adds it to
zarr's data type registry, after which plain zarr reads a format-2 cache's activations as ``ml_dtypes.bfloat16``::

    import mtsae.cache, zarr
    mtsae.cache.register_bfloat16()
    rows = zarr.open_group(path, mode="r")["activations/blocks.19.hook_resid_post"][:]   # dtype bfloat16

mtsae's own readers and writers call it themselves (cache/remote.py, before opening a store). The chunk bytes
are the little-endian bits that format 1 stored as uint16: only the array's ``data_type`` differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from zarr.dtype import Float16, data_type_registry

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
ZARR_NAME = "bfloat16"


@dataclass(frozen=True, kw_only=True)
class BFloat16(Float16):
    """zarr's float16 wrapper with bfloat16's NumPy dtype and zarr v3 name (no zarr v2 encoding: mtsae writes v3)."""

    dtype_cls = type(BFLOAT16)  # ml_dtypes' own dtype class: float16 and uint16 arrays never match it
    _zarr_v3_name = ZARR_NAME
    _zarr_v2_names = ()

    def to_native_dtype(self) -> np.dtype:
        return BFLOAT16  # bfloat16 has one byte order (little), so no newbyteorder as zarr's floats do


def register_bfloat16() -> None:
    """Let zarr-python read and write Zarr v3 ``bfloat16`` arrays as ``ml_dtypes.bfloat16`` (idempotent)."""
    data_type_registry.register(ZARR_NAME, BFloat16)


def is_bfloat16(dtype: np.dtype) -> bool:
    return dtype == BFLOAT16


def as_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 values as their uint16 bits (a view, not a conversion); any other array as it is.

    mtsae hands bfloat16 around as uint16 bits (torch reinterprets them: ``mtsae.cache.as_torch``), whichever
    format stored them."""
    return values.view(np.uint16) if is_bfloat16(values.dtype) else values
