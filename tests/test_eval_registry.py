"""The eval registry and the global generators an eval seeds."""

from __future__ import annotations

import dataclasses
import json
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


# --------------------------------------------------------------------------- a throwaway eval, registered here only


def _decoder_norms(job) -> None:
    """A real computation on each SAE-Bench adapter, written in SAE-Bench's result format where SAE-Bench would."""
    from mtsae.evaluate.evals import result_path

    for target in job.targets:
        norms = torch.linalg.vector_norm(target.sae.W_dec.float(), ord=job.settings["norm_ord"], dim=1)
        result = {"eval_type_id": "decoder_norms", "eval_config": {**job.settings, "model_name": job.model},
                  "eval_result_metrics": {"decoder": {"mean_norm": norms.mean().item(), "max_norm": norms.max().item()}},
                  "sae_cfg_dict": target.sae.cfg.to_dict()}
        result_path(job.out_dir, target.release).write_text(json.dumps(result))


THROWAWAY = registry.EvalSpec(
    name="decoder_norms", run=_decoder_norms, headline=("decoder.mean_norm", "decoder.max_norm"),
    settings={"standard": {"norm_ord": 2.0}, "tiny": {"norm_ord": 2.0}},
    guardrail=lambda metrics: "all decoder rows are zero" if metrics.get("max_norm") == 0 else None,
)


@pytest.fixture
def throwaway():
    registry.register(THROWAWAY)
    try:
        yield THROWAWAY
    finally:
        registry.unregister(THROWAWAY.name)
    assert THROWAWAY.name not in registry.names()


def test_a_registered_eval_flows_through_config_run_experiment_and_report(throwaway, tmp_path):
    from mtsae.evaluate.config import EvalConfig
    from mtsae.evaluate.experiment import load_experiment
    from mtsae.evaluate.report import write_report
    from mtsae.evaluate.run import evaluate
    from mtsae.train.checkpoint import load_checkpoint
    from test_eval_support import save
    from test_report import make_run

    assert "decoder_norms" in EvalConfig().evals and "decoder_norms" in load_experiment("embedded-full").evals
    config = tmp_path / "evals.toml"
    config.write_text("[decoder_norms]\nnorm_ord = 1.0\n")
    ckpt = save(tmp_path, "relu")
    summary = evaluate(EvalConfig(checkpoints=[str(ckpt)], out=str(tmp_path / "out"), evals=["decoder_norms"],
                                  config_file=str(config)), log=lambda _: None)
    norms = torch.linalg.vector_norm(load_checkpoint(ckpt).sae.W_dec.float(), ord=1, dim=1)
    [row] = summary.rows
    assert row["status"] == "ok" and row["metrics"] == pytest.approx(
        {"mean_norm": norms.mean().item(), "max_norm": norms.max().item()})
    assert summary.data["settings"]["decoder_norms"]["norm_ord"] == 1.0  # the TOML table reached the eval
    assert (tmp_path / "out" / "decoder_norms" / "relu-L5_custom_sae_eval_results.json").is_file()

    runs = [make_run(tmp_path / "runs", name) for name in ("good", "zero")]
    for run, metrics in zip(runs, (row["metrics"], {"mean_norm": 0.0, "max_norm": 0.0})):
        eval_summary = json.loads((run / "eval" / "summary.json").read_text())
        eval_summary["results"].append({**row, "metrics": metrics})
        (run / "eval" / "summary.json").write_text(json.dumps(eval_summary))
    data = write_report(runs, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| absorption | decoder_norms | core | flags |" in md
    assert f"| – | {row['metrics']['mean_norm']:.4g} | 0.7 | ok |" in md
    assert "unlearning/absorption/decoder_norms/core: SAE-Bench headline scores" in md
    assert [r["flags"] for r in data["runs"]] == [[], ["all decoder rows are zero"]]


def test_a_registered_eval_is_checked_like_the_built_in_ones(throwaway, tmp_path):
    from mtsae.errors import MtsaeError
    from mtsae.evaluate.config import EvalConfig, resolve_settings

    config = tmp_path / "evals.toml"
    config.write_text("[decoder_norms]\nnorm = 1\n")
    with pytest.raises(MtsaeError, match=r"\[decoder_norms\] has unknown key\(s\) \['norm'\]; valid: norm_ord"):
        resolve_settings(EvalConfig(checkpoints=["x"], out="o", config_file=str(config)), "tiny", "cpu")
    config.write_text('[decoder_norms]\nnorm_ord = "one"\n')
    with pytest.raises(MtsaeError, match="should be a float like 2.0"):
        resolve_settings(EvalConfig(checkpoints=["x"], out="o", config_file=str(config)), "tiny", "cpu")
    demo = resolve_settings(EvalConfig(checkpoints=["x"], out="o"), "demo", "cpu")["decoder_norms"]
    assert demo == {"llm_batch_size": 16, "llm_dtype": "float32", "random_seed": 42, "norm_ord": 2.0}
    with pytest.raises(ValueError, match="already registered"):
        registry.register(THROWAWAY)
    with pytest.raises(ValueError, match="standard and tiny"):
        registry.register(dataclasses.replace(THROWAWAY, name="other", settings={"tiny": {}}))


def test_an_unregistered_eval_is_refused():
    from mtsae.errors import MtsaeError
    from mtsae.evaluate.config import EvalConfig

    with pytest.raises(MtsaeError, match="--evals takes a comma-separated subset of core, sparse_probing"):
        EvalConfig(checkpoints=["x"], out="o", evals=["decoder_norms"]).validate()


def test_every_dataset_an_eval_loads_is_in_the_embedded_mirror():
    from mtsae.evaluate.embedded_mirror import DATASETS

    needed = {d for spec in registry.specs() for d in spec.datasets}
    assert needed and needed <= set(DATASETS), needed - set(DATASETS)
