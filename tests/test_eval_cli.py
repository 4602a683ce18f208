"""`mtsae eval` from the command line: harvest -> train -> eval, and one-line user errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mtsae.cli import app

runner = CliRunner()


def test_train_then_eval(tiny_cache_path, tmp_path):
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", "--cache", str(tiny_cache_path), "--out", str(run), "--layer", "5",
                                  "--arch", "mtsae", "--d-sae", "128", "--window", "16", "--batch-windows", "8",
                                  "--steps", "10", "--no-progress"])
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "results"
    result = runner.invoke(app, ["eval", str(run), "--out", str(out), "--evals", "core"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["sae", "eval", "status", "seconds", "metrics"]
    assert lines[1].split()[:3] == ["run_final", "core", "ok"] and lines[-1] == f"summary: {out / 'summary.json'}"
    summary = json.loads((out / "summary.json").read_text())
    fingerprint = json.loads((run / "final" / "cfg.json").read_text())["mtsae"]["metadata"]["cache_fingerprint"]
    assert summary["checkpoints"][0]["cache_fingerprint"] == fingerprint
    assert "[core]" in result.stderr  # progress goes to stderr


def test_user_errors_are_one_line(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "not an mtsae checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_relative_paths_work_although_evals_move_the_working_directory(tiny_cache_path, tmp_path, monkeypatch):
    """Every eval runs in its own working directory; relative --out and checkpoint paths must still resolve."""
    monkeypatch.chdir(tmp_path)
    trained = runner.invoke(app, ["train", "--cache", str(tiny_cache_path), "--out", "run", "--layer", "5",
                                  "--arch", "relu", "--d-sae", "64", "--window", "16", "--batch-windows", "8", "--steps", "5",
                                  "--no-progress"])
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(app, ["eval", "run", "--out", "run/eval", "--evals", "unlearning"])
    assert result.exit_code == 0, result.output  # not_scorable on the random model, never failed
    rows = json.loads((tmp_path / "run" / "eval" / "summary.json").read_text())["results"]
    assert [(r["eval"], r["status"]) for r in rows] == [("unlearning", "not_scorable")]


def test_non_causal_sae_is_refused_unless_allowed_then_flagged(tmp_path):
    from test_eval_support import save

    ckpt = save(tmp_path, "mtsae", {"padding": "replicate"})
    refused = runner.invoke(app, ["eval", str(ckpt), "--out", str(tmp_path / "o"), "--evals", "core"])
    assert refused.exit_code == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith("error: ") and "not causal" in refused.stderr and "--allow-non-causal" in refused.stderr
    assert not (tmp_path / "o" / "summary.json").exists()
    allowed = runner.invoke(app, ["eval", str(ckpt), "--out", str(tmp_path / "o"), "--evals", "core",
                                  "--allow-non-causal"])
    assert allowed.exit_code == 0, allowed.output
    assert "mtsae-L5 [non-causal]" in allowed.stdout and "warning:" in allowed.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["allow_non_causal"] is True and summary["results"][0]["causal"] is False
    result = json.loads((tmp_path / "o" / summary["results"][0]["result"]).read_text())
    assert result["sae_cfg_dict"]["mtsae_is_causal"] is False
