"""The CLI: harvest -> cache info / ls, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
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


def _entry_point(*args: str) -> subprocess.CompletedProcess:
    """The installed `mtsae` (its ``main``), in a fresh process; reports which heavy modules it imported."""
    code = ("import sys; from mtsae.cli import main; sys.argv = ['mtsae', *sys.argv[1:]]; code = main(); "
            "print('heavy:', sorted(m for m in ('torch', 'zarr', 'transformers') if m in sys.modules)); sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})


def test_help_and_usage_errors_import_neither_torch_nor_zarr():
    """What made `mtsae --help` and a mistyped option take 10-25 s: torch and every architecture, up front."""
    for args in (["--help"], ["train", "--help"], ["train", "--bogus"], ["harvest", "--max-tokens", "abc"]):
        proc = _entry_point(*args)
        assert "heavy: []" in proc.stdout, (args, proc.stdout[-300:])


def test_usage_errors_are_one_error_line_with_exit_code_2():
    proc = _entry_point("train", "--bogus")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: No such option: --bogus (Possible options: --out); see 'mtsae train --help'"
    missing = _entry_point("analyze")
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: Missing argument 'run'")
    assert len(missing.stderr.strip().splitlines()) == 1 and "╭" not in missing.stderr
    bare = _entry_point()  # no command: the help, as before
    assert bare.returncode == 0 and "harvest" in bare.stdout


def test_preset_help_says_what_each_preset_is():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    text = " ".join(result.stdout.replace("│", " ").split())  # rich's box, wrapped wherever the width falls
    assert "run1 = MTSAE dilations (1,2,4), circular padding over 8-token windows" in text
    assert "run0 = per-token ReLU SAE baseline" in text


@pytest.mark.parametrize("typo, meant", [("embeded", "embedded"), ("embedded_random", "embedded-random"),
                                         ("embeded-full", "embedded-full"), ("wrold", "world")])
def test_experiment_name_typo_gets_a_suggestion(typo, meant):
    from mtsae.evaluate.experiment_builtins import BUILTIN

    result = runner.invoke(app, ["experiment", typo])
    assert result.exit_code == 1 and f"(did you mean '{meant}'?)" in result.stderr
    assert f"one of {', '.join(BUILTIN)}" in result.stderr and "embedded-random" in BUILTIN


def test_readme_logs_in_with_hf_and_walks_gemma_from_harvest_to_eval():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = [line.split("#")[0].strip() for line in readme.splitlines()]
    assert "hf auth login" in commands and "huggingface-cli login" not in commands  # huggingface_hub 1.x: no such command
    gemma = readme[readme.index("hf auth login"):]
    for step in ("mtsae harvest --model google/gemma-2-2b", "mtsae train", "--d-sae 16384", "mtsae eval"):
        assert step in gemma, step


def test_help_into_a_closed_pipe_ends_without_a_traceback():
    """`mtsae harvest --help | head -1`: the reader leaves early; no AttributeError from the abort handler."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "mtsae", "harvest", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**__import__("os").environ, "COLUMNS": "80"})
    proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in stderr, stderr[-2000:]
