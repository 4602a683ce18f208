"""Resolving --device, shared by every stage."""

from __future__ import annotations

import torch

from mtsae.errors import MtsaeError


def resolve_device(name: str) -> torch.device:
    """'auto' is cuda when torch sees a GPU, else cpu; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MtsaeError(f"--device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MtsaeError(f"--device {name} asked for CUDA, but this machine has no usable GPU; use --device cpu")
    return device
