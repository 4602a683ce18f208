"""CLI for synth, analyze, report and experiment."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mtsae.cli import app
from test_experiment import TINY
from test_report import make_run

runner = CliRunner()


def test_synth_then_refuses_to_overwrite(tmp_path):
    out = tmp_path / "s.zarr"
    args = ["synth", "--out", str(out), "--d-model", "8", "--n-features", "12", "--n-sequences", "4", "--seq-len", "16"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0 and first.stdout.strip() == str(out)
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and again.stderr.strip() == f"error: {out} already exists; choose a new --out"
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "b.zarr"), "--p-active", "0.9"])
    assert bad.exit_code == 1 and "--p-active must be in (0, 0.5)" in bad.stderr


def test_report_flags_broken_runs_on_the_command_line(tmp_path):
    good, broken = make_run(tmp_path, "good"), make_run(tmp_path, "broken", steps=0, finished=False)
    result = runner.invoke(app, ["report", str(good), str(broken), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "FLAGGED broken: trained 0 steps" in result.stderr
    assert result.stdout.strip() == str(tmp_path / "r" / "report.html")
    missing = runner.invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")])
    assert missing.exit_code == 1 and "not a training run" in missing.stderr


def test_experiment_and_analyze(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text(TINY.format(out=tmp_path / "out"))
    result = runner.invoke(app, ["experiment", str(config), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "out" / "report" / "report.html")
    analysis = runner.invoke(app, ["analyze", str(tmp_path / "out" / "runs" / "temporal"), "--max-lag", "4"])
    assert analysis.exit_code == 0
    assert json.loads(analysis.stdout)["architecture"] == "mtsae"
    assert runner.invoke(app, ["experiment", str(tmp_path / "none.toml")]).exit_code == 1
