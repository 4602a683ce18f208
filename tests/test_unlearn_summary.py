"""The across-seeds summary of `mtsae unlearn` results and its verdict (evaluate/unlearn_summary.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtsae.evaluate import unlearn_summary as S


def _result(run: str, arch: str, temporal: bool, drop: float | None, sets: list[tuple[float, float]],
            latents: int | None = 10) -> dict:
    return {"checkpoint": {"checkpoint": f"/x/runs/{run}/final", "architecture": arch, "temporal": temporal},
            "headline": {"forget_drop": drop, "latents": latents},
            "latent_sets": [{"retain_false_positive_rate": fp, "forget_token_coverage": cov} for fp, cov in sets]}


def test_coverage_is_interpolated_between_latent_sets_anchored_at_zero_and_undefined_beyond():
    r = _result("a", "topk", False, 0.1, [(0.01, 0.2), (0.04, 0.5), (0.10, 0.8)])
    assert S.coverage_at(r, 0.005) == pytest.approx(0.1)  # between (0, 0) and the first set
    assert S.coverage_at(r, 0.02) == pytest.approx(0.3)
    assert S.coverage_at(r, 0.04) == pytest.approx(0.5)
    assert S.coverage_at(r, 0.07) == pytest.approx(0.65)
    assert S.coverage_at(r, 0.2) is None


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=6), st.floats(0, 1))
def test_coverage_stays_between_the_measured_coverages(points, rate):
    value = S.coverage_at(_result("a", "topk", False, 0.1, points), rate)
    if value is not None:
        assert -1e-9 <= value <= max(cov for _, cov in points) + 1e-9


def _seeds(arch, temporal, drops, coverage):
    return [_result(f"{arch}-s{i}", arch, temporal, d, [(0.05, c)]) for i, (d, c) in enumerate(zip(drops, coverage))]


def test_a_difference_outside_the_seed_spread_is_decided_and_one_inside_is_not():
    results = (_seeds("mtsae", True, [0.50, 0.52, 0.51], [0.60, 0.40, 0.80])
               + _seeds("topk", False, [0.10, 0.12, 0.11], [0.55, 0.35, 0.75])
               + _seeds("relu", False, [0.05, 0.06, 0.07], [0.10, 0.12, 0.11]))
    v = S.verdicts(results)
    assert v["forget drop"]["baseline_arch"] == "topk" and v["forget drop"]["decided"]
    assert v["forget drop"]["difference"] == pytest.approx(0.40)
    assert v["coverage at FP 5%"]["baseline_arch"] == "topk" and not v["coverage at FP 5%"]["decided"]
    lines = "\n".join(S.verdict_lines(results))
    assert "forget drop**, mtsae vs topk" in lines and "temporal higher" in lines
    assert "no verdict (inside the seed spread)" in lines and "Rule:" in lines


def test_runs_not_l0_matched_are_left_out_and_named():
    results = (_seeds("mtsae", True, [0.1, 0.2], [0.5, 0.6]) + _seeds("topk", False, [0.3, 0.4], [0.5, 0.6])
               + _seeds("jumprelu", False, [0.9, 0.9], [0.9, 0.9]))
    section = "\n".join(S.summary_section(results, not_matched={"jumprelu-s0", "jumprelu-s1"}))
    assert "Left out, not L0-matched: jumprelu-s0, jumprelu-s1." in section
    assert "| jumprelu" not in section and "mtsae vs topk" in section
    assert S.summary_section(results, not_matched={r["checkpoint"]["checkpoint"].split("/")[-2] for r in results}) == []


def test_one_seed_or_an_undefined_coverage_never_gives_a_verdict():
    results = _seeds("mtsae", True, [0.9], [0.9]) + _seeds("topk", False, [0.1], [0.1])
    assert not any(v["decided"] for v in S.verdicts(results).values())
    undefined = _seeds("mtsae", True, [0.9, 0.8], [0.9, 0.8]) + [
        _result("topk-s0", "topk", False, 0.1, [(0.01, 0.1)]), _result("topk-s1", "topk", False, 0.1, [(0.01, 0.1)])]
    assert S.verdicts(undefined)["coverage at FP 5%"]["undefined"]
    assert "| topk (2) | 0.100 [0.100, 0.100] | – | – | 10/10 |" in S.architecture_table(undefined)
