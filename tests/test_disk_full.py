"""A full disk or a file-size limit in the middle of a harvest or a training run, for real.

Each run is a subprocess writing to a tiny tmpfs (ENOSPC; needs mount, so root) or under
RLIMIT_FSIZE (EFBIG; works anywhere on Linux). Either way: one `error:` line naming the problem
and the fix, exit code 1, no traceback, nothing marked complete; then the same command with
room finishes, identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from mtsae.cache import read_attrs
from mtsae.train.rundir import FINAL_DIRNAME
from test_resume import SETTINGS as HARVEST_SETTINGS
from test_resume import assert_same_store
from test_train_crash import ENV, assert_resumable_checkpoints_load, assert_same_run, train_cmd


def harvest_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "mtsae", "harvest", *HARVEST_SETTINGS, "--out", str(out)]


def file_size_limit(limit_bytes: int):
    """preexec_fn: writes past ``limit_bytes`` fail with EFBIG instead of killing the process (SIGXFSZ ignored)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def run(cmd: list[str], limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV,
                          preexec_fn=file_size_limit(limit_bytes) if limit_bytes else None)


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the RLIMIT_FSIZE tests cover EFBIG")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def grow(mountpoint: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mountpoint)], check=True)


def assert_one_line_error(done: subprocess.CompletedProcess, *phrases: str) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0], done.stderr[-2000:]
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


# --------------------------------------------------------------------------- harvest
@pytest.fixture(scope="module")
def harvest_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("harvest-ref") / "ref.zarr"
    done = run(harvest_cmd(out))
    assert done.returncode == 0, done.stderr
    return out


def test_harvest_on_a_full_disk_stops_cleanly_and_resumes(harvest_reference, tmp_path):
    with tiny_tmpfs(tmp_path / "disk", "200k") as disk:
        out = disk / "c.zarr"
        line = assert_one_line_error(run(harvest_cmd(out)), "no space left on the device", "free space",
                                     "re-run the same command to resume")
        assert f"in {out}" in line and "chunk" in line
        attrs = read_attrs(out)
        assert attrs["status"] == "incomplete" and attrs["progress"]["tokens"] > 0  # stopped mid-run, resumable
        grow(disk, "4m")
        resumed = run(harvest_cmd(out))
        assert resumed.returncode == 0 and "resuming the unfinished harvest" in resumed.stderr, resumed.stderr
        assert_same_store(harvest_reference, out)


def test_harvest_past_the_file_size_limit_stops_cleanly_and_reruns(harvest_reference, tmp_path):
    out = tmp_path / "c.zarr"
    # 128 tokens x d_model 64 x 2 bytes: each activation chunk is 16 KiB; the metadata stays below 8 KiB.
    assert_one_line_error(run(harvest_cmd(out), limit_bytes=8 * 1024), "file too large", "re-run the same command")
    assert read_attrs(out)["status"] == "incomplete"
    assert run(harvest_cmd(out)).returncode == 0
    assert_same_store(harvest_reference, out)


# --------------------------------------------------------------------------- train
@pytest.fixture(scope="module")
def train_reference(tiny_cache_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train-ref") / "run"
    done = run(train_cmd(tiny_cache_path, out))
    assert done.returncode == 0, done.stderr
    return out


def test_training_on_a_full_disk_stops_cleanly_and_resumes(tiny_cache_path, train_reference, tmp_path):
    with tiny_tmpfs(tmp_path / "disk", "400k") as disk:  # about four checkpoints fit
        out = disk / "run"
        assert_one_line_error(run(train_cmd(tiny_cache_path, out)), "no space left on the device", "free space",
                              "--resume")
        assert not (out / FINAL_DIRNAME).exists()
        assert assert_resumable_checkpoints_load(out)  # some checkpoints were written before the disk filled
        grow(disk, "16m")
        resumed = run(train_cmd(tiny_cache_path, out, "--resume"))
        assert resumed.returncode == 0, resumed.stderr
        assert_same_run(train_reference, out)


def test_training_past_the_file_size_limit_stops_cleanly_and_resumes(tiny_cache_path, train_reference, tmp_path):
    out = tmp_path / "run"
    # trainer_state.pt is ~60 KiB: the first checkpoint cannot be written.
    line = assert_one_line_error(run(train_cmd(tiny_cache_path, out), limit_bytes=32 * 1024), "file too large",
                                 "--resume")
    assert "checkpoint" in line and not (out / FINAL_DIRNAME).exists()
    assert assert_resumable_checkpoints_load(out) == []
    resumed = run(train_cmd(tiny_cache_path, out, "--resume"))
    assert resumed.returncode == 0 and "restarting the run from step 0" in resumed.stderr, resumed.stderr
    assert_same_run(train_reference, out)
