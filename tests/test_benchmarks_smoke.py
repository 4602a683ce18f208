"""The benchmark harness at tiny sizes: every benchmark produces every row and target, with sane values.

Slow (about a minute on a shared 2-core machine: it builds a TransformerLens
model and runs two harvest child processes), so it runs in CI's slow step.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives at the repository root

EXPECTED_ROWS = {
    "harvest": ["mtsae harvest (end to end)", "forward only (compute ceiling)",
                "naive: full model, output_hidden_states, np.save", "TransformerLens run_with_cache (SAELens)",
                "disk sequential write (I/O ceiling)"],
    "train step": ["relu 16→64", "mtsae (PyTorch path)", "float32 matmul (compute ceiling)", "relu step FLOP rate"],
    "loader": ["loader alone, cold (first read)", "disk sequential read (cold)", "loader alone, warm (page cache)",
               "training from an in-memory tensor", "training from the cache (warm)"],
    "memory": ["harvest peak RSS, 300 tokens", "harvest peak RSS, 3,000 tokens"],
}
EXPECTED_TARGETS = [
    "harvest: end to end / min(forward only, disk write)", "harvest: forward / TransformerLens at ctx 1024",
    "train: MTSAE step / ReLU step at d_sae 16384", "train: ReLU step / bf16 matmul rate",
    "loader: cache / in-memory training, warm", "loader: cold loader / disk read rate",
    "memory: peak RSS at 10× tokens / at 1×",
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from benchmarks.run import main

    out = tmp_path_factory.mktemp("bench-out")
    report = main(["--profile", "smoke", "--device", "cpu", "--out", str(out),
                   "--work", str(tmp_path_factory.mktemp("bench-work"))])
    return report, out


def test_every_row_is_measured(smoke):
    report, _ = smoke
    rows = {}
    for m in report.measurements:
        rows.setdefault(m.benchmark, []).append(m.variant)
        assert math.isfinite(m.value) and m.value > 0, (m.benchmark, m.variant, m.value)
        if m.baseline is not None:
            assert m.ratio == pytest.approx(m.value / report.value(m.benchmark, m.baseline))
    assert rows == EXPECTED_ROWS


def test_every_target_has_a_status_and_a_reason(smoke):
    report, _ = smoke
    assert [t.name for t in report.targets] == EXPECTED_TARGETS
    for t in report.targets:
        assert t.status in ("met", "not met", "not measurable on CPU") and t.reason
        assert t.ratio is not None and t.ratio > 0
        if t.status != "not measurable on CPU":
            assert (t.status == "met") == (t.ratio <= t.threshold if t.at_most else t.ratio >= t.threshold)
    gpu_only = {"harvest: forward / TransformerLens at ctx 1024", "train: MTSAE step / ReLU step at d_sae 16384",
                "train: ReLU step / bf16 matmul rate"}
    assert {t.name for t in report.targets if t.status == "not measurable on CPU"} == gpu_only


def test_results_are_written_as_json_and_markdown(smoke):
    report, out = smoke
    data = json.loads((out / "results.json").read_text())
    assert len(data["measurements"]) == len(report.measurements) and data["machine"]["commit"]
    markdown = (out / "results.md").read_text()
    for m in report.measurements:
        assert f"| {m.benchmark} | {m.variant} |" in markdown
    for t in report.targets:
        assert f"| {t.name} |" in markdown


def test_cold_read_really_started_cold(smoke):
    report, _ = smoke
    cold = next(m for m in report.measurements if m.variant == "loader alone, cold (first read)")
    assert cold.note.startswith("0% of the cache resident"), cold.note
