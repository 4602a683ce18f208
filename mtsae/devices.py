"""Resolving --device, and the dtype to compute in on it, shared by every stage."""

from __future__ import annotations

import os

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


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which its bfloat16 matmul has no native instructions and
# falls back to a reference loop (measured ~40x slower than float32: docs/benchmarks.md).
_ONEDNN_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU, as torch's oneDNN is allowed to use it, multiplies bfloat16 natively (AVX512-BF16 or AMX)."""
    hardware = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    return bool(hardware and onednn and cap not in _ONEDNN_CAPS_WITHOUT_BF16)


def compute_dtype(storage_dtype: str, device: torch.device) -> str:
    """The dtype to run a model in on ``device`` for results stored (or reported) in ``storage_dtype``.

    Half precision is only fast on a CPU with native instructions for it; elsewhere float32 computes
    faster and the result is rounded once to ``storage_dtype``. CUDA keeps the requested dtype.
    """
    if device.type != "cpu" or storage_dtype == "float32":
        return storage_dtype
    native = {"bfloat16": cpu_has_native_bf16(), "float16": torch.cpu._is_amx_fp16_supported()}
    return storage_dtype if native.get(storage_dtype, True) else "float32"


def resolve_amp_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype the trainer computes in: ``auto`` is bfloat16 autocast on CUDA, float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)
