"""The temporal benchmark: weak-slow regime, code scoring on the truth, and a verdict refused inside the seed spread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtsae.evaluate import temporal_synth as bench
from mtsae.harvest.synth import SynthConfig, make_ground_truth, sample_codes


def _truth(**overrides):
    cfg = SynthConfig(**{**bench.SYNTH, **overrides, "seed": 0})
    rng = np.random.default_rng(0)
    return cfg, make_ground_truth(cfg, rng), rng


def test_weak_slow_regime_scales_only_slow_features_and_drops_their_per_token_snr():
    cfg, truth, rng = _truth(**bench.REGIMES["weak-slow"])
    slow = truth.dwell >= cfg.slow_from
    weak = bench.REGIMES["weak-slow"]["slow_scale"]
    assert np.all(truth.scale[slow] == pytest.approx(weak)) and np.all(truth.scale[~slow] == 1.0)
    codes = sample_codes(truth, 8, 64, rng)
    assert codes[..., slow].max() <= weak * codes[..., ~slow].max() + 1e-6
    x, c = bench.make_data(truth, cfg, 60, 256, rng)
    snr = bench._bucket_means(bench.per_token_snr(x, c, truth, 1), truth)
    pooled = bench._bucket_means(bench.per_token_snr(x, c, truth, 33), truth)
    assert snr[bench.SLOW] < 1.5 < snr[bench.FAST]
    assert pooled[bench.SLOW] > snr[bench.SLOW]  # pooling over the run helps the slow features
    assert pooled[bench.FAST] < snr[bench.FAST]  # ...and hurts the fast ones


class _Oracle(torch.nn.Module):
    """An 'SAE' whose latents are the true features and whose codes are the true activations."""

    is_temporal = True

    def __init__(self, features, codes):
        super().__init__()
        self.W_dec = torch.from_numpy(features)
        self.codes = torch.from_numpy(codes)

    def encode(self, x):
        return self.codes

    def decode(self, codes):
        return codes @ self.W_dec


def test_scoring_gives_the_truth_perfect_codes_and_a_shuffled_truth_none():
    cfg, truth, rng = _truth()
    x, codes = bench.make_data(truth, dataclass_replace(cfg, noise=0.0), 20, 128, rng)
    perfect = bench.score(_Oracle(truth.features, codes), x, codes, truth)
    for values in perfect["buckets"].values():
        assert values["recovered"] == 1.0 and values["recall"] == 1.0 and values["fpr"] == 0.0 and values["f1"] == 1.0
    assert perfect["fve"] == pytest.approx(1.0, abs=1e-5)
    flat = codes.reshape(-1, codes.shape[-1])
    shuffled = flat[rng.permutation(len(flat))].reshape(codes.shape)  # right features, wrong tokens
    wrong = bench.score(_Oracle(truth.features, shuffled), x, codes, truth)
    assert all(v["f1"] < 0.3 for v in wrong["buckets"].values())


def dataclass_replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def _runs(slow_values):
    return [{"fve": 0.5, "l0": 5.0, "buckets": {b: {"recovered": v, "f1": v, "fpr": 0.01} for b, _, _ in bench.BUCKETS}}
            for v in slow_values]


def test_verdict_is_refused_inside_the_seed_spread_and_given_outside():
    names = [m.name for m in bench.models(5)]
    close = {n: _runs([0.60, 0.70, 0.80]) for n in names}
    close["mtsae bank 1/9/33 causal"] = _runs([0.65, 0.75, 0.85])
    v = bench.verdict(close, 5)
    assert v["temporal"] == "mtsae bank 1/9/33 causal"
    assert not v["checks"][f"{bench.SLOW} recovered"]["decided"]
    assert not any(v["target"][t] for t in v["target"] if "outside the spread" in t)
    far = {n: _runs([0.60, 0.61, 0.62]) for n in names}
    far["mtsae bank 1/9/33 causal"] = _runs([0.80, 0.81, 0.82])
    v = bench.verdict(far, 5)
    slow = v["checks"][f"{bench.SLOW} recovered"]
    assert slow["decided"] and slow["difference"] == pytest.approx(0.2)
    assert v["target"]["slow recovery >= +10 points, outside the spread"]
    assert "no verdict" in bench.report({"settings": {"seeds": 3, "d_sae": 8, "steps": 1, "batch_tokens": 1,
                                                      "lr": 1, "window": 2}, "seconds": 0,
                                         "regimes": {"r": {"snr": {}, "models": close, "verdict": bench.verdict(close, 5)}}}, 5)


def test_a_tiny_benchmark_runs_end_to_end(tmp_path):
    results = bench.run(tmp_path, seeds=2, k=5, d_sae=32, steps=3, batch_tokens=256, window=64, lr=3e-3,
                        train_sequences=6, eval_sequences=3, seq_len=128, log=lambda _line: None)
    assert set(results["regimes"]) == set(bench.REGIMES)
    assert (tmp_path / "report.md").read_text().count("Best temporal") == 2
    for regime in results["regimes"].values():
        assert all(len(runs) == 2 and runs[0]["l0"] <= 5.0 + 1e-6 for runs in regime["models"].values())
