"""Run the benchmarks side by side and write ``results.json`` / ``results.md``.

    python -m benchmarks.run --device cpu                # the CPU profile (~3 minutes on 2 cores)
    python -m benchmarks.run --device cuda --out "$OUT"  # Gemma-2-2b shapes, random weights
    python -m benchmarks.run --profile smoke             # seconds: CI checks every row is produced

Each benchmark runs its competitors in this one process (memory: in child
processes) on the same inputs and records ratios; targets are printed with
met / not met / not measurable on CPU. The Markdown printed at the end is
ready to paste into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import harvest_bench, loader_bench, memory_bench, train_bench
from benchmarks.common import Report, machine_info
from benchmarks.profiles import PROFILES

BENCHMARKS = ("harvest", "train", "loader", "memory")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="sizes; default: gpu on cuda, cpu otherwise")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}")
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"), help="where results go")
    parser.add_argument("--work", default=None, help="scratch folder for stores and models (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads in this process (0: torch's default); 1 avoids OpenMP "
                             "spin-wait slow-downs on a CPU shared with other jobs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Report:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    profile = PROFILES[args.profile or ("gpu" if device.type == "cuda" else "cpu")]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        sys.exit(f"error: unknown benchmark(s) {sorted(unknown)}; choose from {BENCHMARKS}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mtsae-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report = Report(profile=profile.name, device=str(device), machine=machine_info(device))
    started = time.perf_counter()
    try:
        for name in only:
            t0 = time.perf_counter()
            print(f"[benchmarks] {name} …", file=sys.stderr, flush=True)
            if name == "harvest":
                harvest_bench.run(report, profile, device, work)
            elif name == "train":
                train_bench.run(report, profile, device)
            elif name == "loader":
                loader_bench.run(report, profile, device, work)
            elif name == "memory":
                memory_bench.run(report, profile, device, work)
            report.checks[f"{name} seconds"] = round(time.perf_counter() - t0, 1)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report.checks["total seconds"] = round(time.perf_counter() - started, 1)
    json_path, md_path = report.write(Path(args.out))
    print(report.markdown())
    print(f"\n[benchmarks] wrote {json_path} and {md_path}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
