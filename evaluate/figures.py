"""The report's figures, and the model and provenance lines they share with its text.

Every drawn data line carries the quantity it shows as its ``gid`` (one quantity per
axis); each function returns the numbers it drew (they go to report.json) or None when
there is nothing to draw. Runs are :class:`mtsae.evaluate.report.RunRecord` objects.
"""

from __future__ import annotations

import functools
import statistics
import subprocess
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mtsae
from mtsae.evaluate.names import is_embedded, is_world
from mtsae.evaluate.sae_bench_evals import CHANCE_ACCURACY

if TYPE_CHECKING:
    from mtsae.evaluate.report import RunRecord

L0_MATCH_TOLERANCE = 0.25  # a run whose L0 is further than this (relative) from the runs' median is not L0-matched
NOT_L0_MATCHED = "not L0-matched"

REFERENCE_GIDS = ("chance",)  # reference lines, not data: they may share an axis with its quantity


def provenance(records: list[RunRecord]) -> str:
    caches = sorted({(r.cache_fingerprint or "?")[:12] for r in records})
    return f"mtsae {mtsae.__version__} (commit {source_commit() or 'unknown'}) · cache {', '.join(caches)}"


def model_line(records: list[RunRecord]) -> str:
    """Which model the runs read: name, revision, layer(s) and width."""
    models = sorted({(r.model_name or "unknown model", r.model_revision or "revision unknown") for r in records})
    layers = sorted({str(r.layer) for r in records if r.layer is not None}) or ["unknown"]
    widths = sorted({str(r.d_model) for r in records if r.d_model is not None}) or ["unknown"]
    names = "; ".join(f"{name} ({revision})" for name, revision in models)
    return f"{names}, layer {', '.join(layers)}, d_model {', '.join(widths)}"


def random_weights_warning(records: list[RunRecord]) -> str | None:
    embedded = sorted({r.model_name for r in records if r.model_name and is_embedded(r.model_name)})
    if not embedded:
        return None
    return (f"⚠ Random weights: these runs read {', '.join(embedded)}, mtsae's embedded tiny Gemma-2 with random, "
            "seeded weights. It checks the pipeline; no number in this report says anything about a trained "
            "language model.")


def trained_world_note(records: list[RunRecord]) -> str | None:
    """Says, for runs on the shipped world LM, that it is a trained model (what the random-weights warning is not)."""
    world = sorted({r.model_name for r in records if r.model_name and is_world(r.model_name)})
    if not world:
        return None
    return (f"{', '.join(world)}: mtsae's small Gemma-2 trained on its seeded fictional world, with a forget topic "
            "in WMDP-bio's role (trained weights, not random; what it knows: docs/world.md).")


@functools.lru_cache(maxsize=1)
def source_commit() -> str | None:  # asked once per figure: run git once
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def open_figure(title: str, records: list[RunRecord], left_out: list[RunRecord], panels: int = 1):
    """A figure with ``panels`` axes side by side (a list when more than one), titled and footed with provenance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = max(6.0, 1.3 * len(records) + 3) if panels == 1 else 4.2 * panels
    fig, axes = plt.subplots(1, panels, figsize=(width, 4.5), squeeze=False)
    warning = " — RANDOM-WEIGHTS MODEL" if random_weights_warning(records + left_out) else ""
    fig.suptitle(title + warning, fontsize=11)
    footer = "model " + model_line(records + left_out) + " · " + provenance(records + left_out)
    if left_out:
        footer += "\nleft out (flagged): " + "; ".join(f"{r.name}: {', '.join(r.flags)}" for r in left_out)
    fig.text(0.01, 0.005, footer, fontsize=7, va="bottom", wrap=True)
    return fig, (axes[0][0] if panels == 1 else list(axes[0]))


def save_figure(fig, path: Path) -> None:
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def l0_unmatched(records: list[RunRecord]) -> set[str]:
    """Runs whose held-out L0 is more than L0_MATCH_TOLERANCE (relative) away from the median L0 of the runs
    they are compared with: all of ``records``, or those of the same ``match_l0`` level (``-l0_<level>`` names)."""
    from mtsae.evaluate.experiment import by_l0_level

    unmatched = set()
    for group in by_l0_level({r.name: r for r in records if r.final.get("l0") is not None}).values():
        if len(group) < 2:
            continue
        median = statistics.median(r.final["l0"] for r in group.values())
        unmatched |= {n for n, r in group.items() if abs(r.final["l0"] - median) > L0_MATCH_TOLERANCE * max(median, 1e-9)}
    return unmatched


def run_tick(r: RunRecord, unmatched: set[str]) -> str:
    return r.label + (f"\n({NOT_L0_MATCHED}: L0 {r.final['l0']:.3g})" if r.name in unmatched else "")


def plot_accuracy(records: list[RunRecord], left_out: list[RunRecord], path: Path) -> dict[str, Any] | None:
    rows = [(r, r.evals["sparse_probing"]["metrics"]) for r in records
            if r.evals.get("sparse_probing", {}).get("status") == "ok"]
    if not rows:
        return None
    data = {r.label: {"llm": m.get("llm_test_accuracy"), "sae": m.get("sae_test_accuracy")} for r, m in rows}
    unmatched = l0_unmatched([r for r, _ in rows])
    fig, ax = open_figure("Sparse probing: LLM vs SAE test accuracy", records, left_out)
    x = list(range(len(rows)))
    ax.bar([i - 0.2 for i in x], [d["llm"] or 0 for d in data.values()], 0.4, color="tab:blue", label="LLM", gid="test accuracy")
    ax.bar([i + 0.2 for i in x], [d["sae"] or 0 for d in data.values()], 0.4, color="tab:orange", label="SAE", gid="test accuracy")
    ax.axhline(CHANCE_ACCURACY, color="gray", linestyle="--", linewidth=1, label="chance (binary tasks)", gid="chance")
    ax.set_xticks(x, [run_tick(r, unmatched) for r, _ in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return data


def plot_loss_curves(records: list[RunRecord], left_out: list[RunRecord], path: Path, components: bool) -> dict[str, Any] | None:
    """Reconstruction MSE and held-out FVE (comparable across objectives); with ``components``, each run's
    own total loss on its own axis (different runs minimise different objectives)."""
    if not any(r.train_curve for r in records):
        return None
    own = [r for r in records if r.train_curve] if components else []
    fig, axes = open_figure("Training: reconstruction MSE and held-out FVE", records, left_out, panels=2 + len(own))
    data: dict[str, Any] = {}
    for r in records:
        mse = r.component_curves.get("mse", [])
        data[r.label] = {"steps": [s for s, _ in mse], "mse": [v for _, v in mse],
                         "heldout_steps": [s for s, _ in r.heldout_fve], "heldout_fve": [v for _, v in r.heldout_fve]}
        axes[0].plot(data[r.label]["steps"], data[r.label]["mse"], label=r.label, gid="reconstruction MSE")
        axes[1].plot(data[r.label]["heldout_steps"], data[r.label]["heldout_fve"], "o-", label=r.label, gid="held-out FVE")
    _label(axes[0], "reconstruction MSE (train, normalised units)", log=True)
    _label(axes[1], "held-out FVE (fraction of variance explained)")
    for ax, r in zip(axes[2:], own):
        steps, losses = zip(*r.train_curve)
        ax.plot(steps, losses, color="tab:gray", gid="total loss")
        ax.set_title(f"{r.name}: its own total loss", fontsize=8)
        _label(ax, f"{r.arch} objective", log=True)
        data[r.label].update(loss_steps=list(steps), loss=list(losses))
    axes[0].legend(fontsize=7)
    save_figure(fig, path)
    return data


def _label(ax, ylabel: str, log: bool = False) -> None:
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel, fontsize=8)
    if log:
        ax.set_yscale("log")


def unlearning_results(records: list[RunRecord]) -> dict[str, dict[str, Any]]:
    return {r.label: {"status": e["status"], **e.get("metrics", {}), "reason": e.get("reason")}
            for r in records if (e := r.evals.get("unlearning")) is not None}


def plot_unlearning(records: list[RunRecord], left_out: list[RunRecord], path: Path) -> dict[str, Any] | None:
    """Drawn only when some run has an unlearning score; the reasons for the others are in the report's text."""
    data = unlearning_results(records)
    scorable = {k: v for k, v in data.items() if v["status"] == "ok" and v.get("unlearning_score") is not None}
    if not scorable:
        return None
    fig, ax = open_figure("Unlearning (SAE-Bench): score per run", records, left_out)
    ax.bar(range(len(scorable)), [v["unlearning_score"] for v in scorable.values()], color="tab:purple",
           gid="unlearning score")
    ax.set_xticks(range(len(scorable)), list(scorable), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("unlearning score (WMDP-bio drop at MMLU retained)")
    others = [f"{k}: {v['status']} ({textwrap.shorten(v.get('reason') or 'no reason given', 70, placeholder=' …')})"
              for k, v in data.items() if k not in scorable]
    if others:
        ax.text(0.98, 0.98, "\n".join(others), ha="right", va="top", transform=ax.transAxes, fontsize=7)
    save_figure(fig, path)
    return data
