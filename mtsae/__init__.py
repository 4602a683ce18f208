"""mtsae: Multi-Scale Temporal Sparse Autoencoders on language-model activations."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mtsae")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
