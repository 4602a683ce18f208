"""Does this CPU multiply bfloat16 natively, and what does harvest's compute-dtype rule buy on it?

    python -m benchmarks.cpu_dtype                                               # this CPU as it is
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.cpu_dtype  # an AVX2-only CPU, emulated

Prints Markdown rows for docs/benchmarks.md: torch's CPU capability, what
``mtsae.devices.cpu_has_native_bf16`` decides, bf16 and fp32 matmul rates (one
thread), the embedded model's forward pass in each dtype, and ``mtsae harvest``
of the embedded default stored as bfloat16 (computed as mtsae.devices decides)
against stored as float32. Competitors run in turn, best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import best_of_rounds
from mtsae.devices import compute_dtype, cpu_has_native_bf16
from mtsae.harvest import embedded, sources
from mtsae.harvest.capture import ResidualCapture
from mtsae.harvest.config import HarvestConfig
from mtsae.harvest.run import harvest


def matmul_gflops(dtype: torch.dtype, n: int = 512, seconds: float = 1.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    return 2 * n**3 * calls / (time.perf_counter() - start) / 1e9


def forward_rate(dtype: torch.dtype, tokens: int = 2048, context: int = 256) -> float:
    """Tokens/s of the truncated embedded model (layers 0-19, capture hooks), random token ids."""
    source = sources.resolve_model(str(embedded.ensure_embedded_model()))
    capture = ResidualCapture(sources.load_truncated_model(source, 19, dtype, "cpu", "eager"), [5, 19])
    ids = torch.randint(3, 200, (tokens // context, context))
    capture(ids[:1], torch.ones_like(ids[:1]))  # warm-up
    start = time.perf_counter()
    capture(ids, torch.ones_like(ids))
    return tokens / (time.perf_counter() - start)


def harvest_rate(dtype: str, work: Path, tokens: int) -> float:
    cfg = HarvestConfig(dtype=dtype, device="cpu", max_tokens=tokens, context_len=256, batch_size=8)
    outcome = harvest(cfg, str(work / f"{dtype}.zarr"), force=True, log=lambda _line: None, progress=False)
    return outcome.attrs["harvest"]["tokens_per_second"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_dtype", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=8192, help="harvest token budget per round")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a shared CPU: spin-waiting threads would blur the comparison
    print(f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}, "
          f"native bf16: {cpu_has_native_bf16()}, bf16 harvest computes in {compute_dtype('bfloat16', torch.device('cpu'))}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| measure | bfloat16 | float32 | bf16 / fp32 |\n|---|---|---|---|")
    mm = best_of_rounds({d: lambda d=d: matmul_gflops(getattr(torch, d)) for d in ("bfloat16", "float32")}, args.rounds)
    fw = best_of_rounds({d: lambda d=d: forward_rate(getattr(torch, d)) for d in ("bfloat16", "float32")}, args.rounds)
    with tempfile.TemporaryDirectory(prefix="mtsae-cpu-dtype-") as work:
        hv = best_of_rounds({d: lambda d=d: harvest_rate(d, Path(work), args.tokens) for d in ("bfloat16", "float32")},
                            args.rounds)
    for name, unit, rates in (("matmul 512³, 1 thread", "GFLOP/s", mm), ("embedded forward, layers 0-19", "tokens/s", fw),
                              ("mtsae harvest, stored as", "tokens/s", hv)):
        print(f"| {name} ({unit}) | {rates['bfloat16']:,.1f} | {rates['float32']:,.1f} | "
              f"{rates['bfloat16'] / rates['float32']:.2f}× |")


if __name__ == "__main__":
    main()
