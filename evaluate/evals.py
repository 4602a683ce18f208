"""One SAE-Bench eval over a group of SAEs: the real entry point, then what it left behind.

:func:`run_job` runs the eval's registered runner (:mod:`mtsae.evaluate.registry`;
each calls SAE-Bench's own ``run_eval`` inside the patches it needs) and turns the
files SAE-Bench wrote (or did not write) into one :class:`Outcome` per SAE.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from mtsae.evaluate import registry
from mtsae.evaluate.adapter import MtsaeBenchSAE
from mtsae.evaluate.checkpoints import CheckpointInfo
from mtsae.evaluate.patches import NotScorable
from mtsae.evaluate.rng import seeded

SAE_ID = "custom_sae"  # what SAE-Bench's load_and_format_sae calls every custom SAE object

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
    for key in registry.get(eval_name).headline:
        category, name = key.split(".")
        value = metrics.get(category, {}).get(name)
        if value is not None:
            out[name] = value
    return out


# --------------------------------------------------------------------------- outcomes


def run_job(job: Job, log: Callable[[str], None]) -> dict[str, Outcome]:
    """Run one SAE-Bench call; ``{release: Outcome}``. Exceptions become ``failed`` outcomes."""
    spec = registry.get(job.eval_name)
    started, grad = time.perf_counter(), torch.is_grad_enabled()
    not_scorable: str | None = None
    try:
        with seeded(job.settings.get("random_seed", 42)):  # SAE-Bench seeds only some of its draws
            spec.run(job)
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
    if spec.not_scorable is not None and not_scorable is None:
        not_scorable = spec.not_scorable(job)
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
