"""The report's across-seeds table: runs trained per seed grouped back, every score with its [min, max]."""

from __future__ import annotations

import pytest

from mtsae.evaluate.experiment import load_experiment, run_experiment
from mtsae.evaluate.report import load_run
from mtsae.evaluate.seed_spread import seed_group, spread_cell, spread_section
from test_experiment import TINY
from test_report import make_run


@pytest.mark.parametrize("name, group", [("topk-s1-l0_16", "topk-l0_16"), ("mtsae-s12", "mtsae"),
                                         ("baseline_sae-s0-l0_2.5", "baseline_sae-l0_2.5"), ("topk", None),
                                         ("topk-l0_16", None), ("runs-sx", None)])
def test_seed_group_strips_only_the_seed(name, group):
    assert seed_group(name) == group


def test_spread_cells_say_how_many_seeds_had_a_value():
    assert spread_cell([0.8, 0.9]) == "0.850 [0.800, 0.900]"
    assert spread_cell([0.8, None]) == "0.800 [0.800, 0.800] (1 of 2 seeds)"
    assert spread_cell([None, None], "not_scorable") == "not_scorable"


def _unlearn_result(run, drop):
    return {"checkpoint": {"checkpoint": str(run / "final")}, "headline": {"forget_drop": drop}}


def test_groups_show_every_score_side_by_side_with_spread_and_leave_out_flagged_and_single_runs(tmp_path):
    scored = {"status": "ok", "metrics": {"unlearning_score": 0.2}}
    not_scorable = {"status": "not_scorable", "reason": "no question right"}
    runs = [make_run(tmp_path, "topk-s0-l0_16", arch="topk", seed=0, sae_acc=0.8, unlearning=scored),
            make_run(tmp_path, "topk-s1-l0_16", arch="topk", seed=1, sae_acc=0.9, unlearning=scored),
            make_run(tmp_path, "mtsae-s0-l0_16", arch="mtsae", seed=0, unlearning=not_scorable),
            make_run(tmp_path, "mtsae-s1-l0_16", arch="mtsae", seed=1, unlearning=not_scorable),
            make_run(tmp_path, "mtsae-s2-l0_16", arch="mtsae", seed=2, steps=0, finished=False),  # flagged
            make_run(tmp_path, "relu-s0", seed=0), make_run(tmp_path, "single")]
    unlearn = [_unlearn_result(runs[0], 0.1), _unlearn_result(runs[1], 0.3), _unlearn_result(runs[2], None)]
    lines = spread_section([load_run(r) for r in runs], unlearn)
    table = "\n".join(lines)
    header = next(line for line in lines if line.startswith("| runs"))
    for column in ("probe SAE", "unlearning", "absorption", "`mtsae unlearn` forget drop"):
        assert f"| {column} |" in header
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ") and "-l0_" in line}
    assert set(rows) == {"topk-l0_16", "mtsae-l0_16"} and "relu" not in table and "single" not in table
    assert "| topk | 0, 1 |" in rows["topk-l0_16"] and "| mtsae | 0, 1 |" in rows["mtsae-l0_16"]  # seed 2 flagged
    assert "0.850 [0.800, 0.900]" in rows["topk-l0_16"]  # probe SAE accuracy of the two seeds
    assert "0.200 [0.100, 0.300]" in rows["topk-l0_16"]  # mtsae unlearn's forget drop
    assert "| not_scorable |" in rows["mtsae-l0_16"]  # SAE-Bench unlearning: why there is no score
    assert rows["mtsae-l0_16"].rstrip(" |").endswith("not scorable")  # mtsae unlearn ran, no drop


def test_nothing_per_seed_means_no_section(tmp_path):
    assert spread_section([load_run(make_run(tmp_path, "a")), load_run(make_run(tmp_path, "b"))]) == []


def test_the_experiment_report_holds_the_across_seeds_table(tmp_path):
    config = tmp_path / "exp.toml"
    runs = "".join(f'[[runs]]\nname = "relu-s{seed}"\narch = "relu"\nseed = {seed}\n' for seed in (0, 1))
    text = TINY.format(out=tmp_path / "out").split("[[runs]]")[0]
    config.write_text(text + runs)
    run_experiment(load_experiment(str(config)), progress=False, log=lambda _: None)
    md = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "## Across seeds (mean [min, max])" in md and "| relu | relu | 0, 1 |" in md
