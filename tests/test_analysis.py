"""Disentanglement statistics on processes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtsae.evaluate.analysis import adjacent_separation, autocorrelation, decoder_geometry, time_scales


def _ar1(rho: float, n: int = 200, t: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((n, t))
    x[:, 0] = rng.standard_normal(n)
    for i in range(1, t):
        x[:, i] = rho * x[:, i - 1] + math.sqrt(1 - rho**2) * rng.standard_normal(n)
    return x


def test_time_scale_of_ar1_processes_matches_theory():
    # AR(1) with coefficient rho: acf(k) = rho^k, so it crosses 1/e at k = -1 / ln(rho).
    rhos = [0.3, 0.8, 0.95]
    codes = np.stack([_ar1(r, seed=i) for i, r in enumerate(rhos)], axis=-1)
    scales = time_scales(autocorrelation(codes, max_lag=64))
    for rho, got in zip(rhos, scales):
        assert got == pytest.approx(-1 / math.log(rho), rel=0.15, abs=0.3)


def test_dead_and_very_slow_features():
    codes = np.zeros((4, 32, 2))
    codes[:, :, 1] = np.arange(32)  # a ramp: never decorrelates within the lags measured
    scales = time_scales(autocorrelation(codes, max_lag=8))
    assert math.isnan(scales[0]) and scales[1] == 8


def test_time_scales_at_the_measurement_limit_are_reported_as_a_bound():
    from mtsae.evaluate.analysis import summarize_time_scales
    from mtsae.evaluate.experiment import analysis_sections

    ramp = np.tile(np.arange(32.0), (20, 1))
    codes = np.stack([_ar1(0.3, n=20, t=32), ramp, ramp], axis=-1)  # one fast feature, two that never decorrelate
    summary = summarize_time_scales(time_scales(autocorrelation(codes, max_lag=8)), max_lag=8, window=32)
    assert (summary["limit"], summary["limited_by"]) == (8, "max_lag") and summary["at_limit_fraction"] == pytest.approx(2 / 3)
    short = summarize_time_scales(time_scales(autocorrelation(codes, max_lag=8)[:6]), max_lag=8, window=6)
    assert (short["limit"], short["limited_by"]) == (5, "window")
    analysis = {"architecture": "relu", "l0": 3.0, "adjacent_separation": 0.5, "window": 32, "time_scales": summary,
                "decoder": {"max_cosine": 0.1, "mean_cosine": 0.0, "near_duplicate_pairs": 0}}
    text = "\n".join(analysis_sections({"run": analysis}))
    assert "/ ≥ 8 / ≥ 8 |" in text  # median and p90 sit at the limit: bounds, not values
    assert "67% of live features still correlate at lag 8" in text and "--max-lag" in text
    summary["at_limit_fraction"], summary["median"], summary["p90"] = 0.0, 2.0, 3.0
    assert "≥" not in "\n".join(analysis_sections({"run": analysis}))


def test_adjacent_separation_extremes():
    same = torch.ones(2, 5, 3)
    assert adjacent_separation(same) == pytest.approx(1.0)
    alternating = torch.zeros(1, 4, 2)
    alternating[0, ::2, 0] = 1
    alternating[0, 1::2, 1] = 1
    assert adjacent_separation(alternating) == pytest.approx(0.0)


def test_decoder_geometry_finds_duplicates_and_orthogonality():
    eye = torch.eye(4)
    geometry = decoder_geometry(eye)
    assert geometry["max_cosine"] == pytest.approx(0.0) and geometry["near_duplicate_pairs"] == 0
    dup = torch.cat([eye, eye[:1] * 2.0])
    geometry = decoder_geometry(dup, block=2)  # blocks must not change the answer
    assert geometry["max_cosine"] == pytest.approx(1.0) and geometry["near_duplicate_pairs"] == 1
    assert geometry["mean_cosine"] == pytest.approx(2 / 20)


def test_analyze_run_on_a_trained_synthetic_run(tmp_path):
    from mtsae.evaluate.analysis import analyze_run
    from mtsae.harvest.synth import SynthConfig, synthesize
    from mtsae.train.config import TrainConfig
    from mtsae.train.trainer import train

    cache = tmp_path / "synth.zarr"
    synthesize(SynthConfig(d_model=16, n_features=32, n_sequences=40, seq_len=64, chunk_tokens=512), str(cache))
    cfg = TrainConfig(cache=str(cache), out=str(tmp_path / "run"), layer=0, arch="mtsae", d_sae=48, window=32,
                      steps=40, batch_windows=4, lr=3e-3, seed=0)
    train(cfg, progress=False, log=lambda _: None)
    result = analyze_run(str(tmp_path / "run"), max_lag=8)
    assert result["architecture"] == "mtsae" and result["heldout_windows"] > 0
    assert 0.0 <= result["adjacent_separation"] <= 1.0
    assert result["decoder"]["max_cosine"] <= 1.0 + 1e-6
    truth = result["ground_truth"]
    assert truth["n_true_features"] == 32 and 0.0 < truth["mmcs"] <= 1.0
    assert set(truth["by_time_scale"]) <= {"fast (<=2 tokens)", "medium (2-50)", "slow (>=50)"}
