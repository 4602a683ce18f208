"""The eval registry and the global generators an eval seeds."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from mtsae.evaluate import registry
from mtsae.evaluate.evals import Job, run_job
from mtsae.evaluate.rng import seeded


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), torch.rand(1).item()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_seeded_seeds_inside_and_gives_the_callers_streams_back_even_on_error():
    _seed_all(5)
    _draws()
    expected_after = _draws()
    _seed_all(5)
    _draws()
    with pytest.raises(RuntimeError), seeded(11):
        inside = _draws()
        raise RuntimeError("an eval crashing half-way")
    _seed_all(11)
    assert inside == _draws()
    _seed_all(5)
    _draws()
    with seeded(11):
        _draws()
    assert _draws() == expected_after


@pytest.mark.parametrize("crash", [False, True])
def test_an_eval_runs_seeded_and_leaves_the_global_generators_as_it_found_them(tmp_path, monkeypatch, crash):
    seen = {}

    def runner(job):
        seen["inside"] = _draws()
        if crash:
            raise RuntimeError("simulated SAE-Bench crash")

    monkeypatch.setitem(registry._REGISTRY, "core", dataclasses.replace(registry.get("core"), run=runner))
    _seed_all(3)
    expected_after = _draws()
    _seed_all(3)
    job = Job("core", "embedded", [], {"random_seed": 7}, "cpu", tmp_path, tmp_path / "work")
    assert run_job(job, log=lambda _: None) == {}
    assert _draws() == expected_after
    _seed_all(7)
    assert seen["inside"] == _draws()
    assert bool(job.errors) == crash
