"""`mtsae synth`: deterministic per seed, the stated statistics, and ground-truth recovery metrics."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mtsae.cache import open_cache
from mtsae.errors import MtsaeError
from mtsae.evaluate.ground_truth import recovery_metrics
from mtsae.harvest.synth import SynthConfig, load_ground_truth, make_ground_truth, sample_codes, synthesize

SMALL = dict(d_model=16, n_features=48, n_sequences=24, seq_len=64, chunk_tokens=256)


def _digest(path) -> str:
    cache = open_cache(path)
    return hashlib.sha256(cache.rows(0, 0, cache.n_tokens).tobytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = synthesize(SynthConfig(**SMALL, seed=3), str(tmp_path / "a.zarr"))
    b = synthesize(SynthConfig(**SMALL, seed=3), str(tmp_path / "b.zarr"))
    c = synthesize(SynthConfig(**SMALL, seed=4), str(tmp_path / "c.zarr"))
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]
    assert _digest(tmp_path / "a.zarr") == _digest(tmp_path / "b.zarr") != _digest(tmp_path / "c.zarr")


def test_store_is_a_cache_with_ground_truth(tmp_path):
    synthesize(SynthConfig(**SMALL), str(tmp_path / "s.zarr"))
    cache = open_cache(tmp_path / "s.zarr")
    assert cache.layers == [0] and cache.d_model == 16 and cache.n_sequences == 24
    assert np.all(np.diff(cache.seq_offsets) == 64) and not cache.special_mask.any()
    truth = load_ground_truth(tmp_path / "s.zarr")
    assert truth.features.shape == (48, 16)
    np.testing.assert_allclose(np.linalg.norm(truth.features, axis=1), 1.0, rtol=1e-5)
    assert truth.dwell.min() == pytest.approx(1.0) and truth.dwell.max() == pytest.approx(100.0)


def test_markov_chains_have_the_stated_rate_and_dwell_times():
    cfg = SynthConfig(d_model=8, n_features=5, min_dwell=1.0, max_dwell=20.0, p_active=0.1)
    truth = make_ground_truth(cfg, np.random.default_rng(0))
    on = sample_codes(truth, 400, 400, np.random.default_rng(1)) > 0
    np.testing.assert_allclose(on.mean(axis=(0, 1)), 0.1, atol=0.01)
    for i, tau in enumerate(truth.dwell):
        starts = (on[:, 1:, i] & ~on[:, :-1, i]).sum()
        mean_run = on[:, 1:, i].sum() / max(starts, 1)
        assert mean_run == pytest.approx(tau, rel=0.15), (tau, mean_run)


def test_recovery_metrics_are_one_for_the_truth_and_drop_under_perturbation():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((30, 16))
    dwell = np.linspace(1, 100, 30)
    exact = recovery_metrics(np.concatenate([features, rng.standard_normal((10, 16))]), features, dwell)
    assert exact["mmcs"] == pytest.approx(1.0) and exact["recovered_fraction"] == 1.0
    assert sum(b["n"] for b in exact["by_time_scale"].values()) == 30
    noisy = recovery_metrics(features + 0.8 * rng.standard_normal(features.shape), features, dwell)
    assert noisy["mmcs"] < 0.95 and noisy["recovered_fraction"] < 1.0
    random = recovery_metrics(rng.standard_normal((30, 16)), features, dwell)
    assert random["mmcs"] < noisy["mmcs"]


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(MtsaeError, match="min-dwell"):
        synthesize(SynthConfig(**{**SMALL, "min_dwell": 0.5}), str(tmp_path / "x.zarr"))
