"""``summary.json`` and the printed table: one row per (checkpoint, eval)."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mtsae

SUMMARY_FILENAME = "summary.json"


def library_versions() -> dict[str, str]:
    out = {"mtsae": mtsae.__version__, "python": platform.python_version()}
    for package in ("sae-bench", "sae-lens", "transformer-lens", "torch", "transformers", "datasets"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


@dataclass
class EvalSummary:
    path: Path
    data: dict[str, Any]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.data["results"]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]

    def table(self) -> str:
        return format_table(self.rows)


def write_summary(out: Path, header: dict[str, Any], rows: list[dict[str, Any]]) -> EvalSummary:
    """Write ``summary.json``; rows of an earlier summary for other (checkpoint, eval) pairs are kept."""
    path = out / SUMMARY_FILENAME
    rows = _earlier_rows(path, rows) + rows
    data = {**header, "versions": library_versions(), "created_epoch_millis": int(time.time() * 1000), "results": rows}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return EvalSummary(path, data)


def _earlier_rows(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    try:
        earlier = json.loads(path.read_text()).get("results", [])
    except (OSError, ValueError):
        return []
    now = {(r["checkpoint"], r["eval"]) for r in rows}
    return [{**r, "earlier_run": True} for r in earlier if (r.get("checkpoint"), r.get("eval")) not in now]


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = ("sae", "eval", "status", "seconds", "metrics")
    cells = [
        {
            "sae": r["release"] + (" [non-causal]" if r.get("causal") is False else ""), "eval": r["eval"],
            "status": r["status"] + (" (earlier)" if r.get("earlier_run") else " (reused)" if r.get("reused") else ""),
            "seconds": "" if r.get("seconds") is None else f"{r['seconds']:.0f}",
            "metrics": _metrics_text(r),
        }
        for r in rows
    ]
    widths = {c: max(len(c), *(len(row[c]) for row in cells)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(row[c].ljust(widths[c]) for c in columns).rstrip() for row in cells]
    return "\n".join(lines)


def _metrics_text(row: dict[str, Any]) -> str:
    if row["status"] in ("not_scorable", "failed"):
        return (row.get("reason") or "")[:120]
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.get("metrics", {}).items())
