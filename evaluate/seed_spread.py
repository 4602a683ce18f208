"""The report's across-seeds table: runs that differ only in their seed, side by side, with their spread.

`mtsae experiment` names a run trained once per seed ``<run>-s<seed>`` (``<run>-s<seed>-l0_<level>`` at a
matched L0). This table groups those back and gives, per group, the mean and [min, max] over its seeds of
held-out L0 and FVE, every SAE-Bench column of the metric table (probing, unlearning, absorption, core) and
`mtsae unlearn`'s headline, so two architectures are compared on all of them at once and a difference can be
read against the seeds' spread. A seed without a score counts as missing, and the cell says how many had one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

from mtsae.evaluate import registry

SEED_SUFFIX = re.compile(r"-s\d+(?=-l0_|$)")


def seed_group(name: str) -> str | None:
    """``topk-s1-l0_16`` → ``topk-l0_16``; None for a run not named per seed."""
    return SEED_SUFFIX.sub("", name, count=1) if SEED_SUFFIX.search(name) else None


def spread_cell(values: Sequence[float | None], missing: str = "–") -> str:
    """``mean [min, max]`` of the seeds that have a value, with how many had one when some did not."""
    have = [v for v in values if v is not None]
    if not have:
        return missing
    cell = f"{sum(have) / len(have):.3f} [{min(have):.3f}, {max(have):.3f}]"
    return cell if len(have) == len(values) else f"{cell} ({len(have)} of {len(values)} seeds)"


def _eval_value(record, eval_name: str, metric: str) -> float | None:
    result = record.evals.get(eval_name)
    value = result.get("metrics", {}).get(metric) if result and result["status"] == "ok" else None
    return float(value) if isinstance(value, (int, float)) else None


def _eval_missing(records, eval_name: str) -> str:
    """What a column with no score says: the seeds' status (``not_scorable``), or – when never run."""
    statuses = sorted({r.evals[eval_name]["status"] for r in records if eval_name in r.evals})
    return "/".join(statuses) if statuses else "–"


def _columns(unlearn: dict[str, dict[str, Any]]) -> list[tuple[str, Callable, Callable]]:
    """``(header, value of one record, text when no seed has a value)`` per column."""
    columns = [("L0", lambda r: r.final.get("l0"), lambda rs: "–"),
               ("FVE", lambda r: r.final.get("fve"), lambda rs: "–")]
    for spec in registry.specs():
        for column in spec.report_columns():
            columns.append((column.header,
                            lambda r, e=spec.name, m=column.metric: _eval_value(r, e, m),
                            lambda rs, e=spec.name: _eval_missing(rs, e)))
    if unlearn:
        columns.append(("`mtsae unlearn` forget drop",
                        lambda r: _unlearn_drop(unlearn, r),
                        lambda rs: "not scorable" if any(_final(r) in unlearn for r in rs) else "–"))
    return columns


def _final(record) -> str:
    return str((Path(record.path) / "final").resolve())


def _unlearn_drop(unlearn: dict[str, dict[str, Any]], record) -> float | None:
    result = unlearn.get(_final(record))
    return result["headline"]["forget_drop"] if result else None


def spread_section(records: Sequence, unlearn_results: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Markdown for the runs' seed groups with two or more unflagged seeds (none such: no section)."""
    groups: dict[str, list] = {}
    for r in records:
        group = seed_group(r.name)
        if group is not None and not r.flags:
            groups.setdefault(group, []).append(r)
    groups = {name: rs for name, rs in groups.items() if len(rs) >= 2}
    if not groups:
        return []
    unlearn = {str(Path(u["checkpoint"]["checkpoint"]).resolve()): u for u in unlearn_results}
    columns = _columns(unlearn)
    lines = ["## Across seeds (mean [min, max])", "",
             "| runs | arch | seeds | " + " | ".join(header for header, _, _ in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for name, rs in groups.items():
        cells = [spread_cell([value(r) for r in rs], missing(rs)) for _, value, missing in columns]
        seeds = ", ".join(str(r.seed) for r in rs)
        lines.append(f"| {name} | {rs[0].arch} | {seeds} | " + " | ".join(cells) + " |")
    lines += ["", "One row per run trained with several seeds (flagged runs left out). Two rows differ only where "
              "their [min, max] ranges do not overlap; `mtsae unlearn` forget drop: the share of forget facts "
              "forgotten while ≥ 99 % of retain facts are kept (docs/unlearning.md).", ""]
    return lines
