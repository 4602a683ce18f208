"""--target-l0: the controller's law, and real training runs held at the requested L0."""

from __future__ import annotations

import math

import pytest

from mtsae.errors import MtsaeError
from mtsae.train.checkpoint import load_checkpoint
from mtsae.train.sparsity_control import ADAPT_FRACTION, GAIN, L0Controller
from mtsae.train.trainer import Trainer, read_log, train
from tests.test_trainer import QUIET, tiny_config


def test_controller_raises_the_penalty_when_too_dense_and_lowers_it_when_too_sparse():
    control = L0Controller.for_run(target=10.0, warmup_steps=0, total_steps=100)
    control.update(0, 40.0)
    assert control.multiplier > 1.0
    assert control.log_multiplier == pytest.approx(GAIN * 1.0)  # log(4) > 1: the step is clipped
    before = control.log_multiplier
    control.update(1, 10.0 * math.exp(-0.5))
    assert control.log_multiplier == pytest.approx(before - GAIN * 0.5)


def test_controller_only_adapts_between_warmup_and_the_freeze():
    control = L0Controller.for_run(target=5.0, warmup_steps=10, total_steps=100)
    assert (control.adapt_from, control.adapt_until) == (10, int(ADAPT_FRACTION * 100))
    for step in (0, 9, 80, 99):
        control.update(step, 500.0)
    assert control.log_multiplier == 0.0
    control.update(10, 500.0)
    control.update(79, float("nan"))  # a non-finite batch L0 never moves the coefficient
    assert control.log_multiplier == pytest.approx(GAIN)


def test_target_l0_holds_relu_training_near_the_target(tiny_cache_path, tmp_path):
    free = train(tiny_config(tiny_cache_path, tmp_path / "free", "relu", steps=300), **QUIET)
    target = free.metrics["l0"] / 3
    held = train(tiny_config(tiny_cache_path, tmp_path / "held", "relu", steps=300, target_l0=target), **QUIET)
    assert abs(math.log(held.metrics["l0"] / target)) < abs(math.log(free.metrics["l0"] / target)) / 2
    assert held.metrics["l0"] == pytest.approx(target, rel=0.35)
    _, meta = load_checkpoint(held.checkpoint)
    coefficient = meta["sparsity_coefficient"]
    assert coefficient["name"] == "l1_coefficient" and coefficient["multiplier"] > 1.5
    # The log shows the effective sparsity scale frozen after 80 % of the steps.
    scales = [r["sparsity_scale"] for r in read_log(tmp_path / "held" / "log.jsonl") if r["split"] == "train"]
    assert len(set(scales[int(ADAPT_FRACTION * 300) + 1:])) == 1 and scales[-1] == pytest.approx(coefficient["multiplier"])


def test_resume_with_target_l0_is_bit_exact(tiny_cache_path, tmp_path):
    cfg = dict(steps=16, checkpoint_every=6, target_l0=3.0)
    straight = train(tiny_config(tiny_cache_path, tmp_path / "a", "mtsae", **cfg), **QUIET)
    split = tiny_config(tiny_cache_path, tmp_path / "b", "mtsae", **cfg)
    Trainer(split, **QUIET).fit(stop_at=7)
    resumed = Trainer(split, resume=True, **QUIET).fit()
    assert read_log(tmp_path / "a" / "log.jsonl") == read_log(tmp_path / "b" / "log.jsonl")
    assert load_checkpoint(straight.checkpoint)[1]["sparsity_coefficient"] == \
        load_checkpoint(resumed.checkpoint)[1]["sparsity_coefficient"]


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_target_l0_is_refused_where_l0_is_set_by_k(tiny_cache_path, tmp_path, arch):
    with pytest.raises(MtsaeError, match="--k"):
        tiny_config(tiny_cache_path, tmp_path / "x", arch, target_l0=8.0).validate()


@pytest.mark.parametrize("value", [0, -1.0, 1e9, "8"])
def test_target_l0_values_are_checked(tiny_cache_path, tmp_path, value):
    with pytest.raises(MtsaeError, match="--target-l0"):
        tiny_config(tiny_cache_path, tmp_path / "x", "relu", target_l0=value).validate()
