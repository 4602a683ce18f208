"""`mtsae unlearn` results across seeds, per architecture, and the temporal-vs-per-token verdict.

Issue 16's comparison on the world LM: at matched L0 and over seeds, do the temporal SAE's
selected latents cover more forget-topic tokens at the same retain false-positive rate, and is
its forget drop (at retain kept >= 0.99) at least the best per-token baseline's? Coverage at a
fixed false-positive rate is read off each SAE's latent sets by linear interpolation, anchored at
(0, 0) (no latent clamped fires nowhere); above the largest rate measured it is undefined.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

from mtsae.evaluate.seed_spread import spread_cell
from mtsae.evaluate.seed_verdict import RULE, compare_seeds

FALSE_POSITIVE_RATES = (0.02, 0.05)


def coverage_at(result: dict, rate: float) -> float | None:
    """Forget-token coverage of the SAE's latent sets at retain false-positive ``rate`` (interpolated)."""
    points = sorted({(s["retain_false_positive_rate"], s["forget_token_coverage"]) for s in result["latent_sets"]})
    previous = (0.0, 0.0)
    for fp, cov in points:
        if fp >= rate:
            if fp == previous[0]:
                return cov
            return previous[1] + (cov - previous[1]) * (rate - previous[0]) / (fp - previous[0])
        previous = (fp, cov)
    return None


def _measures(result: dict) -> dict[str, float | None]:
    measures = {"forget drop": result["headline"]["forget_drop"]}
    measures |= {f"coverage at FP {rate:.0%}": coverage_at(result, rate) for rate in FALSE_POSITIVE_RATES}
    return measures


def by_architecture(results: Sequence[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for r in results:
        grouped.setdefault(r["checkpoint"]["architecture"], []).append(r)
    return grouped


def architecture_table(results: Sequence[dict]) -> list[str]:
    """Mean [min, max] over the runs of each architecture (seeds) of the headline and the coverages."""
    names = list(_measures(results[0]))
    lines = ["| arch (runs) | " + " | ".join(names) + " | latents it needs |", "|---" * (len(names) + 2) + "|"]
    for arch, runs in sorted(by_architecture(results).items()):
        rows = [_measures(r) for r in runs]
        needs = "/".join("–" if r["headline"]["latents"] is None else str(r["headline"]["latents"]) for r in runs)
        lines.append(f"| {arch} ({len(runs)}) | " + " | ".join(spread_cell([row[n] for row in rows]) for n in names)
                     + f" | {needs} |")
    return lines


def _best(grouped: dict[str, list[dict]], measure: str) -> str:
    def mean(arch: str) -> float:
        values = [v for v in (_measures(r)[measure] for r in grouped[arch]) if v is not None]
        return sum(values) / len(values) if values else float("-inf")
    return max(grouped, key=mean)


def verdicts(results: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """Per measure: the best temporal architecture against the best per-token one, decided outside the spread."""
    grouped = by_architecture(results)
    temporal = {a: rs for a, rs in grouped.items() if rs[0]["checkpoint"].get("temporal")}
    per_token = {a: rs for a, rs in grouped.items() if not rs[0]["checkpoint"].get("temporal")}
    if not temporal or not per_token:
        return {}
    out = {}
    for measure in _measures(results[0]):
        t, b = _best(temporal, measure), _best(per_token, measure)
        values = [[_measures(r)[measure] for r in grouped[a]] for a in (t, b)]
        if any(v is None for vs in values for v in vs) or min(len(vs) for vs in values) < 2:
            out[measure] = {"temporal_arch": t, "baseline_arch": b, "decided": False, "undefined": True}
            continue
        out[measure] = {"temporal_arch": t, "baseline_arch": b, **compare_seeds(*values)}
    return out


def verdict_lines(results: Sequence[dict]) -> list[str]:
    lines = []
    for measure, v in verdicts(results).items():
        head = f"- **{measure}**, {v['temporal_arch']} vs {v['baseline_arch']} (best temporal vs best per-token): "
        if v.get("undefined"):
            lines.append(head + "no verdict (undefined for a run, or fewer than 2 runs each)")
            continue
        (tl, th), (bl, bh) = v["temporal_range"], v["baseline_range"]
        outcome = ("temporal higher" if v["difference"] > 0 else "temporal lower") if v["decided"] else \
            "no verdict (inside the seed spread)"
        lines.append(head + f"{v['temporal']:.3f} [{tl:.3f}, {th:.3f}] vs {v['baseline']:.3f} [{bl:.3f}, {bh:.3f}] "
                     f"(difference {v['difference']:+.3f}, spread {v['spread']:.3f}): {outcome}")
    return lines + ([f"- Rule: {RULE}."] if lines else [])


def run_name(result: dict) -> str:
    """The run folder a result's checkpoint came from (``runs/<name>/final`` → ``<name>``)."""
    return PurePath(result["checkpoint"]["checkpoint"]).parent.name


def summary_section(results: Sequence[dict], not_matched: set[str] = frozenset()) -> list[str]:
    """The across-seeds table and the verdicts, for the experiment report (nothing for no results).

    Runs in ``not_matched`` (not L0-matched, by the report's rule) are left out and named: a comparison
    at unequal sparsity is not like for like.
    """
    kept = [r for r in results if run_name(r) not in not_matched]
    left_out = sorted(run_name(r) for r in results if run_name(r) in not_matched)
    if not kept:
        return []
    note = [f"Left out, not L0-matched: {', '.join(left_out)}.", ""] if left_out else []
    return ["Per architecture, mean [min, max] over its runs (seeds). Forget drop: at retain kept ≥ 0.99; "
            "coverage: forget-document tokens on which the selected latents fire, at a fixed retain "
            "false-positive rate (interpolated between latent sets).", "", *note,
            *architecture_table(kept), "", *verdict_lines(kept), ""]
