"""The activation cache: the only code both harvest and train touch."""

from mtsae.cache.format import FORMAT_VERSION, hook_name
from mtsae.cache.reader import ActivationCache, as_torch, open_cache, read_attrs
from mtsae.cache.writer import COMPRESSIONS, CacheWriter

__all__ = [
    "FORMAT_VERSION",
    "COMPRESSIONS",
    "ActivationCache",
    "CacheWriter",
    "as_torch",
    "hook_name",
    "open_cache",
    "read_attrs",
]
