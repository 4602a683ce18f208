"""Fuzz every command's options with malformed and edge values: never a crash, never a traceback.

Each example sets one or two options of a command to a generated value (huge and negative numbers,
NaN, garbage and odd-unicode strings, bad layer lists, bad paths). Whatever the value, the command
must end in exit code 0, a usage error (exit 2), or exactly one `error:` line (exit 1) — no
traceback. The other arguments make each command fail fast right after validation (a cache, dataset,
checkpoint or run that does not exist, an output that exists), so a value that passes validation
never starts real work.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mtsae.cli import app

runner = CliRunner()

EDGE = st.sampled_from([
    "", " ", "0", "-1", "1e3", "nan", "inf", "-inf", "1e309", "٣", "0x1f", "--", "-", "5,,19", "a,b", "5;19",
    " 5 , 19 ", "9" * 40, "-" + "9" * 40, "é", "日本語", "\u202e", "a" * 300, "x/" * 200 + "y", "zz://bucket/x",
    "line\nbreak", "tab\there", "\udcff", "🙂", "-5,19", "5,5", "1000000", "cuda:99", "float64", "mtsae",
])
INTEGERS = st.integers(min_value=-(10**30), max_value=10**30).map(str)
FLOATS = st.floats(allow_nan=True, allow_infinity=True).map(repr)
TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)
VALUES = st.one_of(EDGE, INTEGERS, FLOATS, TEXT)

MISSING = "no-such-thing/really-not-here"
# Per command: the options to fuzz, and arguments that make it stop right after validating them.
COMMANDS = {
    "harvest": (["--model", "--dataset", "--split", "--text-column", "--layers", "--context-len", "--max-tokens",
                 "--batch-size", "--dtype", "--device", "--attn-implementation", "--chunk-tokens", "--compression",
                 "--out"],
                ["--dataset", f"{MISSING}.jsonl", "--no-progress"]),
    "train": (["--cache", "--out", "--preset", "--arch", "--layer", "--d-sae", "--l1-coefficient", "--k", "--dilations",
               "--cos-coefficient", "--padding", "--kernel-size", "--arch-option", "--window", "--stride",
               "--batch-windows", "--train-tokens", "--steps", "--lr", "--lr-warmup-steps", "--lr-decay",
               "--lr-decay-fraction", "--sparsity-warmup-steps", "--target-l0", "--grad-clip",
               "--normalize-activations", "--holdout-fraction", "--eval-every", "--eval-tokens", "--checkpoint-every",
               "--seed", "--device", "--dtype", "--prefetch-batches", "--config"],
              ["--cache", MISSING, "--out", "fuzz-run", "--no-progress"]),
    "eval": (["--out", "--evals", "--model", "--unlearning-model", "--profile", "--config", "--offline",
              "--forget-corpus", "--device", "--llm-dtype", "--llm-batch-size"],
             [MISSING, "--out", "fuzz-eval"]),
    "synth": (["--d-model", "--n-features", "--n-sequences", "--seq-len", "--min-dwell", "--max-dwell", "--p-active",
               "--noise", "--seed"],
              ["--out", "exists"]),
    "analyze": (["--cache", "--max-windows", "--max-lag", "--out"], [MISSING]),
    "report": (["--out", "--loss-components"], [MISSING, "--out", "fuzz-report"]),
    "experiment": (["--out"], [MISSING + ".toml"]),
    "unlearn": (["--out", "--latents", "--clamp", "--retain-threshold", "--forget-documents", "--retain-documents",
                 "--seq-len", "--batch-size", "--device"], [MISSING, "--no-progress"]),
}
POSITIONAL = {  # commands whose first argument is a path: fuzz that too
    ("cache", "info"): [], ("cache", "verify"): ["--no-progress"], ("cache", "ls"): [],
    ("cache", "audit"): ["--device", "cpu"], ("cache", "upgrade"): [],
    ("analyze",): [], ("eval",): ["--out", "fuzz-eval"], ("experiment",): [], ("report",): ["--out", "fuzz-report"],
    ("unlearn",): ["--out", "fuzz-unlearn"],
}


@pytest.fixture(scope="module", autouse=True)
def in_a_scratch_folder(tmp_path_factory):
    """Relative paths land in a throw-away folder; `exists` is the existing output synth must refuse."""
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "exists").mkdir()
    before = os.getcwd()
    os.chdir(folder)
    yield folder
    os.chdir(before)


def is_existing_path(value: str) -> bool:
    """Existing paths such as / or . are left out: a dataset or cache listing would walk them for real."""
    try:
        return value.strip() in ("", ".", "..", "~") or os.path.lexists(value)
    except (OSError, ValueError):
        return False


def assert_clean_outcome(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert "Traceback" not in result.output, (args, result.output)
    if result.exit_code in (0, 2):  # done, or click's usage error ("Invalid value for '--steps'")
        assert result.exit_code == 0 or "Usage:" in result.output, (args, result.output)
        return
    assert result.exit_code == 1, (args, result.exit_code, result.output)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], (args, result.stderr)


FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@FUZZ
@given(data=st.data())
def test_option_values_never_crash(data):
    command = data.draw(st.sampled_from(sorted(COMMANDS)), label="command")
    options, fail_fast = COMMANDS[command]
    chosen = data.draw(st.lists(st.sampled_from(options), min_size=1, max_size=2, unique=True), label="options")
    args = [command, *fail_fast]
    for option in chosen:
        value = data.draw(VALUES.filter(lambda v: not is_existing_path(v)), label=option)
        args += [option, value]
    assert_clean_outcome(args)


@FUZZ
@given(data=st.data())
def test_path_arguments_never_crash(data):
    command = data.draw(st.sampled_from(sorted(POSITIONAL)), label="command")
    value = data.draw(VALUES.filter(lambda v: not is_existing_path(v)), label="path")
    assert_clean_outcome([*command, value, *POSITIONAL[command]])


def test_the_fail_fast_arguments_really_fail_fast():
    """Guard for the fuzz above: with valid option values, every command stops with one error line."""
    for command, (_options, fail_fast) in COMMANDS.items():
        result = runner.invoke(app, [command, *fail_fast])
        assert result.exit_code == 1, (command, result.output)
        assert result.stderr.strip().splitlines()[-1].startswith("error:"), (command, result.stderr)
    assert Path("fuzz-run").exists() is False and Path("fuzz-eval").exists() is False


@pytest.mark.parametrize(
    "args",
    [
        ["analyze", "line\nbreak"],  # a line break in a value must not split the error line
        ["analyze", "0\x1e"],  # nor a character str.splitlines() breaks at
        ["cache", "info", "a" * 300],  # ENAMETOOLONG from the OS: one line, not a traceback
        ["cache", "ls", "a" * 300],
        ["synth", "--out", "exists", "--seed", "-1"],  # numpy refuses negative seeds: caught by validation
        ["synth", "--out", "exists", "--max-dwell", "inf"],
        ["train", "--cache", MISSING, "--out", "r", "--seed", str(2**64)],  # torch refuses seeds >= 2**64
        ["train", "--cache", "zz://bucket/x", "--out", "r"],  # an unknown URL protocol
    ],
    ids=["newline", "record-separator", "long-name-info", "long-name-ls", "negative-seed", "infinite-dwell",
         "huge-seed", "unknown-protocol"],
)
def test_values_the_fuzzer_found(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, (args, result.output)
    assert_clean_outcome(args)
