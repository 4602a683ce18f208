"""`mtsae report`: figures, a Markdown + self-contained HTML report and report.json from training runs.

A run directory is what `mtsae train` writes (run.json, log.jsonl, final/), read
through train/rundir.py; its SAE-Bench results are read from ``<run>/eval/summary.json``
(what `mtsae experiment` writes) when present. Every number drawn is also written
to report.json, so what a figure shows can be checked.

Honesty guardrails: a run that trained 0 steps or did not finish, has NaN or
no loss, explained variance <= 0, probing at chance, or > 50 % dead latents is
flagged in the table and the CLI output, and left out of every figure (the
figure says which runs were left out and why). The report opens with the model,
its revision, layer and width, and a warning when that model is the embedded
one with random weights; accuracy figures draw chance; runs far from the
others' L0 are marked "not L0-matched"; an axis shows one quantity (every data
line carries it as its ``gid``); a figure with nothing to show is not drawn.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mtsae.errors import MtsaeError
from mtsae.evaluate import figures, registry
from mtsae.evaluate.config import splicing_evals
from mtsae.evaluate.figures import (L0_MATCH_TOLERANCE, NOT_L0_MATCHED, l0_unmatched, model_line, plot_accuracy,
                                    plot_loss_curves, plot_unlearning, provenance, random_weights_warning,
                                    trained_world_note, unlearning_results)
from mtsae.train.rundir import RUN_FILENAME, RunDir

MAX_DEAD_FRACTION = 0.5
FIGURES = ("accuracy_comparison.png", "loss_curves.png", "sparsity_comparison.png", "unlearning.png")


@dataclass
class RunRecord:
    name: str
    path: str
    arch: str | None = None
    preset: str | None = None
    seed: int | None = None
    cache_fingerprint: str | None = None
    mtsae_version: str | None = None
    steps: int = 0
    finished: bool = False
    sparsity_coefficient: float | None = None
    sparsity_penalty: str | None = None  # the coefficient's config name (l1_coefficient, l0_coefficient)
    sparsity_symbol: str | None = None  # how the architecture names it (L1 λ)
    k: int | None = None  # TopK-style runs: active latents per token
    model_name: str | None = None
    model_revision: str | None = None
    layer: int | None = None
    d_model: int | None = None
    heldout_fve: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out FVE)
    final: dict[str, float] = field(default_factory=dict)  # held-out metrics of the final checkpoint
    train_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    component_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # eval -> {status, metrics, reason}
    flags: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)  # shown next to the run (and its figure label), not left out

    @property
    def label(self) -> str:
        return f"{self.name} ({self.arch}, seed {self.seed}){' [non-causal]' if self.caveats else ''}"


# --------------------------------------------------------------------------------- reading runs


def load_run(path: str | Path) -> RunRecord:
    run = RunDir(path)
    info = run.read_info()
    if info is None:
        raise MtsaeError(f"{run.path} is not a training run (no valid {RUN_FILENAME}); "
                         "pass directories written by `mtsae train`")
    cfg = info["config"]
    record = RunRecord(name=run.path.name, path=str(run.path), arch=cfg.get("arch"), preset=cfg.get("preset"), seed=cfg.get("seed"),
                       cache_fingerprint=info.get("cache_fingerprint"), mtsae_version=info.get("mtsae_version"),
                       layer=cfg.get("layer"))
    record.sparsity_penalty, record.sparsity_coefficient, record.sparsity_symbol = _sparsity_coefficient(cfg)
    _read_log(run.read_log(), record)
    _read_final(run.final_cfg, record)
    _read_evals(run.eval_summary, record)
    record.flags = guardrail_flags(record)
    return record


def _sparsity_coefficient(cfg: dict[str, Any]) -> tuple[str | None, float | None, str | None]:
    """``(config name, value, symbol)`` of the sparsity coefficient the run set, as its architecture declares
    them; name and value None for TopK-style runs and runs that left it at its default, all three None for
    runs of an architecture not installed here."""
    from mtsae.train.registry import architecture_names, get_architecture

    if cfg.get("arch") not in architecture_names():
        return None, None, None
    arch = get_architecture(cfg["arch"])
    key, arch_cfg = arch.sparsity_coefficient, cfg.get("arch_config") or {}
    value = arch_cfg[key] if key in arch_cfg else cfg.get(key) if key is not None else None
    return (None if value is None else key), value, arch.sparsity_symbol


def _read_log(entries: list[dict[str, Any]], record: RunRecord) -> None:
    for entry in entries:
        if entry.get("split") == "heldout" and isinstance(entry.get("fve"), (int, float)):
            record.heldout_fve.append((entry.get("step", 0), entry["fve"]))
        if entry.get("split") != "train":
            continue
        step = entry.get("step", 0)
        record.train_curve.append((step, entry.get("loss", float("nan"))))
        for key, value in entry.items():
            if key not in ("split", "step", "tokens", "loss", "lr") and isinstance(value, (int, float)):
                record.component_curves.setdefault(key, []).append((step, value))
    record.steps = max((s for s, _ in record.train_curve), default=0)


def _read_final(path: Path, record: RunRecord) -> None:
    if not path.is_file():
        return
    saved = json.loads(path.read_text()).get("mtsae", {})
    metadata = saved.get("metadata", {})
    record.finished = True
    record.model_name, record.model_revision = metadata.get("model_name"), metadata.get("model_revision")
    record.layer, record.d_model = metadata.get("layer", record.layer), metadata.get("d_in")
    record.k = (saved.get("config") or {}).get("k")
    record.steps = metadata.get("steps", record.steps)
    record.final = {k: v for k, v in (metadata.get("final_metrics") or {}).items() if isinstance(v, (int, float))}
    record.cache_fingerprint = metadata.get("cache_fingerprint", record.cache_fingerprint)
    in_force = metadata.get("sparsity_coefficient")  # --target-l0 runs: the adapted value, not the configured one
    if in_force:
        record.sparsity_coefficient = float(f"{in_force['value']:.4g}")
        record.sparsity_penalty = in_force.get("name", record.sparsity_penalty)


def _read_evals(path: Path, record: RunRecord) -> None:
    if not path.is_file():
        return
    leaky = set()
    for row in json.loads(path.read_text()).get("results", []):
        record.evals[row["eval"]] = {"status": row["status"], "metrics": row.get("metrics", {}), "reason": row.get("reason")}
        if row.get("causal") is False and row["eval"] in splicing_evals() and row["status"] == "ok":
            leaky.add(row["eval"])
    if leaky:
        record.caveats.append(f"non-causal SAE: its {' and '.join(sorted(leaky))} scores come from a model that "
                              "sees later tokens through it")


# ------------------------------------------------------------------------------------ guardrails


def guardrail_flags(record: RunRecord) -> list[str]:
    flags = []
    if record.steps == 0:
        flags.append("trained 0 steps")
    elif not record.finished:
        flags.append("did not finish (no final checkpoint)")
    losses = [loss for _, loss in record.train_curve]
    if not losses:
        flags.append("no training loss logged")
    elif any(not math.isfinite(loss) for loss in losses):
        flags.append("NaN/Inf training loss")
    fve = record.final.get("fve")
    if fve is not None and not fve > 0:
        flags.append(f"explained variance {fve:.3f} <= 0")
    flags += _eval_flags(record, "reconstruction")
    dead = record.final.get("dead_fraction")
    if dead is not None and dead > MAX_DEAD_FRACTION:
        flags.append(f"{dead:.0%} dead latents (> {MAX_DEAD_FRACTION:.0%})")
    return flags + _eval_flags(record, "downstream")


def _eval_flags(record: RunRecord, kind: str) -> list[str]:
    """What the guardrails of the evals of ``kind`` (registry order) say about this run's scores."""
    flags = []
    for spec in registry.specs():
        if spec.kind == kind and spec.guardrail is not None and spec.name in record.evals:
            flag = spec.guardrail(record.evals[spec.name].get("metrics", {}))
            flags += [flag] if flag else []
    return flags


# -------------------------------------------------------------------------------------- figures


def sparsity_label(r: RunRecord) -> str:
    """The sparsity knob in its own symbol: ``L1 λ=0.04``, ``L0 λ=…``, ``k=32``; never ``λ=None``."""
    if r.sparsity_penalty and r.sparsity_coefficient is not None:
        return f"{r.sparsity_symbol or r.sparsity_penalty}={r.sparsity_coefficient:.3g}"
    return f"k={r.k}" if r.k is not None else "no sparsity coefficient"


def plot_sparsity(records: list[RunRecord], left_out: list[RunRecord], path: Path) -> dict[str, Any] | None:
    if not records:
        return None
    data = {r.label: {"sparsity": sparsity_label(r), "sparsity_coefficient": r.sparsity_coefficient,
                      "l0": r.final.get("l0"), "dead_fraction": r.final.get("dead_fraction")} for r in records}
    unmatched = l0_unmatched(records)
    fig, ax = figures.open_figure("Sparsity: achieved L0 (bars) and dead fraction (dots)", records, left_out)
    x = list(range(len(records)))
    ax.bar(x, [d["l0"] or 0 for d in data.values()], color="tab:green", label="L0 (held-out)", gid="L0")
    ax.set_ylabel("L0 (active latents per token)")
    ax.set_xticks(x, [f"{figures.run_tick(r, unmatched)}\n{d['sparsity']}" for r, d in zip(records, data.values())],
                  rotation=20, ha="right", fontsize=7)
    twin = ax.twinx()
    twin.plot(x, [d["dead_fraction"] or 0 for d in data.values()], "o", color="tab:red", label="dead fraction",
              gid="dead fraction")
    twin.set_ylim(0, 1)
    twin.set_ylabel("dead fraction")
    figures.save_figure(fig, path)
    return data


# -------------------------------------------------------------------------------------- report


def write_report(run_paths: list[str | Path], out: str | Path, *, loss_components: bool = False,
                 analyses: dict[str, dict[str, Any]] | None = None, extra_sections: list[str] | None = None) -> dict[str, Any]:
    """Write figures, report.md, report.html and report.json to ``out``; returns the report data."""
    return write_records_report([load_run(p) for p in run_paths], out, loss_components=loss_components,
                                analyses=analyses, extra_sections=extra_sections)


def write_records_report(records: list[RunRecord], out: str | Path, *, loss_components: bool = False,
                         analyses: dict[str, dict[str, Any]] | None = None,
                         extra_sections: list[str] | None = None) -> dict[str, Any]:
    """``write_report`` for runs already loaded (``load_run``), so a caller that reads them too reads them once."""
    if not records:
        raise MtsaeError("no runs given; pass one or more run directories")
    good = [r for r in records if not r.flags]
    flagged = [r for r in records if r.flags]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "accuracy_comparison.png": plot_accuracy(good, flagged, out / "accuracy_comparison.png"),
        "loss_curves.png": plot_loss_curves(good, flagged, out / "loss_curves.png", loss_components),
        "sparsity_comparison.png": plot_sparsity(good, flagged, out / "sparsity_comparison.png"),
        "unlearning.png": plot_unlearning(good, flagged, out / "unlearning.png"),
    }
    for name, drawn in figures.items():
        if drawn is None:  # nothing to show: no figure (and not an earlier report's)
            (out / name).unlink(missing_ok=True)
    data = {
        "model": model_line(records),
        "random_weights_warning": random_weights_warning(records),
        "model_note": trained_world_note(records),
        "provenance": provenance(records),
        "runs": [_run_summary(r) for r in records],
        "figures": figures,
        "analysis": analyses or {},
    }
    (out / "report.json").write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    write_pages(_markdown(records, data, extra_sections or []), out)
    return data


def write_pages(markdown: str, out: Path) -> None:
    """``report.md`` and its self-contained ``report.html`` (figures in ``out`` inlined) in the folder ``out``."""
    (out / "report.md").write_text(markdown)
    (out / "report.html").write_text(_html(markdown, out))


def _run_summary(r: RunRecord) -> dict[str, Any]:
    keep = ("name", "path", "arch", "preset", "seed", "cache_fingerprint", "mtsae_version", "steps", "finished",
            "sparsity_coefficient", "sparsity_penalty", "k", "model_name", "model_revision", "layer", "d_model",
            "final", "evals", "flags", "caveats")
    return {k: v for k, v in asdict(r).items() if k in keep}


def _json_default(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def metric_table(records: list[RunRecord]) -> list[str]:
    evals = _eval_columns()
    columns = ["run", "arch", "seed", "steps", "fve", "mse", "l0", "dead", "sep", *(c.header for _, c in evals), "flags"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    unmatched = l0_unmatched([r for r in records if not r.flags])
    for r in records:
        cells = [
            r.name + (f" ({NOT_L0_MATCHED})" if r.name in unmatched else ""), r.arch, r.seed, r.steps,
            _num(r.final.get("fve")), _num(r.final.get("mse")), _num(r.final.get("l0")),
            _num(r.final.get("dead_fraction")), _num(r.final.get("sep")),
            *(_eval_cell(r.evals.get(name), column) for name, column in evals),
            "; ".join(([f"**FLAGGED: {'; '.join(r.flags)}**"] if r.flags else []) + r.caveats) or "ok",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _eval_columns() -> list[tuple[str, registry.ReportColumn]]:
    """``(eval, column)`` of the metric table: the downstream evals' columns, then the reconstruction ones."""
    ordered = sorted(registry.specs(), key=lambda spec: spec.kind == "reconstruction")  # stable: registry order
    return [(spec.name, column) for spec in ordered for column in spec.report_columns()]


def _eval_cell(result: dict[str, Any] | None, column: registry.ReportColumn) -> str:
    if result is not None and result["status"] == "ok":
        return _num(result.get("metrics", {}).get(column.metric))
    return result["status"] if result is not None and column.status_when_missing else "–"


def _columns_note() -> str:
    """What the eval columns hold, for the note under the table."""
    specs = sorted(registry.specs(), key=lambda spec: spec.kind == "reconstruction")
    scores = "/".join(column.header for _, column in _eval_columns() if column.status_when_missing)
    return " ".join([*(s.column_note for s in specs if s.column_note),
                     f"{scores}: SAE-Bench headline scores, or why there is none."])


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


FIGURE_CAPTIONS = {"accuracy_comparison.png": "Sparse probing accuracy", "loss_curves.png": "Training: MSE and FVE",
                   "sparsity_comparison.png": "Sparsity", "unlearning.png": "Unlearning"}


def _markdown(records: list[RunRecord], data: dict[str, Any], extra_sections: list[str]) -> str:
    warning = [f"**{data['random_weights_warning']}**", ""] if data["random_weights_warning"] else []
    note = [data["model_note"], ""] if data["model_note"] else []
    lines = ["# mtsae report", "", *warning, f"Model: {data['model']}.", "", *note, data["provenance"], "",
             "Runs: " + ", ".join(f"`{r.name}` ({r.arch}, preset {r.preset}, seed {r.seed}, cache "
                                  f"{(r.cache_fingerprint or '?')[:12]})" for r in records), ""]
    flagged = [r for r in records if r.flags]
    if flagged:
        lines += ["## ⚠ Flagged runs (left out of every figure)", ""]
        lines += [f"- **{r.name}**: {'; '.join(r.flags)}" for r in flagged] + [""]
    caveated = [r for r in records if r.caveats]
    if caveated:
        lines += ["## ⚠ Non-causal SAEs (kept in the figures, marked [non-causal])", ""]
        lines += [f"- **{r.name}**: {'; '.join(r.caveats)}" for r in caveated] + [""]
    lines += ["## Metrics", "", *metric_table(records), "",
              "fve/mse/l0/dead/sep: held-out metrics of the final checkpoint (sep = mean cosine of codes at adjacent "
              f"tokens). {_columns_note()} Accuracy figures draw chance (0.5: the probing tasks are binary). "
              f"\"{NOT_L0_MATCHED}\": the run's L0 is more than {L0_MATCH_TOLERANCE:.0%} from the median L0 of the "
              "unflagged runs it is compared with (those of its match_l0 level, if any), so its scores are not "
              "comparable at equal sparsity.", ""]
    for name, caption in FIGURE_CAPTIONS.items():
        drawn = data["figures"][name] is not None
        lines += [f"## {caption}", "", f"![{caption}]({name})" if drawn else _not_drawn(name, records), ""]
    lines += extra_sections
    return "\n".join(lines) + "\n"


def _not_drawn(name: str, records: list[RunRecord]) -> str:
    """Why a figure is absent; reasons in full, never cut."""
    if name == "unlearning.png":
        rows = unlearning_results([r for r in records if not r.flags])
        reasons = [f"{label}: {v['status']} ({v.get('reason') or 'no reason given'})" for label, v in rows.items()]
        return "No unlearning score to draw. " + ("; ".join(reasons) if reasons else "No run has an unlearning result.")
    return {"accuracy_comparison.png": "No sparse-probing results to draw.",
            "loss_curves.png": "No training loss logged by an unflagged run.",
            "sparsity_comparison.png": "No unflagged run to draw."}[name]


def _html(markdown: str, out: Path) -> str:
    """A self-contained page: the Markdown rendered by markdown-it-py (CommonMark + tables, raw HTML
    escaped: run names are user data), the figures in ``out`` inlined as base64."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown)
    for token in tokens:
        for child in token.children or []:
            if child.type == "image":
                _inline_figure(child, out)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}h2{margin-top:1.5em}img{max-width:100%}")
    body = md.renderer.render(tokens, md.options, {})
    return f"<!doctype html><html><head><meta charset='utf-8'><title>mtsae report</title><style>{style}</style></head><body>{body}</body></html>\n"


def _inline_figure(image: Any, out: Path) -> None:
    """Point an image token at its PNG's bytes when the PNG is a file directly in ``out`` (else leave it)."""
    name = str(image.attrGet("src") or "")
    path = out / name
    if name.endswith(".png") and "/" not in name and "\\" not in name and path.is_file():
        image.attrSet("src", "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode())
