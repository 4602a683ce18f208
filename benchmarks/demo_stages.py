"""Time each stage of the demo (scripts/demo.sh after set-up): harvest, each training run, each eval, analysis, report.

    python -m benchmarks.demo_stages --work /tmp/demo                        # this CPU as it is
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.demo_stages --work /tmp/demo
                                                                             # an AVX2-only CPU, emulated

Runs what the demo runs — ``mtsae harvest --model world --dataset world`` (the experiment's own
``[harvest]`` settings), then ``mtsae experiment embedded`` (or another built-in, ``--experiment``) —
from scratch in ``--work`` (its caches/ and experiments/ are replaced), stamps every progress line,
and prints one Markdown row per stage: wall time and the process's CPU time (all its threads). On a
machine shared with other jobs the wall time grows with the load (printed before and after); the CPU
time much less, so it is the figure to compare.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

STAGE_STARTS = (  # progress lines that open a stage, and the stage's name
    (re.compile(r"\[experiment\] (\S+): training"), "train {0}"),
    (re.compile(r"\[(core|sparse_probing|unlearning|absorption)\] running SAE-Bench"), "eval {0}"),
    (re.compile(r"\[experiment\] mtsae unlearn on (\d+) run"), "mtsae unlearn ({0} SAEs)"),
    (re.compile(r"\[experiment\] (\S+): disentanglement analysis"), "analyse {0}"),
    (re.compile(r"\[experiment\] report: "), "report"),
)


class StageClock:
    """A ``log`` callback: each stage lasts from its opening line to the next stage's (or the end)."""

    def __init__(self):
        self.stages: list[tuple[str, float, float]] = []  # name, wall clock, process CPU clock at its start

    def start(self, name: str) -> None:
        self.stages.append((name, time.perf_counter(), time.process_time()))

    def __call__(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        for pattern, name in STAGE_STARTS:
            match = pattern.search(line)
            if match:
                self.start(name.format(*match.groups()))
                return

    def rows(self) -> list[tuple[str, float, float]]:
        """``(stage, wall seconds, CPU seconds)``, the last stage ending now."""
        ends = [(wall, cpu) for _, wall, cpu in self.stages[1:]] + [(time.perf_counter(), time.process_time())]
        return [(name, end[0] - wall, end[1] - cpu) for (name, wall, cpu), end in zip(self.stages, ends)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo_stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder the demo runs in (caches/ and experiments/ are replaced)")
    from mtsae.evaluate.experiment_builtins import BUILTIN  # no heavy imports

    parser.add_argument("--experiment", default="embedded", choices=[n for n, c in BUILTIN.items() if "harvest" in c],
                        help="a built-in experiment that harvests (default: embedded, the demo's)")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    for stale in ("caches", "experiments"):
        shutil.rmtree(work / stale, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # the demo's relative caches/ and experiments/ folders
    load_before = os.getloadavg()[0]
    clock = StageClock()
    clock.start("start-up (imports)")
    from mtsae.evaluate.experiment import load_experiment, run_experiment
    from mtsae.harvest.config import HarvestConfig
    from mtsae.harvest.run import harvest

    experiment = load_experiment(args.experiment)
    settings = HarvestConfig(**experiment.harvest)
    clock.start(f"harvest ({settings.model} model, {settings.dataset} corpus)")
    outcome = harvest(settings, log=clock, progress=False)  # what `mtsae harvest` with these options runs
    clock.start("experiment set-up")
    print(f"harvested into {outcome.path}", file=sys.stderr)
    run_experiment(experiment, log=clock, progress=False)  # finds that cache by fingerprint
    rows = clock.rows()
    print(f"\n`{args.experiment}`, load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after, "
          f"{os.cpu_count()} CPUs, ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}\n")
    print("| stage | wall s | CPU s |\n|---|---|---|")
    for name, wall, cpu in rows:
        print(f"| {name} | {wall:,.0f} | {cpu:,.0f} |")
    print(f"| **total** | **{sum(r[1] for r in rows):,.0f}** | **{sum(r[2] for r in rows):,.0f}** |")


if __name__ == "__main__":
    main()
