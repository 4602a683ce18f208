"""The temporal benchmark: weak-slow regime, code scoring on the truth, and a verdict refused inside the seed spread."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from mtsae.evaluate import temporal_synth as bench
from mtsae.evaluate.temporal_synth_report import report
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
    md = report({"settings": {"seeds": 3, "d_sae": 8, "steps": 1, "batch_tokens": 1, "lr": 1, "window": 2},
                 "seconds": 0, "regimes": {"close": {"snr": {}, "models": close, "verdict": bench.verdict(close, 5)},
                                           "far": {"snr": {}, "models": far, "verdict": v}}}, 5)
    close_md, far_md = md.split("## far")
    assert ("**Verdict, close** (synthetic data, 3 seeds; best temporal vs best per-token): slow recovery: "
            "no verdict (inside the seed spread)") in close_md
    # mean [min, max] over seeds of each side, then the difference against the spread that decided it
    assert (f"- {bench.SLOW} recovered: 0.750 [0.650, 0.850] vs 0.700 [0.600, 0.800] "
            "(difference +0.050, spread 0.200): no verdict (inside the seed spread)") in close_md
    assert "**Verdict, far** (synthetic data, 3 seeds; best temporal vs best per-token): slow recovery: temporal higher" in far_md
    assert f"- {bench.SLOW} recovered: 0.810 [0.800, 0.820] vs 0.610 [0.600, 0.620]" in far_md


def test_a_tiny_benchmark_runs_end_to_end(tmp_path):
    results = bench.run(tmp_path, seeds=2, k=5, d_sae=32, steps=3, batch_tokens=256, window=64, lr=3e-3,
                        train_sequences=6, eval_sequences=3, seq_len=128, log=lambda _line: None)
    assert set(results["regimes"]) == set(bench.REGIMES)
    assert (tmp_path / "report.md").read_text().count("Best temporal") == 2
    for regime in results["regimes"].values():
        assert all(len(runs) == 2 and runs[0]["l0"] <= 5.0 + 1e-6 for runs in regime["models"].values())


TINY_TABLE = {"seeds": 2, "k": 5, "d_sae": 32, "steps": 3, "batch_tokens": 256, "window": 64,
              "train_sequences": 6, "eval_sequences": 3, "seq_len": 128}


def test_mtsae_experiment_temporal_synth_reports_a_verdict_per_regime_then_skips_finished_work(tmp_path):
    from typer.testing import CliRunner

    from mtsae.cli import app

    out = tmp_path / "exp"
    config = tmp_path / "temporal.toml"
    config.write_text(f'out = "{out}"\n[temporal_synth]\n' + "".join(f"{k} = {v}\n" for k, v in TINY_TABLE.items()))
    result = CliRunner().invoke(app, ["experiment", str(config), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out / "report" / "report.html")
    md = (out / "report" / "report.md").read_text()
    assert "**Synthetic data.**" in md and "not how it does on an LM" in md
    for regime in bench.REGIMES:
        assert f"**Verdict, {regime}** (synthetic data, 2 seeds; best temporal vs best per-token): slow recovery: " in md
    assert md.count(f"- {bench.SLOW} recovered: ") == len(bench.REGIMES)
    html = (out / "report" / "report.html").read_text()
    assert "<strong>Verdict, weak-slow</strong>" in html and "<table>" in html
    results = out / "report" / "results.json"
    before = results.stat().st_mtime_ns
    again = CliRunner().invoke(app, ["experiment", str(config), "--no-progress"])
    assert again.exit_code == 0 and "not re-run, report rewritten" in again.stderr
    assert results.stat().st_mtime_ns == before


def test_the_built_in_runs_the_measured_budget_and_its_docs_say_so():
    from pathlib import Path

    from mtsae.evaluate.experiment import load_experiment

    cfg = load_experiment("temporal-synth")
    assert cfg.temporal_synth == {} and cfg.runs == [] and cfg.out == "experiments/temporal-synth"
    b = bench.Budget.from_table(cfg.temporal_synth)
    assert b == bench.Budget() and b.seeds >= 3 and b.only == ()  # every model, both regimes
    results_md = (Path(__file__).parents[1] / "docs" / "results.md").read_text()
    assert "mtsae experiment temporal-synth" in results_md
    measured = re.search(r"d_sae (\d+), (\d+) steps × (\d+) tokens, lr ([0-9.e-]+)", results_md)
    assert measured and tuple(map(float, measured.groups())) == (b.d_sae, b.steps, b.batch_tokens, b.lr)
    assert f"{b.window}-token windows" in results_md and f"scored on {b.eval_sequences} fresh sequences" in results_md


@pytest.mark.parametrize("table, message", [
    ({"seeds": 1}, "seeds must be >= 2"),
    ({"steps": "many"}, r"\[temporal_synth\] steps = 'many' should be a whole number"),
    ({"bogus": 1}, r"unknown \[temporal_synth\] key\(s\) \['bogus'\]"),
    ({"only": ["topk"]}, r"only names unknown model\(s\) \['topk'\]"),
    ({"window": 300}, "need 2 <= window <= seq_len"),
    ({"k": 2}, "group_k must give each"),  # the bank's own check: 3 groups need k >= 3
    ({"lr": float("nan")}, "lr must be a positive finite number"),
])
def test_bad_benchmark_tables_are_refused_before_training(tmp_path, table, message):
    from mtsae.errors import MtsaeError
    from mtsae.evaluate.experiment import ExperimentConfig

    with pytest.raises(MtsaeError, match=message):
        ExperimentConfig(out=str(tmp_path), temporal_synth=table).validate()


def test_a_benchmark_experiment_declares_nothing_else(tmp_path):
    from typer.testing import CliRunner

    from mtsae.cli import app

    config = tmp_path / "mixed.toml"
    config.write_text(f'out = "{tmp_path / "o"}"\ncache = "c"\n[temporal_synth]\nseeds = 3\n[[runs]]\nname = "a"\n')
    result = CliRunner().invoke(app, ["experiment", str(config)])
    assert result.exit_code == 1 and result.stderr.startswith("error: a [temporal_synth] experiment trains its own")
    assert "runs, cache" in result.stderr and not (tmp_path / "o").exists()
