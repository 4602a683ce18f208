"""Every bad input to `mtsae train`, `mtsae eval` and `mtsae analyze`: one `error:` line naming the problem
and the fix, exit code 1, no traceback, nothing lost (docs/errors.md lists each with its test).

Harvest's bad inputs are in tests/test_harvest.py and tests/test_cli.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from mtsae.cache import CacheWriter
from mtsae.cache import format as fmt
from mtsae.cli import app
from mtsae.train.checkpoint import CFG_FILENAME
from mtsae.train.config import TrainConfig
from mtsae.train.rundir import STATE_FILENAME, latest_checkpoint
from mtsae.train.trainer import Trainer
from test_eval_support import save

runner = CliRunner()
SMALL = ["--arch", "relu", "--d-sae", "16", "--window", "16", "--batch-windows", "4", "--steps", "4",
         "--eval-every", "0", "--holdout-fraction", "0.1", "--device", "cpu", "--no-progress"]


def assert_one_line_error(args: list[str], *phrases: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, (args, result.output, result.exception)
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    # One error line, and the last: only progress (a first-time model build) may come before it.
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    for phrase in phrases:
        assert phrase in errors[0], (phrase, errors[0])
    return errors[0]


# ----------------------------------------------------------------------------- caches made by hand
def write_cache(path: Path, poison: tuple[int, int] | None = None, format_version: int = fmt.FORMAT_VERSION) -> Path:
    """A complete float32 cache of 20 sequences x 32 tokens at layer 19 (d_model 8); ``poison``: NaN at (sequence, position)."""
    rng = np.random.default_rng(0)
    writer = CacheWriter.create(str(path), layers=[19], d_model=8, dtype_name="float32", capacity_tokens=640,
                                chunk_tokens=64, header={"fingerprint": "a" * 64, "layers": [19], "d_model": 8,
                                                         "dtype": "float32", "model": {"id": "hand-made"}})
    for seq in range(20):
        acts = rng.standard_normal((32, 8)).astype(np.float32)
        if poison and poison[0] == seq:
            acts[poison[1], 0] = np.nan
        special = np.zeros(32, dtype=bool)
        special[0] = True
        writer.add_sequence(seq, np.arange(32, dtype=np.int32), special, {19: acts})
        writer.mark()
    writer.finish({"counts": {"tokens": 640, "sequences": 20, "documents": 20}})
    if format_version != fmt.FORMAT_VERSION:
        group = zarr.open_group(str(path), mode="r+")
        group.attrs[fmt.ATTRS_KEY] = {**group.attrs[fmt.ATTRS_KEY], "format_version": format_version}
    return path


@pytest.fixture(scope="module")
def nan_cache(tmp_path_factory) -> Path:
    return write_cache(tmp_path_factory.mktemp("nan") / "nan.zarr", poison=(3, 5))


# ----------------------------------------------------------------------------- train
@pytest.mark.parametrize(
    "args,phrases",
    [
        (["--layer", "7"], ["layer 7 is not in cache", "pass --layer with one of them"]),
        (["--window", "100"], ["no held-out window of 100 tokens", "lower --window"]),
        (["--batch-windows", "100000"], ["fewer than one batch", "lower --batch-windows"]),
        (["--d-sae", str(10**12)], ["cannot allocate a relu SAE with d_sae 1000000000000", "lower --d-sae"]),
        (["--seed", str(2**64)], ["--seed must be an integer in [0, 2**64)"]),
        (["--device", "tpu:9"], ["--device 'tpu:9' is not a torch device"]),
        (["--lr", "nan"], ["--lr must be a positive number"]),
        (["--holdout-fraction", "1"], ["--holdout-fraction must be in (0, 1)"]),
        (["--arch-option", "bogus=1"], ["bogus"]),
    ],
    ids=["layer-not-in-cache", "window-longer-than-sequences", "no-whole-batch", "d-sae-too-big", "seed-too-big",
         "unknown-device", "nan-lr", "no-holdout", "unknown-arch-option"],
)
def test_train_bad_option_values(tiny_cache_path, tmp_path, args, phrases):
    out = tmp_path / "run"
    assert_one_line_error(["train", "--cache", tiny_cache_path, "--out", out, *SMALL, "--layer", "19", *args], *phrases)
    assert not (out / "final").exists()


def test_train_on_a_cache_from_a_future_format(tmp_path):
    cache = write_cache(tmp_path / "future.zarr", format_version=fmt.FORMAT_VERSION + 1)
    assert_one_line_error(["train", "--cache", cache, "--out", tmp_path / "run", *SMALL, "--layer", "19"],
                          f"has format version {fmt.FORMAT_VERSION + 1}", "upgrade mtsae")


def test_train_on_non_finite_activations(nan_cache, tmp_path):
    base = ["train", "--cache", nan_cache, *SMALL, "--layer", "19", "--steps", "40"]
    assert_one_line_error([*base, "--out", tmp_path / "a"], "cannot normalise activations of layer 19",
                          "non-finite", "--normalize-activations none")
    assert_one_line_error([*base, "--out", tmp_path / "b", "--normalize-activations", "none"], "the loss became nan",
                          "check the cache for non-finite activations")
    assert not (tmp_path / "a" / "final").exists() and not (tmp_path / "b" / "final").exists()


@pytest.mark.parametrize(
    "text,phrases",
    [
        ('steps = "ten"\n', ["--steps must be at least 1", "got 'ten'"]),
        ("layer = -1\n", ["--layer must be a non-negative integer, got -1"]),
        ("arch_config = 3\n", ["arch_config must be a table"]),
        ('window = 16\n[arch_config]\nl1_coefficient = "lots"\n', ["l1_coefficient = 'lots' is not a float"]),
        ("learning_rate = 1\n", ["unknown training option(s) ['learning_rate']"]),
        ("steps = \n", ["is not valid TOML", "fix the syntax"]),
        (b"\xff\xfe".decode("latin-1") + "steps = 1\n", ["is not valid TOML"]),
    ],
    ids=["string-for-int", "negative-layer", "arch-config-not-a-table", "bad-arch-value", "unknown-key",
         "syntax", "not-utf8"],
)
def test_train_malformed_config_files(tiny_cache_path, tmp_path, text, phrases):
    config = tmp_path / "train.toml"
    config.write_bytes(f'cache = "{tiny_cache_path}"\nout = "{tmp_path / "run"}"\narch = "relu"\n'.encode() +
                       text.encode("latin-1"))
    assert_one_line_error(["train", "--config", config, "--no-progress"], *phrases)


def test_train_config_path_that_is_a_folder(tmp_path):
    assert_one_line_error(["train", "--config", tmp_path], "cannot read config file", "check the --config path")


def _stopped_run(cache: Path, out: Path, **overrides) -> Path:
    values = dict(cache=str(cache), out=str(out), arch="relu", layer=19, d_sae=16, window=16, batch_windows=4, steps=6,
                  eval_every=0, holdout_fraction=0.1, checkpoint_every=3, device="cpu")
    cfg = TrainConfig(**{**values, **overrides})
    Trainer(cfg, progress=False, log=lambda _line: None).fit(stop_at=3)
    return out


def test_resume_refuses_a_checkpoint_of_another_run(tiny_cache_path, tmp_path):
    run = _stopped_run(tiny_cache_path, tmp_path / "run")
    other = _stopped_run(tiny_cache_path, tmp_path / "other", d_sae=24)  # other width: its tensors do not fit
    shutil.rmtree(latest_checkpoint(run))
    shutil.copytree(latest_checkpoint(other), run / "checkpoints" / "step_000003")
    line = assert_one_line_error(["train", "--cache", tiny_cache_path, "--out", run, *SMALL, "--steps", "6",
                                  "--checkpoint-every", "3", "--resume"], "it is a checkpoint of another run")
    assert "remove it" in line and (run / "checkpoints" / "step_000003" / STATE_FILENAME).is_file()  # nothing deleted


def test_resume_names_a_damaged_resume_state(tiny_cache_path, tmp_path):
    run = _stopped_run(tiny_cache_path, tmp_path / "run")
    state = latest_checkpoint(run) / STATE_FILENAME
    state.write_bytes(state.read_bytes()[:100])
    assert_one_line_error(["train", "--cache", tiny_cache_path, "--out", run, *SMALL, "--steps", "6",
                           "--checkpoint-every", "3", "--resume"], "is unreadable", "remove that checkpoint directory")


def test_resume_on_another_cache_is_refused(tiny_cache_path, nan_cache, tmp_path):
    run = _stopped_run(tiny_cache_path, tmp_path / "run")
    assert_one_line_error(["train", "--cache", nan_cache, "--out", run, *SMALL, "--steps", "6", "--checkpoint-every",
                           "3", "--resume", "--layer", "19"], "cannot resume", "cache (fingerprint)")


# ----------------------------------------------------------------------------- eval
@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    return save(tmp_path_factory.mktemp("ckpt"), "relu")


def test_eval_checkpoints_that_do_not_fit_the_model(tmp_path):
    cases = [
        (save(tmp_path / "a", "relu", layer=30), ["reads layer 30, but embedded has 26 layers"]),
        (save(tmp_path / "b", "relu", d_in=32), ["has d_in 32", "it was trained on another model"]),
        (save(tmp_path / "c", "relu", model="no-such-org/no-such-model"),
         ["cannot resolve model 'no-such-org/no-such-model'", "--offline"]),
    ]
    for checkpoint, phrases in cases:
        assert_one_line_error(["eval", checkpoint, "--out", tmp_path / "out", "--evals", "core"], *phrases)
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_eval_on_another_model_than_trained(good_checkpoint, tmp_path):
    assert_one_line_error(["eval", good_checkpoint, "--out", tmp_path / "out", "--evals", "core", "--model",
                           "google/gemma-2-2b"], "was trained on embedded", "drop --model")


def test_eval_checkpoint_from_a_future_format(good_checkpoint, tmp_path):
    future = tmp_path / "future"
    shutil.copytree(good_checkpoint, future)
    cfg = json.loads((future / CFG_FILENAME).read_text())
    cfg["mtsae"]["format_version"] = 99
    (future / CFG_FILENAME).write_text(json.dumps(cfg))
    assert_one_line_error(["eval", future, "--out", tmp_path / "out", "--evals", "core"],
                          "has mtsae checkpoint format 99", "the mtsae version that wrote it")


@pytest.mark.parametrize(
    "args,phrases",
    [
        (["--evals", "core,ravel"], ["--evals takes a comma-separated subset"]),
        (["--profile", "huge"], ["--profile must be one of"]),
        (["--llm-batch-size", "0"], ["--llm-batch-size must be at least 1"]),
        (["--llm-dtype", "int8"], ["--llm-dtype must be float32, bfloat16 or float16"]),
        (["--device", "cuda:7"], ["no usable GPU"] if not torch.cuda.is_available() else ["cuda"]),
        (["--offline", "/no/such/mirror"], ["/no/such/mirror"]),
    ],
    ids=["unknown-eval", "unknown-profile", "zero-batch", "bad-dtype", "missing-gpu", "missing-mirror"],
)
def test_eval_bad_option_values(good_checkpoint, tmp_path, args, phrases):
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("this machine has the GPU the test asks for")
    assert_one_line_error(["eval", good_checkpoint, "--out", tmp_path / "out", *args], *phrases)


@pytest.mark.parametrize(
    "text,phrases",
    [
        ("[core]\nn_eval_reconstruction_batches = \n", ["is not valid TOML", "fix the syntax"]),
        ("[core]\nn_batches = 3\n", ["unknown key(s) ['n_batches']"]),
        ("[ravel]\nx = 1\n", ["unknown table [ravel]"]),
        ('[common]\nllm_batch_size = "big"\n', ["llm_batch_size = 'big' should be a int"]),
        ("[core]\nn_eval_reconstruction_batches = 2.5\n", ["should be a int"]),
        ('[sparse_probing]\ndataset_names = "ag_news"\n', ["dataset_names = 'ag_news' should be a list"]),
    ],
    ids=["syntax", "unknown-key", "unknown-table", "string-for-int", "float-for-int", "string-for-list"],
)
def test_eval_malformed_config_files(good_checkpoint, tmp_path, text, phrases):
    config = tmp_path / "eval.toml"
    config.write_text(text)
    assert_one_line_error(["eval", good_checkpoint, "--out", tmp_path / "out", "--evals", "core", "--config", config],
                          *phrases)
    assert not (tmp_path / "out").exists()


def test_eval_config_path_that_is_a_folder(good_checkpoint, tmp_path):
    assert_one_line_error(["eval", good_checkpoint, "--out", tmp_path / "out", "--config", tmp_path],
                          "cannot read config file")


# ----------------------------------------------------------------------------- analyze
def test_analyze_with_a_cache_of_another_width(tiny_cache_path, tmp_path):
    run = tmp_path / "run"
    done = runner.invoke(app, ["train", "--cache", str(tiny_cache_path), "--out", str(run), *SMALL, "--layer", "19"])
    assert done.exit_code == 0, done.output
    other = write_cache(tmp_path / "narrow.zarr")  # layer 19 too, but 8 wide instead of 64
    assert_one_line_error(["analyze", run, "--cache", other, "--max-windows", "4"],
                          "reads 64-wide activations", "is 8 wide", "pass the cache it was trained on")
