"""--target-l0: the controller's law, and real training runs held at the requested L0."""

from __future__ import annotations

import math

import pytest

from mtsae.errors import MtsaeError
from mtsae.train.checkpoint import load_checkpoint
from mtsae.harvest.synth import SynthConfig, synthesize
from mtsae.train.config import TrainConfig
from mtsae.train.sparsity_control import ADAPT_FRACTION, GAIN, MAX_LOG, PROPORTIONAL, SMOOTHING, L0Controller
from mtsae.train.trainer import Trainer, read_log, train
from tests.test_trainer import QUIET, tiny_config


def test_controller_raises_the_penalty_when_too_dense_and_lowers_it_when_too_sparse():
    control = L0Controller.for_run(target=10.0, warmup_steps=0, total_steps=100)
    control.update(0, 40.0)
    assert control.multiplier > 1.0
    smoothed = (1 - SMOOTHING) * 1.0  # log(4) > 1: the error is clipped
    assert control.log_multiplier == pytest.approx(GAIN * smoothed + PROPORTIONAL * smoothed)
    control.update(1, 10.0 * math.exp(-0.5))
    smoothed2 = SMOOTHING * smoothed + (1 - SMOOTHING) * -0.5
    integral = GAIN * smoothed  # |ē| fell from 0.1 to 0.04: closing, so no integral step (conditional integration)
    assert control.log_multiplier == pytest.approx(integral + PROPORTIONAL * smoothed2)
    for step in range(2, 60):
        control.update(step, 2.0)
    assert control.multiplier < 1.0


def test_controller_only_adapts_between_warmup_and_the_freeze():
    control = L0Controller.for_run(target=5.0, warmup_steps=10, total_steps=100)
    assert (control.adapt_from, control.adapt_until) == (10, int(ADAPT_FRACTION * 100))
    for step in (0, 9, 80, 99):
        control.update(step, 500.0)
    assert control.log_multiplier == 0.0
    control.update(10, 500.0)
    control.update(79, float("nan"))  # a non-finite batch L0 never moves the coefficient
    smoothed = (1 - SMOOTHING) * 1.0
    assert control.log_multiplier == pytest.approx(GAIN * smoothed + PROPORTIONAL * smoothed)


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


def test_pi_law_backs_off_at_once_when_the_target_is_passed():
    """The proportional term lowers m the step L0 falls below target; a pure integral would still be raising it."""
    control = L0Controller.for_run(target=5.0, warmup_steps=0, total_steps=1000)
    for step in range(40):
        control.update(step, 20.0)
    high = control.log_multiplier
    control.update(40, 2.0)
    assert control.log_multiplier < high - 0.1  # a pure integral would have moved only by GAIN·ē
    assert control.integral < high


def test_integral_holds_while_l0_is_already_closing_on_the_target():
    """A slow plant (JumpReLU θ moves at most lr per step) that is on its way must not wind the integral up:
    once the smoothed error follows L0 falling 2 % a step from 2x the target, I stays where it was."""
    control = L0Controller.for_run(target=16.0, warmup_steps=0, total_steps=1000)
    l0 = 36.0
    for step in range(60):
        control.update(step, l0)
    for step in range(60, 90):  # ends at L0 19.6, still above the target
        l0 *= 0.98
        control.update(step, l0)
        if step == 74:
            steady = control.integral  # the EMA's slope has caught up with L0's
    assert control.integral == pytest.approx(steady)
    for step in range(90, 150):  # stalled above the target: once ē has settled, integrating again
        control.update(step, l0)
    assert control.integral > steady + 30 * GAIN * math.log(l0 / 16.0)


def test_integral_is_clamped_so_it_cannot_wind_up():
    control = L0Controller.for_run(target=1.0, warmup_steps=0, total_steps=100_000)
    for step in range(50_000):
        control.update(step, 1000.0)
    assert control.integral == pytest.approx(MAX_LOG)
    # Coming back takes as long as the clamp allows, not as long as the plant was saturated.
    steps_back = next(s for s in range(50_000, 80_000) if (control.update(s, 0.01) or control.multiplier < 1.0))
    assert steps_back - 50_000 < 2 * MAX_LOG / GAIN


def test_controller_state_round_trips_and_reads_old_checkpoints():
    control = L0Controller.for_run(target=5.0, warmup_steps=0, total_steps=100)
    for step, l0 in enumerate([9.0, 7.0, 4.0]):
        control.update(step, l0)
    other = L0Controller.for_run(target=5.0, warmup_steps=0, total_steps=100)
    other.restore(control.state())
    assert other == control
    legacy = L0Controller.for_run(target=5.0, warmup_steps=0, total_steps=100)
    legacy.restore(0.7)  # trainer_state.pt from before the PI law held only log m
    assert legacy.multiplier == pytest.approx(math.exp(0.7)) and legacy.integral == 0.7


@pytest.mark.slow
@pytest.mark.parametrize("target", [2.5, 4.0])
def test_jumprelu_reaches_its_target_l0_on_a_tiny_synthetic_run(tmp_path, target):
    """Default JumpReLU (threshold/bandwidth relative to normalised inputs) + --target-l0 + L0 warm-up:
    held-out L0 within ±20 % of the target (the truth's L0 is ~5; an L0 penalty can only sparsify)."""
    synthesize(SynthConfig(d_model=32, n_features=128, n_sequences=96, seq_len=64, p_active=0.04, seed=2),
               str(tmp_path / "synth"))
    cfg = TrainConfig(cache=str(tmp_path / "synth"), out=str(tmp_path / "run"), arch="jumprelu", layer=0,
                      d_sae=128, window=64, batch_windows=16, lr=3e-3, steps=300, target_l0=target,
                      sparsity_warmup_steps=30, holdout_fraction=0.1, eval_every=0, checkpoint_every=0,
                      eval_tokens=0, prefetch_batches=0)
    result = train(cfg, **QUIET)
    assert result.metrics["l0"] == pytest.approx(target, rel=0.2)


@pytest.mark.slow
def test_jumprelu_recovers_features_about_as_well_as_topk_at_the_same_l0(tmp_path):
    """Regression (issue 16 point 4): from the least-squares start that LM caches need, θ began at ~0.5 while
    synthetic features need ~1.7, and a plain θ moves at most lr a step, so JumpReLU spent the run far above the
    target L0 and recovered 0 % of the features (TopK 98 %). θ = exp(r·φ) following the encoder's scale fixes it."""
    from mtsae.evaluate.ground_truth import recovery_metrics
    from mtsae.harvest.synth import load_ground_truth

    synthesize(SynthConfig(d_model=32, n_features=96, n_sequences=96, seq_len=64, p_active=0.04, seed=2),
               str(tmp_path / "synth"))
    truth = load_ground_truth(str(tmp_path / "synth"))
    common = dict(cache=str(tmp_path / "synth"), layer=0, d_sae=128, window=64, batch_windows=16, lr=3e-3,
                  steps=300, holdout_fraction=0.1, eval_every=0, checkpoint_every=0, eval_tokens=0,
                  prefetch_batches=0)
    recovered = {}
    for arch, options in (("jumprelu", dict(target_l0=3.5, sparsity_warmup_steps=30)), ("topk", {})):
        cfg = TrainConfig(out=str(tmp_path / arch), arch=arch, **common, **options,
                          **({"arch_config": {"k": 4}} if arch == "topk" else {}))
        sae = load_checkpoint(train(cfg, **QUIET).checkpoint).sae
        recovered[arch] = recovery_metrics(sae.W_dec.detach().float().numpy(), truth.features,
                                           truth.dwell)["recovered_fraction"]
    assert recovered["jumprelu"] >= recovered["topk"] - 0.15, recovered
