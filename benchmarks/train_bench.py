"""Train step: MTSAE against ReLU at equal d_in, d_sae and tokens per step (forward, backward, Adam).

The step is the trainer's (``Trainer.train_step`` without logging): bfloat16
autocast on CUDA, float32 on CPU, ``loss → backward → remove_parallel_gradient_
→ Adam → constrain_parameters_``. MTSAE takes ``[B, T, d]`` windows, ReLU the
same tokens flattened. On CUDA the MTSAE runs the fused Triton kernels by
default; the PyTorch path (``MTSAE_FUSED_TEMPORAL=0``) is timed beside it, and
the fused output and gradients are checked against it at this shape first.
The ReLU step's FLOP rate (12·tokens·d_in·d_sae per step) is set against the
device's own matmul rate, measured in the same run (bfloat16 on CUDA,
float32 on CPU).
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from typing import Callable

import torch

from benchmarks.common import Report, best_of_rounds, median_seconds, release_memory
from benchmarks.profiles import Profile
from mtsae.train.registry import create_sae

NAME = "train step"
UNIT = "tokens/s"


def run(report: Report, profile: Profile, device: torch.device) -> None:
    tokens = profile.windows * profile.window
    x = torch.randn(profile.windows, profile.window, profile.d_in, device=device)
    relu_name = f"relu {profile.d_in}→{profile.d_sae}"
    mtsae_name = "mtsae (fused Triton kernels)" if device.type == "cuda" else "mtsae (PyTorch path)"
    competitors = {relu_name: step_rate("relu", x, profile, device), mtsae_name: step_rate("mtsae", x, profile, device)}
    if device.type == "cuda":
        competitors["mtsae (PyTorch path)"] = step_rate("mtsae", x, profile, device, fused=False)
        report.checks["fused vs PyTorch path at the benchmark shape"] = fused_matches(x, profile)
    rates = best_of_rounds(competitors, profile.rounds)
    competitors.clear()
    release_memory(device)
    for name, rate in rates.items():
        report.add(NAME, name, rate, UNIT, baseline=None if name == relu_name else relu_name,
                   note=f"{tokens} tokens/step" if name == relu_name else "")
    relu, mtsae = rates[relu_name], rates[mtsae_name]

    matmul = matmul_flops(device)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    report.add(NAME, f"{dtype} matmul (compute ceiling)", matmul / 1e12, "TFLOP/s")
    relu_flops = relu * 12 * profile.d_in * profile.d_sae
    report.add(NAME, "relu step FLOP rate", relu_flops / 1e12, "TFLOP/s",
               note=f"{relu_flops / matmul:.0%} of the matmul rate")

    on_gpu = device.type == "cuda"
    report.target("train: MTSAE step / ReLU step at d_sae 16384", mtsae / relu, 0.8, measurable=on_gpu,
                  reason=("CPU runs the PyTorch path (no fused kernel) at d_sae "
                          f"{profile.d_sae}" if not on_gpu else "fused Triton kernels"))
    report.target("train: ReLU step / bf16 matmul rate", relu_flops / matmul, 0.5, measurable=on_gpu,
                  reason=("CPU: against its float32 matmul rate, small d_in" if not on_gpu
                          else "bf16 autocast, 4096 tokens/step"))


def _sae(arch: str, profile: Profile, device: torch.device):
    return create_sae(arch, d_in=profile.d_in, d_sae=profile.d_sae).to(device).train()


def step_rate(arch: str, x: torch.Tensor, profile: Profile, device: torch.device,
              fused: bool = True) -> Callable[[], float]:
    """A measurement: tokens/s of full optimizer steps on ``x`` (windows for MTSAE, tokens for ReLU)."""
    torch.manual_seed(0)
    sae = _sae(arch, profile, device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    batch = x if sae.is_temporal else x.reshape(-1, x.shape[-1])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            out = sae.loss(batch)
        out.loss.backward()
        sae.remove_parallel_gradient_()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.constrain_parameters_()

    def measure() -> float:
        with (nullcontext() if fused else fused_disabled()):
            seconds = median_seconds(step, device, warmup=2, repeats=profile.train_steps)
        return x.shape[0] * x.shape[1] / seconds

    return measure


@contextmanager
def fused_disabled():
    old = os.environ.get("MTSAE_FUSED_TEMPORAL")
    os.environ["MTSAE_FUSED_TEMPORAL"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["MTSAE_FUSED_TEMPORAL"]
        else:
            os.environ["MTSAE_FUSED_TEMPORAL"] = old


def fused_matches(x: torch.Tensor, profile: Profile) -> str:
    """Largest relative difference of the MTSAE loss and encoder gradient, fused against the PyTorch path."""
    results = []
    for disable in (False, True):
        torch.manual_seed(0)
        sae = _sae("mtsae", profile, x.device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if disable:
                with fused_disabled():
                    out = sae.loss(x)
            else:
                out = sae.loss(x)
        out.loss.backward()
        results.append((out.loss.detach().float(), sae.W_enc.grad.float(), sae.temporal.conv_weight.grad.float()))
    (l1, g1, c1), (l2, g2, c2) = results
    rel = [float((a - b).norm() / b.norm().clamp_min(1e-12)) for a, b in ((l1, l2), (g1, g2), (c1, c2))]
    return f"relative differences: loss {rel[0]:.1e}, dW_enc {rel[1]:.1e}, dconv {rel[2]:.1e}"


def matmul_flops(device: torch.device) -> float:
    """FLOP/s of a square matmul in the dtype this device trains in."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, device, warmup=3, repeats=10)
    return 2 * n**3 / seconds
