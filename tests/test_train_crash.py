"""Crash safety of training: SIGKILL `mtsae train` at random moments and mid-checkpoint, then --resume.

After every kill, each checkpoint that --resume could pick must load (weights and resume state of
the step its name says), and the resumed run must end bit-identical (CPU, fixed seed) to an
uninterrupted one: the same final weights, metrics and log.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtsae.train.checkpoint import load_checkpoint
from mtsae.train.rundir import CHECKPOINTS_DIRNAME, FINAL_DIRNAME, STATE_FILENAME, latest_checkpoint, read_log

# Tiny and checkpointing every step: most of the run's time is spent writing checkpoints.
STEPS = 30
TRAIN_ARGS = ["--arch", "relu", "--layer", "19", "--d-sae", "32", "--window", "16", "--batch-windows", "4",
              "--steps", str(STEPS), "--checkpoint-every", "1", "--eval-every", "7", "--eval-tokens", "0",
              "--holdout-fraction", "0.1", "--device", "cpu", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every process
_IN_FLIGHT = re.compile(r"^\.(step_\d+|final)\.tmp-")


def train_cmd(cache: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mtsae", "train", "--cache", str(cache), "--out", str(out), *TRAIN_ARGS, *extra]


def run_train(cache: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(cache, out, *extra), capture_output=True, text=True, timeout=300, env=ENV)


@pytest.fixture(scope="module")
def reference(tiny_cache_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train-ref") / "run"
    done = run_train(tiny_cache_path, out)
    assert done.returncode == 0, done.stderr
    return out


def checkpoint_in_flight(out: Path) -> bool:
    """A checkpoint is being written now: its temporary directory exists."""
    for folder in (out / CHECKPOINTS_DIRNAME, out):
        try:
            if any(_IN_FLIGHT.match(name) for name in os.listdir(folder)):
                return True
        except FileNotFoundError:
            pass
    return False


def kill_training(cache: Path, out: Path, mid_checkpoint: bool, delay: float) -> bool:
    """Start a run and SIGKILL it: right as a checkpoint is being written, or ``delay`` s after the first one.

    Returns whether the kill left a half-written checkpoint behind.
    """
    proc = subprocess.Popen(train_cmd(cache, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        deadline = time.time() + 120
        if mid_checkpoint:
            while proc.poll() is None and not checkpoint_in_flight(out) and time.time() < deadline:
                time.sleep(0.0005)  # a checkpoint takes milliseconds
        else:
            while proc.poll() is None and latest_checkpoint(out) is None and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return checkpoint_in_flight(out)


def assert_resumable_checkpoints_load(out: Path) -> list[int]:
    """Every checkpoint --resume could pick holds the SAE and resume state of its step; returns the steps."""
    steps = []
    for path in sorted((out / CHECKPOINTS_DIRNAME).glob("step_*")):
        assert (path / STATE_FILENAME).is_file(), f"{path} is visible but has no resume state"
        step = int(path.name.split("_")[1])
        state = torch.load(path / STATE_FILENAME, map_location="cpu", weights_only=True)
        _, metadata = load_checkpoint(path)
        assert state["step"] == metadata["steps"] == step, path
        steps.append(step)
    latest = latest_checkpoint(out)
    assert (latest is None) == (not steps) and (latest is None or latest.name == f"step_{max(steps):06d}")
    return steps


def assert_same_run(reference: Path, out: Path) -> None:
    a, meta_a = load_checkpoint(reference / FINAL_DIRNAME)
    b, meta_b = load_checkpoint(out / FINAL_DIRNAME)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    for key in ("final_metrics", "steps", "tokens_seen", "activation_scale"):
        assert meta_a[key] == meta_b[key], key
    assert read_log(reference / "log.jsonl") == read_log(out / "log.jsonl")


def kill_resume_compare(cache: Path, reference: Path, out: Path, mid_checkpoint: bool, delay: float) -> bool:
    torn = kill_training(cache, out, mid_checkpoint, delay)
    assert_resumable_checkpoints_load(out)
    if not (out / FINAL_DIRNAME).exists():  # else the run finished before the kill landed
        resumed = run_train(cache, out, "--resume")
        assert resumed.returncode == 0, resumed.stderr
    assert not checkpoint_in_flight(out)  # the resumed run cleared the half-written leftovers
    assert_same_run(reference, out)
    return torn


def kill_loop(cache: Path, reference: Path, tmp_path: Path, kills: int, seed: int) -> list[bool]:
    rng = random.Random(seed)
    return [kill_resume_compare(cache, reference, tmp_path / f"run{i}", mid_checkpoint=i % 2 == 0,
                                delay=rng.uniform(0.0, 1.5)) for i in range(kills)]


def test_a_kill_at_a_random_moment_resumes_to_the_identical_run(tiny_cache_path, reference, tmp_path):
    delay = random.Random(0).uniform(0.0, 1.5)
    kill_resume_compare(tiny_cache_path, reference, tmp_path / "run", mid_checkpoint=False, delay=delay)


def test_a_kill_mid_checkpoint_leaves_only_a_hidden_temporary(tiny_cache_path, reference, tmp_path):
    """At least one kill must land inside a checkpoint write, or the test proves nothing about atomicity."""
    for attempt in range(5):
        out = tmp_path / f"run{attempt}"
        if kill_resume_compare(tiny_cache_path, reference, out, mid_checkpoint=True, delay=0.0):
            return
    pytest.fail("5 kills aimed at a checkpoint write all missed it")


@pytest.mark.slow
def test_kill_loop_at_many_random_points(tiny_cache_path, reference, tmp_path):
    torn = kill_loop(tiny_cache_path, reference, tmp_path, kills=int(os.environ.get("MTSAE_KILLS", "12")), seed=1)
    print(f"{len(torn)} kills, {sum(torn)} inside a checkpoint write; every resumed run identical")
