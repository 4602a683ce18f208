"""The CLI: harvest -> cache info / ls, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from conftest import TINY_HARVEST
from mtsae.cli import app

runner = CliRunner()
TINY_ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_HARVEST.items()] + ["--no-progress"]


def test_harvest_then_info_and_ls(tmp_path):
    out = tmp_path / "caches" / "demo"
    result = runner.invoke(app, ["harvest", *TINY_ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)

    info = runner.invoke(app, ["cache", "info", str(out)])
    assert info.exit_code == 0
    assert "status       complete" in info.stdout and "blocks.19.hook_resid_post" in info.stdout

    manifest = json.loads(runner.invoke(app, ["cache", "info", str(out), "--json"]).stdout)
    assert manifest["counts"]["tokens"] <= TINY_HARVEST["max_tokens"] and manifest["layers"] == [5, 19]

    listing = runner.invoke(app, ["cache", "ls", str(tmp_path / "caches")])
    assert listing.exit_code == 0
    assert str(out) in listing.stdout and manifest["fingerprint"][:12] in listing.stdout

    again = runner.invoke(app, ["harvest", *TINY_ARGS, "--out", str(out)])
    assert again.exit_code == 0 and "nothing to do" in again.stderr


def test_default_output_is_content_addressed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["harvest", *TINY_ARGS, "--max-tokens=200"])
    assert result.exit_code == 0, result.output
    path = result.stdout.strip().splitlines()[-1]
    manifest = json.loads(runner.invoke(app, ["cache", "info", path, "--json"]).stdout)
    assert path == os.path.join("caches", manifest["fingerprint"][:12])


def test_user_errors_are_one_line_with_exit_code_1(tmp_path):
    cases = [
        ["harvest", *TINY_ARGS, "--layers", "5,99", "--out", str(tmp_path / "a")],
        ["harvest", *TINY_ARGS, "--layers", "five", "--out", str(tmp_path / "b")],
        ["harvest", *TINY_ARGS, "--text-column", "body", "--out", str(tmp_path / "c")],
        ["cache", "info", str(tmp_path)],
        ["cache", "ls", str(tmp_path / "nowhere")],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
        assert "Traceback" not in result.output


def test_help_shows_examples_and_defaults():
    result = runner.invoke(app, ["harvest", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0
    for expected in ("google/gemma-2-2b", "--max-tokens", "262144", "bfloat16", "--force"):
        assert expected in result.stdout, expected


def test_installed_entry_point_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mtsae", "cache", "info", str(tmp_path / "missing")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: no mtsae cache at {tmp_path / 'missing'}"
