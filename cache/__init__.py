"""The activation cache: the only code both harvest and train touch."""

import importlib
from typing import TYPE_CHECKING

# Loaded on first use (PEP 562): importing a light submodule such as mtsae.cache.format, as the CLI's
# option help does, must not import zarr and torch through the reader and writer.
_HOMES = {"FORMAT_VERSION": "format", "hook_name": "format", "ActivationCache": "reader", "as_torch": "reader",
          "open_cache": "reader", "read_attrs": "reader", "COMPRESSIONS": "writer", "CacheWriter": "writer",
          "register_bfloat16": "bfloat16"}

if TYPE_CHECKING:
    from mtsae.cache.bfloat16 import register_bfloat16
    from mtsae.cache.format import FORMAT_VERSION, hook_name
    from mtsae.cache.reader import ActivationCache, as_torch, open_cache, read_attrs
    from mtsae.cache.writer import COMPRESSIONS, CacheWriter


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'mtsae.cache' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mtsae.cache.{_HOMES[name]}"), name)


__all__ = [
    "FORMAT_VERSION",
    "COMPRESSIONS",
    "ActivationCache",
    "CacheWriter",
    "as_torch",
    "hook_name",
    "open_cache",
    "read_attrs",
    "register_bfloat16",
]
