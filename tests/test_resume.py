"""Crash safety of harvest: SIGKILL at random moments, re-run, byte-identical result; one writer at a time."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import tiny_harvest
from mtsae.cache import read_attrs
from mtsae.errors import MtsaeError

# Small chunks and batches: many durable points, so kills land everywhere.
SETTINGS = ["--max-tokens=3000", "--context-len=64", "--batch-size=2", "--chunk-tokens=128", "--no-progress"]
VOLATILE = {"completed_at", "harvest"}  # timing facts, allowed to differ


def _harvest_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "mtsae", "harvest", *SETTINGS, "--out", str(out)]


def _store_contents(path: Path) -> tuple[dict, dict]:
    group = zarr.open_group(str(path), mode="r")
    arrays = {name: arr[:] for name, arr in group.arrays()}
    arrays.update({f"activations/{name}": arr[:] for name, arr in group["activations"].arrays()})
    arrays.update({f"index/{name}": arr[:] for name, arr in group["index"].arrays()})
    attrs = {k: v for k, v in group.attrs["mtsae"].items() if k not in VOLATILE}
    return arrays, attrs


def assert_same_store(a: Path, b: Path) -> None:
    arrays_a, attrs_a = _store_contents(a)
    arrays_b, attrs_b = _store_contents(b)
    assert attrs_a == attrs_b
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        assert arrays_a[name].dtype == arrays_b[name].dtype and np.array_equal(arrays_a[name], arrays_b[name]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    subprocess.run(_harvest_cmd(out), check=True, capture_output=True, timeout=300)
    return out


def _kill_and_resume(out: Path, delay: float, after_store_exists: bool) -> str:
    """SIGKILL a harvest ``delay`` s after its start, or after its store appears (start-up time, which
    varies with the machine's load, then cannot swallow every kill), re-run it; the state it was killed in."""
    proc = subprocess.Popen(_harvest_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while after_store_exists and read_attrs(out) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = (read_attrs(out) or {}).get("status", "absent")
    subprocess.run(_harvest_cmd(out), check=True, capture_output=True, timeout=300)
    return state


def _kill_loop(reference: Path, tmp_path: Path, kills: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    states = []
    for i in range(kills):
        out = tmp_path / f"run{i}.zarr"
        mid_write = i % 2 == 0  # alternate: kills while writing, kills at any moment from the start
        states.append(_kill_and_resume(out, rng.uniform(0.0, 0.6) if mid_write else rng.uniform(1.0, 8.0), mid_write))
        assert_same_store(reference, out)
    return states


def test_killed_harvests_resume_to_identical_bytes(reference, tmp_path):
    states = _kill_loop(reference, tmp_path, kills=3, seed=0)
    assert "incomplete" in states, states  # at least one kill landed mid-write (all were checked byte for byte)


@pytest.mark.slow
def test_kill_loop_at_many_random_points(reference, tmp_path):
    states = _kill_loop(reference, tmp_path, kills=int(os.environ.get("MTSAE_KILLS", "20")), seed=1)
    print("states when killed:", states)


# A harvest run in a child that SIGKILLs itself when zarr first writes the store's attributes:
# "created" right after the empty group exists, "partial" with the attributes in zarr's temporary file.
_KILLED_AT_FIRST_ATTRS = """
import os, runpy, signal, sys
import zarr.storage._local as local
original_put, kill_at = local._put, sys.argv.pop(1)
def put(path, value, exclusive=False):
    if path.name == "zarr.json" and path.exists() and b'"mtsae"' in value.to_bytes():
        if kill_at == "partial":
            with local._atomic_write(path, "wb") as f:
                f.write(value.as_buffer_like())
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    return original_put(path, value, exclusive)
local._put = put
runpy.run_module("mtsae", run_name="__main__")
"""


@pytest.mark.parametrize("kill_at", ["created", "partial"])
def test_killed_between_creating_the_group_and_its_first_attributes(reference, tmp_path, kill_at):
    """The kill point the random loop rarely hits: an empty group, the lock, maybe a *.partial; resumed alike."""
    out = tmp_path / "c.zarr"
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT_FIRST_ATTRS, kill_at, *_harvest_cmd(out)[3:]],
                            capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    left = {p.name for p in out.iterdir()}
    partial = {name for name in left if name.startswith("zarr.") and name.endswith(".partial")}
    assert read_attrs(out) is None and left - partial == {".mtsae-harvest.lock", "zarr.json"}
    assert len(partial) == (1 if kill_at == "partial" else 0)
    rerun = subprocess.run(_harvest_cmd(out), capture_output=True, timeout=300, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "killed before it wrote anything" in rerun.stderr
    assert_same_store(reference, out)
    assert not list(out.glob("*.partial"))


def test_a_foreign_empty_group_is_still_refused(tmp_path):
    """Without the lock file a harvest creates first, an empty Zarr group is someone else's: never touched."""
    out = tmp_path / "theirs.zarr"
    zarr.open_group(str(out), mode="w", zarr_format=3)
    with pytest.raises(MtsaeError, match="not an mtsae cache"):
        tiny_harvest(out)
    assert (out / "zarr.json").is_file()


def test_second_harvest_into_the_same_store_is_refused(tmp_path):
    out = tmp_path / "c.zarr"
    proc = subprocess.Popen(_harvest_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while read_attrs(out) is None and time.time() < deadline:  # wait until it is writing
            time.sleep(0.05)
        with pytest.raises(MtsaeError, match="another harvest is writing"):
            tiny_harvest(out, max_tokens=3000, context_len=64, batch_size=2, chunk_tokens=128)
    finally:
        proc.wait(timeout=300)
    assert proc.returncode == 0 and read_attrs(out)["status"] == "complete"
    assert not (out / ".mtsae-harvest.lock").exists()  # a finished cache is plain zarr, nothing else
