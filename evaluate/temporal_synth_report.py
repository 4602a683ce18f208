"""The temporal benchmark's report (evaluate/temporal_synth.py): per regime, every model's scores and the
verdict of the best temporal model against the best per-token one, as mean [min, max] over seeds, refused
inside the seed spread; and that the data are synthetic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtsae.evaluate import seed_verdict
from mtsae.evaluate.temporal_synth import BUCKETS, FAST, SLOW, SYNTH, stat

RULE = f"Rule: {seed_verdict.RULE}; inside it the report says \"no verdict\"."
# The checks each regime's verdict line names (the issue-16 target's), with their words.
HEADLINE = ((f"{SLOW} recovered", "slow recovery"), (f"{SLOW} f1", "slow code F1"),
            (f"{FAST} recovered", "1-token recovery"))


def report(results: dict[str, Any], k: int) -> str:
    s = results["settings"]
    lines = [f"# Temporal vs per-token SAEs on synthetic data: mtsae synth regimes (L0 = k = {k}, {s['seeds']} seeds)",
             "", _synthetic_note(s.get("synth", SYNTH)), "",
             f"d_sae {s['d_sae']}, {s['steps']} steps x {s['batch_tokens']} tokens, lr {s['lr']}, "
             f"temporal windows {s['window']}; per-token baselines on shuffled tokens. "
             f"Wall time {results['seconds']:.0f} s.", "", RULE, ""]
    for regime, r in results["regimes"].items():
        lines += [f"## {regime}", "", "Per-token SNR of the truth (seed 0), by pooling width: " + "; ".join(
            f"{w}: " + ", ".join(f"{b} {v:.2f}" for b, v in vals.items()) for w, vals in r["snr"].items()), "",
            *_model_table(r["models"]), "", *_verdict_lines(regime, r["verdict"], s["seeds"])]
    return "\n".join(lines)


def _synthetic_note(synth: dict[str, Any]) -> str:
    return (f"**Synthetic data.** Every activation here is drawn from `mtsae synth`'s generator: "
            f"{synth['n_features']} known features in d {synth['d_model']}, mean dwell {synth['min_dwell']:g}-"
            f"{synth['max_dwell']:g} tokens. Not a language model: a verdict here says what each architecture "
            "recovers when the truth is known, not how it does on an LM.")


def _model_table(per_model: dict[str, list]) -> list[str]:
    lines = ["| model | FVE | L0 | " + " | ".join(f"{b}: recovered / F1 / FPR" for b, _, _ in BUCKETS) + " |",
             "|---|---|---|" + "---|" * len(BUCKETS)]
    for name, runs in per_model.items():
        cells = [f"{stat(runs, None, 'fve')[0]:.3f} ± {stat(runs, None, 'fve')[1]:.3f}",
                 f"{stat(runs, None, 'l0')[0]:.2f}"]
        for b, _, _ in BUCKETS:
            (rm, rs), (fm, fs), (pm, _) = (stat(runs, b, m) for m in ("recovered", "f1", "fpr"))
            cells.append(f"{rm:.0%} ± {rs:.0%} / {fm:.2f} ± {fs:.2f} / {pm:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _outcome(c: dict[str, Any]) -> str:
    if not c["decided"]:
        return "no verdict (inside the seed spread)"
    return "temporal higher" if c["difference"] > 0 else "temporal lower"


def _verdict_lines(regime: str, v: dict[str, Any] | None, seeds: int) -> list[str]:
    """The regime's verdict: a headline on the target's checks, then every check as mean [min, max] over seeds."""
    if v is None:
        return ["No verdict: this run holds only temporal or only per-token models.", ""]
    headline = "; ".join(f"{label}: {_outcome(v['checks'][key])}" for key, label in HEADLINE)
    lines = [f"**Verdict, {regime}** (synthetic data, {seeds} seeds; best temporal vs best per-token): {headline}.", "",
             f"Best temporal: **{v['temporal']}**; best per-token: **{v['baseline']}** (by slow recovery). "
             "Mean [min, max] over seeds, temporal vs per-token:", ""]
    for name, c in v["checks"].items():
        (tl, th), (bl, bh) = c["temporal_range"], c["baseline_range"]
        lines.append(f"- {name}: {c['temporal']:.3f} [{tl:.3f}, {th:.3f}] vs {c['baseline']:.3f} [{bl:.3f}, {bh:.3f}] "
                     f"(difference {c['difference']:+.3f}, spread {c['spread']:.3f}): {_outcome(c)}")
    return lines + ["", "Target (issue 16): " + "; ".join(f"{n}: {'met' if ok else 'not met'}"
                                                          for n, ok in v["target"].items()), ""]


def write_report(results: dict[str, Any], out: Path) -> None:
    """``report.md`` and the self-contained ``report.html`` of a run's results in ``out``."""
    from mtsae.evaluate.report import write_pages

    write_pages(report(results, results["settings"]["k"]), out)

