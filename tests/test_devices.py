"""mtsae.devices: which dtype a model computes in on which device."""

from __future__ import annotations

import pytest
import torch

from mtsae.devices import compute_dtype, cpu_has_native_bf16

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _hardware(monkeypatch, avx512_bf16: bool, amx: bool = False, amx_fp16: bool = False) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: amx_fp16)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


@pytest.mark.parametrize("avx512_bf16, amx, native", [(True, False, True), (False, True, True), (False, False, False)])
def test_native_bf16_follows_the_hardware(monkeypatch, avx512_bf16, amx, native):
    _hardware(monkeypatch, avx512_bf16, amx)
    assert cpu_has_native_bf16() is native
    assert compute_dtype("bfloat16", CPU) == ("bfloat16" if native else "float32")


@pytest.mark.parametrize("variable", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"])
@pytest.mark.parametrize("cap, native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True), ("ALL", True)])
def test_a_onednn_isa_cap_below_bf16_means_float32_compute(monkeypatch, variable, cap, native):
    _hardware(monkeypatch, avx512_bf16=True)
    monkeypatch.setenv(variable, cap)
    assert cpu_has_native_bf16() is native


def test_float16_needs_amx_fp16_on_a_cpu(monkeypatch):
    _hardware(monkeypatch, avx512_bf16=True)
    assert compute_dtype("float16", CPU) == "float32"
    _hardware(monkeypatch, avx512_bf16=True, amx_fp16=True)
    assert compute_dtype("float16", CPU) == "float16"


def test_cuda_and_float32_keep_the_requested_dtype(monkeypatch):
    _hardware(monkeypatch, avx512_bf16=False)
    assert [compute_dtype(d, CUDA) for d in ("bfloat16", "float16", "float32")] == ["bfloat16", "float16", "float32"]
    assert compute_dtype("float32", CPU) == "float32"
