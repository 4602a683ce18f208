"""Measurements, targets and the report shared by every benchmark."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

MET, NOT_MET, NOT_ON_CPU = "met", "not met", "not measurable on CPU"


@dataclass
class Measurement:
    """One competitor's throughput (or size) in one benchmark."""

    benchmark: str
    variant: str
    value: float
    unit: str
    baseline: str | None = None  # variant of the same benchmark this one is divided by
    ratio: float | None = None
    note: str = ""


@dataclass
class Target:
    """A target of issue #6: ``ratio ≥ threshold`` (or ``≤`` when ``at_most``)."""

    name: str
    ratio: float | None
    threshold: float
    status: str
    reason: str
    at_most: bool = False


@dataclass
class Report:
    profile: str
    device: str
    machine: dict = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    checks: dict = field(default_factory=dict)

    def add(self, benchmark: str, variant: str, value: float, unit: str, *, baseline: str | None = None,
            note: str = "") -> Measurement:
        ratio = None
        if baseline is not None:
            ratio = value / self.value(benchmark, baseline)
        m = Measurement(benchmark, variant, value, unit, baseline, ratio, note)
        self.measurements.append(m)
        return m

    def value(self, benchmark: str, variant: str) -> float:
        for m in self.measurements:
            if m.benchmark == benchmark and m.variant == variant:
                return m.value
        raise KeyError(f"no measurement {benchmark}/{variant}")

    def target(self, name: str, ratio: float | None, threshold: float, *, measurable: bool = True,
               reason: str = "", at_most: bool = False) -> Target:
        """Record a target; on CPU, targets defined for a GPU are shown but marked not measurable."""
        if not measurable:
            status = NOT_ON_CPU
        elif ratio is None:
            status = NOT_MET
        else:
            status = MET if (ratio <= threshold if at_most else ratio >= threshold) else NOT_MET
        t = Target(name, ratio, threshold, status, reason, at_most)
        self.targets.append(t)
        return t

    # ------------------------------------------------------------ output
    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def markdown(self) -> str:
        lines = [f"Profile `{self.profile}` on {self.machine.get('device_name', self.device)}, "
                 f"commit {self.machine.get('commit', '?')}{' (uncommitted changes)' if self.machine.get('dirty') else ''}, "
                 f"torch {self.machine.get('torch', '?')} ({self.machine.get('torch_threads', '?')} threads), load average at start "
                 f"{self.machine.get('load_average_1min', '?')}.", "",
                 "| benchmark | variant | value | unit | ratio | vs | note |", "|---|---|---|---|---|---|---|"]
        for m in self.measurements:
            ratio = f"{m.ratio:.2f}×" if m.ratio is not None else ""
            lines.append(f"| {m.benchmark} | {m.variant} | {_fmt(m.value)} | {m.unit} | {ratio} | {m.baseline or ''} | {m.note} |")
        lines += ["", "| target | measured | threshold | status | reason |", "|---|---|---|---|---|"]
        for t in self.targets:
            measured = f"{t.ratio:.2f}" if t.ratio is not None else "—"
            sign = "≤" if t.at_most else "≥"
            lines.append(f"| {t.name} | {measured} | {sign} {t.threshold:g} | {t.status} | {t.reason} |")
        if self.checks:
            lines += ["", "Checks: " + "; ".join(f"{k} = {v}" for k, v in self.checks.items())]
        return "\n".join(lines)

    def write(self, out: Path) -> tuple[Path, Path]:
        out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out / "results.json", out / "results.md"
        json_path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        md_path.write_text(self.markdown() + "\n")
        return json_path, md_path


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def machine_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    return info


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def release_memory(device: torch.device) -> None:
    """Drop the previous competitor's tensors before the next one starts."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def best_of_rounds(competitors: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Each competitor's best rate over ``rounds`` rounds run in turn (A B C A B C …).

    Interleaving spreads a shared machine's changing load over every
    competitor, and the best round is the one least disturbed by it.
    """
    best = {name: 0.0 for name in competitors}
    for _ in range(rounds):
        for name, measure in competitors.items():
            best[name] = max(best[name], measure())
    return best
