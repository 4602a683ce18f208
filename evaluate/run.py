"""``mtsae eval``: run SAE-Bench's core, sparse probing, unlearning and absorption evals on checkpoints.

:func:`evaluate` checks everything it can before any model is loaded (the
checkpoints agree with the evaluation model on name, layer and width; the
settings fit the model's context; the forget corpus exists), then runs one
SAE-Bench call per eval with all checkpoints, in a working directory under
``--out``, and writes ``summary.json``. SAE-Bench's result JSON files are kept
exactly as it writes them, in ``<out>/<eval>/``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from mtsae import env
from mtsae.devices import resolve_device
from mtsae.errors import MtsaeError
from mtsae.evaluate.adapter import load_adapter
from mtsae.evaluate.checkpoints import CheckpointInfo, read_checkpoint_info
from mtsae.evaluate.saelens_checkpoints import release_info
from mtsae.evaluate import registry
from mtsae.evaluate.config import (FORGET_CORPUS_ENV, EvalConfig, context_lengths, resolve_profile, resolve_settings,
                                   splicing_evals)
from mtsae.evaluate.embedded_mirror import ensure_embedded_mirror
from mtsae.evaluate.world_mirror import ensure_world_mirror
from mtsae.harvest import world_assets
from mtsae.evaluate.evals import Job, Outcome, Target, headline_metrics, not_scorable_path, result_path, run_job
from mtsae.evaluate.models import ModelDims, hub_model_dims
from mtsae.evaluate.names import (WORLD, base_model_name, builtin_base, canonical_model_name, instruct_model_name,
                                  is_builtin, is_world)
from mtsae.evaluate.offline import OfflineMirror, load_mirror
from mtsae.evaluate.patches import link_forget_corpus, offline, working_directory
from mtsae.evaluate.quiet import LOG_FILENAME, StageProgress, third_party_output
from mtsae.evaluate.summary import EvalSummary, write_summary
from mtsae.train.rundir import FINAL_DIRNAME

WORK_DIRNAME = ".work"


def _absolute_paths(cfg: EvalConfig) -> EvalConfig:
    """Every path option made absolute: SAE-Bench runs with the working directory moved."""
    import dataclasses

    def absolute(path: str | None) -> str | None:
        return None if path is None else str(Path(path).expanduser().resolve())

    return dataclasses.replace(
        cfg, out=absolute(cfg.out), checkpoints=[absolute(p) for p in cfg.checkpoints], offline=absolute(cfg.offline),
        forget_corpus=absolute(cfg.forget_corpus), config_file=absolute(cfg.config_file),
    )
ARTIFACTS_DIRNAME = "artifacts"


def evaluate(cfg: EvalConfig, log: Callable[[str], None] = print, progress: bool = True) -> EvalSummary:
    """Evaluate ``cfg.checkpoints`` with SAE-Bench; returns the written summary.

    User mistakes raise ``MtsaeError`` before anything runs. An eval that
    crashes is recorded as ``failed`` (traceback in ``<out>/<eval>/``) and the
    others still run; degenerate cases are recorded as ``not_scorable``.
    """
    cfg.validate()
    cfg = _absolute_paths(cfg)  # each eval runs in its own working directory
    infos = [read_checkpoint_info(path) for path in cfg.checkpoints] + [release_info(spec) for spec in cfg.saelens]
    _check_causal(cfg, infos, log)
    model = _evaluation_model(cfg.model, infos)
    profile = resolve_profile(cfg.profile, model)
    device = _device(cfg.device)
    settings = resolve_settings(cfg, profile, device)
    mirror = _mirror(cfg, model, settings)
    unlearning_model = cfg.unlearning_model or instruct_model_name(model)
    _check_compatible(cfg, infos, model, unlearning_model, mirror, settings)
    corpus = _forget_corpus(cfg, mirror) if _any_selected(cfg, "forget_corpus") else None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    releases = release_names(infos)
    log(f"evaluating {len(infos)} checkpoint(s) on {model} ({'offline: ' + str(mirror.root) if mirror else 'hub'}), "
        f"profile {profile}, device {device}, evals {', '.join(cfg.evals)}")

    jobs = [
        Job(name, unlearning_model if registry.get(name).instruct_model else model,
            [Target(r, i) for r, i in zip(releases, infos)],
            settings[name], device, out / name, out / WORK_DIRNAME / name)
        for name in cfg.evals
    ]
    kept = {job.eval_name: _kept_results(job, cfg.force) for job in jobs}  # refuses foreign results up front
    rows = []
    with _threads_for(model, device):
        for job in jobs:
            outcomes = _run_eval(job, kept[job.eval_name], cfg, mirror, corpus, log, progress)
            rows += [_row(job.eval_name, t, outcomes[t.release], out) for t in job.targets]
    header = {
        "model": model, "unlearning_model": unlearning_model if _any_selected(cfg, "instruct_model") else None,
        "offline_mirror": str(mirror.root) if mirror else None, "device": device, "profile": profile,
        "evals": cfg.evals, "settings": {e: settings[e] for e in cfg.evals}, "allow_non_causal": cfg.allow_non_causal,
        "checkpoints": [{"release": r, **i.describe()} for r, i in zip(releases, infos)],
    }
    summary = write_summary(out, header, rows)
    shutil.rmtree(out / WORK_DIRNAME, ignore_errors=True)
    return summary


# --------------------------------------------------------------------------- checks before running


def _check_causal(cfg: EvalConfig, infos: list[CheckpointInfo], log: Callable[[str], None]) -> None:
    """Refuse to splice an SAE whose codes read later tokens into the model, unless allowed (then say so)."""
    splicing = [e for e in cfg.evals if e in splicing_evals()]
    leaky = [info for info in infos if not info.is_causal]
    if not splicing or not leaky:
        return
    names = ", ".join(info.label for info in leaky)
    if not cfg.allow_non_causal:
        raise MtsaeError(
            f"{names}: not causal (its codes at token t read tokens after t), so {' and '.join(splicing)} would "
            "score a model that sees its own future; train with --padding causal, leave those evals out with "
            "--evals, or pass --allow-non-causal to run them anyway (results are flagged)")
    log(f"warning: {names} not causal; their {' and '.join(splicing)} scores come from a model that sees later "
        "tokens (flagged non-causal in summary.json)")


def _any_selected(cfg: EvalConfig, need: str) -> bool:
    """Whether a selected eval's spec sets ``need`` (``instruct_model``, ``forget_corpus``)."""
    return any(getattr(registry.get(name), need) for name in cfg.evals)


def _evaluation_model(requested: str | None, infos: list[CheckpointInfo]) -> str:
    trained = {canonical_model_name(i.model_name) for i in infos}
    if len(trained) > 1:
        raise MtsaeError(f"the checkpoints were trained on different models ({', '.join(sorted(trained))}); "
                         "evaluate each model's checkpoints in a separate run")
    model = requested or infos[0].model_name
    for info in infos:
        world_assets.check_world_version(info.model_name)  # other models: _check_compatible
    base = builtin_base(model)
    return base if base and model.startswith(base + ":") else model


def _mirror(cfg: EvalConfig, model: str, settings: dict[str, dict[str, Any]]) -> OfflineMirror | None:
    if cfg.offline:
        return load_mirror(cfg.offline)
    if not is_builtin(model):
        return None
    # a built-in model exists nowhere else: always offline, from its own mirror
    rows = [spec.mirror_rows(settings[spec.name]) for spec in registry.specs() if spec.mirror_rows is not None]
    ensure = ensure_world_mirror if is_world(model) else ensure_embedded_mirror
    return load_mirror(ensure(*([max(rows)] if rows else [])))


def _dims(model: str, mirror: OfflineMirror | None) -> ModelDims:
    return mirror.model_dims(model) if mirror else hub_model_dims(model)


def _check_compatible(cfg: EvalConfig, infos: list[CheckpointInfo], model: str, unlearning_model: str,
                      mirror: OfflineMirror | None, settings: dict[str, dict[str, Any]]) -> None:
    """Refuse checkpoints the evaluation model cannot run: other model, missing layer, other width."""
    dims = _dims(model, mirror)
    for info in infos:
        if canonical_model_name(info.model_name) != canonical_model_name(model):
            raise MtsaeError(f"checkpoint {info.label} was trained on {info.model_name}, but the evaluation model is "
                             f"{model}; evaluate it on its own model (drop --model) or use a matching checkpoint")
        if info.layer >= dims.n_layers:
            raise MtsaeError(f"checkpoint {info.label} reads layer {info.layer}, but {model} has {dims.n_layers} layers; "
                             "evaluate it on the model it was trained on (check --model and the checkpoint)")
        if info.d_in != dims.d_model:
            raise MtsaeError(f"checkpoint {info.label} has d_in {info.d_in}, but {model}'s residual stream is "
                             f"{dims.d_model} wide; it was trained on another model")
    for eval_name, length in context_lengths(settings, cfg.evals).items():
        if length > dims.n_ctx:
            raise MtsaeError(f"{eval_name} feeds {length}-token sequences but {model} has {dims.n_ctx} positions; "
                             "use --profile tiny or lower it in --config")
    if _any_selected(cfg, "instruct_model"):
        _check_instruct(unlearning_model, model, dims, mirror)


def _check_instruct(unlearning_model: str, model: str, dims: ModelDims, mirror: OfflineMirror | None) -> None:
    # SAE-Bench's unlearning eval refuses names without "it"; SAEs trained on the base apply to its -it variant.
    if "it" not in unlearning_model or base_model_name(unlearning_model) != canonical_model_name(model):
        raise MtsaeError(f"the unlearning eval runs on the instruct variant of the SAEs' model ({model}-it); "
                         f"{unlearning_model!r} is not it: pass --unlearning-model {instruct_model_name(model)}")
    it_dims = _dims(unlearning_model, mirror)
    if it_dims.d_model != dims.d_model or it_dims.n_layers != dims.n_layers:
        raise MtsaeError(f"{unlearning_model} ({it_dims}) does not have {model}'s shape ({dims})")


def _forget_corpus(cfg: EvalConfig, mirror: OfflineMirror | None) -> Path:
    given = cfg.forget_corpus or env.get(env.WMDP_FORGET_CORPUS)
    corpus = Path(given).expanduser() if given else (mirror.forget_corpus if mirror else None)
    if corpus is None or not corpus.is_file():
        raise MtsaeError(
            "the unlearning eval needs the WMDP bio forget corpus (gated: request access to "
            "cais/wmdp-bio-forget-corpus on the hub, download bio-forget-corpus.jsonl), then pass --forget-corpus "
            f"FILE or set {FORGET_CORPUS_ENV}; or leave unlearning out with --evals"
            + (f" ({corpus} does not exist)" if corpus else "")
        )
    return corpus


def _device(device: str) -> str:
    return str(resolve_device(device))


@contextlib.contextmanager
def _threads_for(model: str, device: str):
    """One intra-op thread for the embedded model on CPU, restored afterwards.

    Its 64-wide matrices gain nothing from threads, and on a shared 2-core
    machine OpenMP spin-waiting made the four evals 4-10x slower (docs/evaluation.md).
    """
    before = torch.get_num_threads()
    if is_builtin(model) and device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def release_names(infos: list[CheckpointInfo]) -> list[str]:
    """Unique, file-safe names for SAE-Bench's ``sae_release`` (its result files are named after them)."""
    names: list[str] = []
    for info in infos:
        if info.path is None:  # a SAELens release: RELEASE:ID
            base = str(info.saelens)
        else:
            base = info.path.name if info.path.name != FINAL_DIRNAME else f"{info.path.parent.name}_{FINAL_DIRNAME}"
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", base)
        name, n = base, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


# --------------------------------------------------------------------------- running one eval


def _run_eval(job: Job, kept: dict[str, Outcome], cfg: EvalConfig, mirror: OfflineMirror | None,
              corpus: Path | None, log: Callable[[str], None], progress: bool = True) -> dict[str, Outcome]:
    job.out_dir.mkdir(parents=True, exist_ok=True)
    outcomes = dict(kept)
    pending = [t for t in job.targets if t.release not in outcomes]
    for release in outcomes:
        log(f"[{job.eval_name}] {release}: keeping the result already in {job.out_dir} (--force recomputes)")
    if not pending:
        return outcomes
    log(f"[{job.eval_name}] running SAE-Bench on {len(pending)} SAE(s) with {job.model}; "
        f"its own output goes to {job.out_dir / LOG_FILENAME}")
    job = Job(job.eval_name, job.model, pending, job.settings, job.device, job.out_dir, job.workdir)
    shutil.rmtree(job.workdir, ignore_errors=True)
    with contextlib.ExitStack() as stack:
        terminal = stack.enter_context(third_party_output(job.out_dir / LOG_FILENAME))
        stack.enter_context(working_directory(job.workdir))
        if mirror is not None:
            stack.enter_context(offline(mirror))
        if corpus is not None and registry.get(job.eval_name).forget_corpus:
            link_forget_corpus(job.workdir, corpus)
        stage = stack.enter_context(contextlib.closing(
            StageProgress(job.eval_name, [t.release for t in pending], terminal, enabled=progress)))
        for target in pending:
            target.sae = load_adapter(target.info, job.model, device=job.device)
            target.sae.on_use = functools.partial(stage.used, target.release)
        outcomes.update(run_job(job, log))
    _log_outcomes(job, outcomes, stage, log)
    if cfg.keep_artifacts:
        keep = Path(cfg.out) / ARTIFACTS_DIRNAME / job.eval_name
        shutil.rmtree(keep, ignore_errors=True)
        shutil.move(str(job.workdir), keep)
    return outcomes


def _log_outcomes(job: Job, outcomes: dict[str, Outcome], stage: StageProgress, log: Callable[[str], None]) -> None:
    """The group's time once, then each SAE's own time (from its first use by SAE-Bench), never the total per SAE."""
    total = next(iter(outcomes[t.release].seconds for t in job.targets), None)
    log(f"[{job.eval_name}] {len(job.targets)} SAE(s) in {total:.0f} s, of which {stage.shared_seconds:.0f} s "
        "before the first SAE was used (work SAE-Bench does once for the group)")
    for target in job.targets:
        o = outcomes[target.release]
        o.seconds = stage.seconds(target.release)
        took = f" in {o.seconds:.0f} s" if o.seconds is not None else ""
        log(f"[{job.eval_name}] {target.release}: {o.status}{took}" + (f" ({o.reason})" if o.reason else ""))


def _kept_results(job: Job, force: bool) -> dict[str, Outcome]:
    return {t.release: o for t in job.targets if (o := _existing(job, t, force)) is not None}


def _existing(job: Job, target: Target, force: bool) -> Outcome | None:
    """A result from an earlier run for the same checkpoint and settings, else None (stale files go with --force)."""
    paths = [result_path(job.out_dir, target.release), not_scorable_path(job.out_dir, target.release)]
    if force:
        for path in paths:
            path.unlink(missing_ok=True)
        return None
    for path, status in zip(paths, ("ok", "not_scorable")):
        if path.is_file():
            record = json.loads(path.read_text())
            _check_same_run(path, record, job, target)
            metrics = headline_metrics(job.eval_name, record) if status == "ok" else {}
            return Outcome(status, path, record.get("reason"), metrics, reused=True)
    return None


def _check_same_run(path: Path, record: dict[str, Any], job: Job, target: Target) -> None:
    checkpoint = record.get("sae_cfg_dict", {}).get("mtsae_checkpoint", record.get("sae_cfg_dict", {}).get("checkpoint"))
    config = record.get("eval_config", {})
    differing = [k for k, v in job.settings.items() if k in config and json.loads(json.dumps(v)) != config[k]]
    if checkpoint != target.info.label or differing:
        what = f"settings {differing}" if differing else f"checkpoint {checkpoint}"
        raise MtsaeError(f"{path} holds a result for another {what}; pass --force to recompute it or choose another --out")


def _row(eval_name: str, target: Target, outcome: Outcome, out: Path) -> dict[str, Any]:
    return {
        "release": target.release, "checkpoint": target.info.label, "eval": eval_name,
        "status": outcome.status, "result": str(outcome.result.relative_to(out)) if outcome.result else None,
        "reason": outcome.reason, "metrics": outcome.metrics, "seconds": outcome.seconds, "reused": outcome.reused,
        "cache_fingerprint": target.info.cache_fingerprint, "architecture": target.info.architecture,
        "causal": target.info.is_causal,
    }
