"""Where mtsae keeps its own files: the embedded assets, read-through cache copies."""

from __future__ import annotations

import os
from pathlib import Path


def mtsae_home() -> Path:
    """``$MTSAE_HOME`` if set, else ``~/.cache/mtsae``."""
    env = os.environ.get("MTSAE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mtsae"
