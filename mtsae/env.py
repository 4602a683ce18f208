"""Every ``MTSAE_*`` environment variable mtsae reads: listed and read here, and listed in docs/install.md.

A module that needs one calls :func:`get` with its :class:`Variable`; what a value means (a path, a number, JSON)
and the error line for a bad one stay with that module. ``tests/test_env.py`` checks that no other module
reads an ``MTSAE_*`` variable itself and that docs/install.md lists each one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    name: str
    doc: str
    default: str | None = None
    """The value when unset (None: the reader decides, as its doc says)."""


HOME = Variable("MTSAE_HOME", "Where mtsae keeps its own files (embedded model, corpus and SAE-Bench mirror, "
                "read-through copies). Default: ~/.cache/mtsae.")
SHARED_ROOT = Variable("MTSAE_SHARED_ROOT", "Folder or URL of caches by fingerprint that harvest reuses and publishes "
                       "to, and `cache push` pushes to, as --shared-root. Default: none.")
REMOTE_CACHE_DIR = Variable("MTSAE_REMOTE_CACHE_DIR", "Where a cache given to train or analyze as a URL is pulled once, verified. "
                            "Default: $MTSAE_HOME/remote-caches.")
REMOTE_CACHE_MAX_GB = Variable("MTSAE_REMOTE_CACHE_MAX_GB", "Largest remote cache (GB) pulled there on its own; "
                               "a larger one is refused. Default: 200.")
STORAGE_OPTIONS = Variable("MTSAE_STORAGE_OPTIONS", "JSON object of fsspec storage options for s3:// and other URLs "
                           "(endpoint_url, profile, ...). Default: none.")
WMDP_FORGET_CORPUS = Variable("MTSAE_WMDP_FORGET_CORPUS", "WMDP bio forget corpus (gated JSONL) for the unlearning "
                              "eval, as --forget-corpus. Default: the offline mirror's, if any.")
FUSED_TEMPORAL = Variable("MTSAE_FUSED_TEMPORAL", "0 keeps MTSAE training on CUDA on the PyTorch path instead of the "
                          "fused Triton kernels. Default: 1.", default="1")
DIST_TIMEOUT = Variable("MTSAE_DIST_TIMEOUT", "Seconds torchrun ranks wait for each other before failing. "
                        "Default: 1800.", default="1800")

VARIABLES = (HOME, SHARED_ROOT, REMOTE_CACHE_DIR, REMOTE_CACHE_MAX_GB, STORAGE_OPTIONS, WMDP_FORGET_CORPUS,
             FUSED_TEMPORAL, DIST_TIMEOUT)


def get(variable: Variable) -> str | None:
    """The variable's value as set (empty included), else its default."""
    return os.environ.get(variable.name, variable.default)
