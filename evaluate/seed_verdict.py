"""The one rule for comparing two models over seeds: a difference is decided only outside the seed spread.

Used by the synthetic temporal benchmark (:mod:`mtsae.evaluate.temporal_synth`) and the world's
unlearning summary (:mod:`mtsae.evaluate.unlearn_summary`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

RULE = ("a difference is decided only when |difference of the seed means| exceeds the seed spread "
        "(the sum of the two sample standard deviations)")


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std); one value has an infinite std, so it never decides anything."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("inf"))


def compare_seeds(temporal: Sequence[float], baseline: Sequence[float]) -> dict[str, Any]:
    """Seed means, their difference, the spread, and whether the difference is decided."""
    (ma, sa), (mb, sb) = mean_and_std(temporal), mean_and_std(baseline)
    diff, spread = ma - mb, sa + sb
    return {"temporal": ma, "baseline": mb, "difference": diff, "spread": spread, "decided": abs(diff) > spread,
            "temporal_range": [min(temporal), max(temporal)], "baseline_range": [min(baseline), max(baseline)]}
