"""Where mtsae keeps its own files: the embedded assets, read-through cache copies."""

from __future__ import annotations

from pathlib import Path

from mtsae import env


def mtsae_home() -> Path:
    """``$MTSAE_HOME`` if set, else ``~/.cache/mtsae``."""
    folder = env.get(env.HOME)
    return Path(folder).expanduser() if folder else Path.home() / ".cache" / "mtsae"
