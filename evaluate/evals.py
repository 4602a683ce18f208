"""One SAE-Bench eval over a group of SAEs: the real entry point, then what it left behind.

Each ``_run_<eval>`` calls SAE-Bench's own ``run_eval`` (``multiple_evals`` for
core) with SAE-Bench's config class; :func:`run_job` wraps it with the patches
it needs (:mod:`mtsae.evaluate.patches`) and turns the files SAE-Bench wrote
(or did not write) into one :class:`Outcome` per SAE.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from mtsae.evaluate.adapter import MtsaeBenchSAE
from mtsae.evaluate.checkpoints import CheckpointInfo
from mtsae.evaluate.rng import seeded
from mtsae.evaluate.patches import (
    NotScorable,
    absorption_artifacts,
    captured_errors,
    probe_shape_scopes,
    unlearning_scorability,
)

SAE_ID = "custom_sae"  # what SAE-Bench's load_and_format_sae calls every custom SAE object
HEADLINE = {
    "core": ("reconstruction_quality.explained_variance", "reconstruction_quality.mse", "reconstruction_quality.cossim",
             "sparsity.l0", "model_behavior_preservation.kl_div_score", "model_performance_preservation.ce_loss_score",
             "shrinkage.l2_ratio"),
    "sparse_probing": ("llm.llm_test_accuracy", "llm.llm_top_1_test_accuracy", "sae.sae_test_accuracy",
                       "sae.sae_top_1_test_accuracy", "sae.sae_top_2_test_accuracy", "sae.sae_top_5_test_accuracy"),
    "unlearning": ("unlearning.unlearning_score",),
    "absorption": ("mean.mean_absorption_fraction_score", "mean.mean_full_absorption_score",
                   "mean.mean_num_split_features"),
}


@dataclass
class Target:
    """One checkpoint in one eval: the name SAE-Bench files it under, and the adapter it runs."""

    release: str
    info: CheckpointInfo
    sae: MtsaeBenchSAE | None = None


@dataclass
class Job:
    eval_name: str
    model: str
    targets: list[Target]
    settings: dict[str, Any]
    device: str
    out_dir: Path
    workdir: Path
    errors: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    status: str  # ok | not_scorable | failed
    result: Path | None
    reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    reused: bool = False  # kept from an earlier run into the same --out


def result_path(out_dir: Path, release: str) -> Path:
    """Where SAE-Bench writes the result of ``release`` (``general_utils.get_results_filepath``)."""
    return out_dir / f"{release}_{SAE_ID}_eval_results.json".replace("/", "_")


def not_scorable_path(out_dir: Path, release: str) -> Path:
    return out_dir / f"{release}_{SAE_ID}_not_scorable.json"


def headline_metrics(eval_name: str, result: dict[str, Any]) -> dict[str, float]:
    metrics = result.get("eval_result_metrics", {})
    out = {}
    for key in HEADLINE[eval_name]:
        category, name = key.split(".")
        value = metrics.get(category, {}).get(name)
        if value is not None:
            out[name] = value
    return out


# --------------------------------------------------------------------------- SAE-Bench calls


def _selected(job: Job) -> list[tuple[str, MtsaeBenchSAE]]:
    return [(t.release, t.sae) for t in job.targets]


def _run_core(job: Job) -> None:
    import sae_bench.evals.core.main as core

    with captured_errors(core.__name__) as errors:  # core logs a failing SAE and moves on
        core.multiple_evals(selected_saes=_selected(job), output_folder=str(job.out_dir), device=job.device,
                            force_rerun=True, verbose=True, **job.settings)
    job.errors.extend(errors)


def _run_sparse_probing(job: Job) -> None:
    import sae_bench.evals.sparse_probing.main as sparse_probing

    config = sparse_probing.SparseProbingEvalConfig(model_name=job.model, **job.settings)
    # Activations saved once in the working directory and reused for every SAE of the group.
    with probe_shape_scopes():
        sparse_probing.run_eval(config, _selected(job), job.device, str(job.out_dir), force_rerun=True,
                                clean_up_activations=False, save_activations=True,
                                artifacts_path=str(job.workdir / "artifacts"))


def _run_unlearning(job: Job) -> None:
    import sae_bench.evals.unlearning.main as unlearning

    config = unlearning.UnlearningEvalConfig(model_name=job.model, **job.settings)
    with unlearning_scorability(config.target_metric):
        unlearning.run_eval(config, _selected(job), job.device, str(job.out_dir), force_rerun=True,
                            artifacts_path=str(job.workdir / "artifacts"))


def _run_absorption(job: Job) -> None:
    import sae_bench.evals.absorption.main as absorption

    config = absorption.AbsorptionEvalConfig(model_name=job.model, **job.settings)
    with absorption_artifacts(job.workdir / "artifacts" / "absorption"):
        absorption.run_eval(config, _selected(job), job.device, str(job.out_dir), force_rerun=True)


RUNNERS: dict[str, Callable[[Job], None]] = {
    "core": _run_core, "sparse_probing": _run_sparse_probing, "unlearning": _run_unlearning,
    "absorption": _run_absorption,
}


# --------------------------------------------------------------------------- outcomes


def run_job(job: Job, log: Callable[[str], None]) -> dict[str, Outcome]:
    """Run one SAE-Bench call; ``{release: Outcome}``. Exceptions become ``failed`` outcomes."""
    started, grad = time.perf_counter(), torch.is_grad_enabled()
    not_scorable: str | None = None
    try:
        with seeded(job.settings.get("random_seed", 42)):  # SAE-Bench seeds only some of its draws
            RUNNERS[job.eval_name](job)
    except NotScorable as exc:
        not_scorable = str(exc)
    except Exception as exc:  # one eval's failure must not lose the others' results
        trace = job.out_dir / f"{job.eval_name}_error.txt"
        trace.write_text(traceback.format_exc())
        log(f"[{job.eval_name}] failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            f"(traceback in {trace})")
        job.errors.append(f"{type(exc).__name__}: {exc} (traceback in {trace})")
    finally:
        torch.set_grad_enabled(grad)  # absorption and unlearning switch autograd globally
    if job.eval_name == "absorption" and not_scorable is None:
        not_scorable = _absorption_not_scorable(job)
    seconds = round(time.perf_counter() - started, 1)
    return {t.release: _outcome(job, t, not_scorable, seconds) for t in job.targets}


def _outcome(job: Job, target: Target, not_scorable: str | None, seconds: float) -> Outcome:
    path = result_path(job.out_dir, target.release)
    if path.is_file():
        result = json.loads(path.read_text())
        return Outcome("ok", path, metrics=headline_metrics(job.eval_name, result), seconds=seconds)
    if not_scorable is not None:
        return Outcome("not_scorable", write_not_scorable(job, target, not_scorable), not_scorable, seconds=seconds)
    reason = "; ".join(job.errors) or "SAE-Bench wrote no result for this SAE"
    return Outcome("failed", None, reason, seconds=seconds)


def write_not_scorable(job: Job, target: Target, reason: str) -> Path:
    """Our own record (SAE-Bench writes nothing in these cases), next to where its JSON would be."""
    from importlib.metadata import version

    path = not_scorable_path(job.out_dir, target.release)
    record = {
        "status": "not_scorable",
        "eval_type_id": job.eval_name,
        "reason": reason,
        "model_name": job.model,
        "eval_config": job.settings,
        "sae_bench_version": version("sae-bench"),
        "datetime_epoch_millis": int(time.time() * 1000),
        "sae_cfg_dict": target.sae.cfg.to_dict() if target.sae is not None else target.info.describe(),
    }
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def _absorption_not_scorable(job: Job) -> str | None:
    """SAE-Bench's absorption ``break``s without output when too few first letters are probe-detectable."""
    if all(result_path(job.out_dir, t.release).is_file() for t in job.targets):
        return None
    threshold = job.settings.get("min_GT_probe_f1", 0.6)
    needed = job.settings.get("min_feats_for_eval", 20)
    for target in job.targets:
        probing = job.workdir / "artifacts" / "absorption" / f"{target.release}_{SAE_ID}_k_sparse_probing.json"
        if probing.is_file():
            rows = json.loads(probing.read_text())
            found = sum(1 for row in rows if row.get("f1_probe", 0) > threshold)
            if found < needed:
                return (
                    f"only {found} of 26 first letters have a ground-truth probe F1 above {threshold} on this model's "
                    f"layer {target.info.layer} (SAE-Bench needs min_feats_for_eval={needed}); the model does not "
                    "represent first letters linearly, so absorption is undefined"
                )
    return None
