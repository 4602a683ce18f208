"""Train an SAE on cached activations: ``Trainer(cfg).fit()``.

One step (the SAE's own methods do the architecture-specific work)::

    x = scale · batch                      [B, T, d]; flattened to [B·T, d] unless sae.is_temporal
    out = sae.loss(x, sparsity_scale=linear_warmup(step, sparsity_warmup_steps))
    out.loss.backward()
    sae.remove_parallel_gradient_()
    clip_grad_norm_(grad_clip)             if grad_clip > 0
    Adam step at lr(step)                  linear warm-up, then linear/cosine decay to 0 at the end
    sae.constrain_parameters_()            unit decoder rows (+ arch constraints)

Run directory ``out``::

    run.json                        resolved TrainConfig, cache fingerprint, mtsae version
    log.jsonl                       one JSON object per step ("split": "train": step, tokens, lr,
                                    sparsity_scale, grad_norm, every loss component) and per
                                    evaluation ("split": "heldout": mse, fve, l0, dead_fraction,
                                    silent_fraction, sep)
    checkpoints/step_NNNNNN/        SAELens-layout checkpoint (train/checkpoint.py)
                                    + trainer_state.pt (what --resume needs)
    final/                          the finished SAE; written only when every step succeeded

Activation normalisation (``expected_norm``): inputs are multiplied by
``scale = sqrt(d_in) / E‖x‖`` (estimated once on train windows, special rows
excluded, then kept fixed and saved). Saved checkpoints have it **folded in**
(:func:`fold_activation_scale`): they act on raw activations, with unit-norm
decoder rows, and produce codes in raw units (``codes_raw = codes / scale``).
``trainer_state.pt`` keeps the unfolded weights, so resuming is exact.

Resume: ``trainer_state.pt`` holds the unfolded SAE, the Adam state, the step,
the position in the window order (epoch, next batch), tokens seen, the
normaliser scale, the latest held-out metrics and the torch RNG states. On
CPU with a fixed seed, N steps in one go equal k steps, a stop, and a resume
to N, bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

import mtsae
from mtsae.cache import hook_name, open_cache
from mtsae.cache.format import model_revision
from mtsae.cache.shared import local_cache
from mtsae.devices import resolve_device
from mtsae.distributed import SINGLE_PROCESS, World
from mtsae.errors import MtsaeError, writing
from mtsae.locks import hold_folder_lock, release_folder_lock
from mtsae.train.base import SparseAutoencoder, linear_warmup
from mtsae.train.checkpoint import CFG_FILENAME, save_checkpoint
from mtsae.train.config import TrainConfig
from mtsae.train.loader import WindowDataset
from mtsae.train.parallel import DataParallel, check_batch_divides, token_count
from mtsae.train.registry import create_sae
from mtsae.train.sparsity_control import L0Controller
from mtsae.train.windows import sample_windows, too_short

RUN_FILENAME = "run.json"
LOG_FILENAME = "log.jsonl"
STATE_FILENAME = "trainer_state.pt"
CHECKPOINTS_DIRNAME = "checkpoints"
FINAL_DIRNAME = "final"
RUN_LOCK = ".mtsae-train.lock"
"""Held by the one `mtsae train` writing a run directory (removed when it ends)."""
NORM_SAMPLE_TOKENS = 65_536
"""Train tokens (whole windows, seeded sample) used to estimate the normalisation scale."""

_STEP_DIR = re.compile(r"^step_(\d+)$")
_TEMPORARY = re.compile(r"^\.(step_\d+|final|run\.json|log\.jsonl|trainer_state\.pt)\.tmp")
"""Half-written files and directories a killed run leaves (atomic writes go through these names)."""
RESUME_HINT = "re-run the same command with --resume to continue from the last checkpoint"


@dataclass
class TrainResult:
    out: Path
    """The run directory."""
    checkpoint: Path
    """``out/final`` when finished, else the checkpoint written where training stopped."""
    metrics: dict[str, float]
    """The last held-out metrics."""
    steps: int
    tokens: int
    finished: bool
    tokens_per_second: float = 0.0
    """Training throughput of this session (train steps only: evaluation and checkpoints excluded)."""
    too_short: tuple[int, int, int, int] | None = None
    """Train split: (sequences shorter than the window, all sequences, their tokens, all tokens) — never trained on."""


def train(cfg: TrainConfig, *, resume: bool = False, force: bool = False, progress: bool = True,
          log: Callable[[str], None] = print, world: World = SINGLE_PROCESS) -> TrainResult:
    """Validate ``cfg``, train, and write ``cfg.out``; see :class:`Trainer`. ``cfg.wandb``: mirrored to wandb."""
    trainer = Trainer(cfg, resume=resume, force=force, progress=progress, log=log, world=world)
    if cfg.wandb is None or not world.is_main:
        return trainer.fit()
    from mtsae.train.wandb_log import fit_with_wandb  # wandb is imported only when asked for

    return fit_with_wandb(trainer, cfg.wandb)


class Trainer:
    """Everything is checked in ``__init__`` (nothing is written); ``fit()`` trains.

    Args:
        resume: continue the run in ``cfg.out`` from its latest checkpoint
            (it must be a run of the same config); starts fresh if there is none.
        force: replace an existing run directory at ``cfg.out``.
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, force: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print, world: World = SINGLE_PROCESS) -> None:
        self.cfg = cfg.validate()
        self.progress, self.log, self.force = progress, log, force
        self.out = Path(cfg.out)
        # A URL is read through a verified local copy, pulled once (cache/shared.py); ranks wait on one pull.
        self.cache = open_cache(local_cache(cfg.cache, log=log, progress=progress and world.is_main))
        if cfg.layer not in self.cache.layers:
            raise MtsaeError(
                f"layer {cfg.layer} is not in cache {cfg.cache} (it holds layers {self.cache.layers}); "
                "pass --layer with one of them"
            )
        self.world = world  # torchrun: data-parallel over world.size processes (train/parallel.py)
        check_batch_divides(cfg.batch_windows, world)
        self.device = world.device(resolve_device(cfg.device))
        self.amp_dtype = resolve_amp_dtype(cfg.dtype, self.device)
        split = dict(window=cfg.window, stride=cfg.stride, holdout_fraction=cfg.holdout_fraction, seed=cfg.seed)
        self.train_set = WindowDataset(self.cache, cfg.layer, split="train", **split)
        self.heldout_set = WindowDataset(self.cache, cfg.layer, split="heldout", **split)
        self.batches_per_epoch = self.train_set.batches_per_epoch(cfg.batch_windows)
        self.total_steps = self._resolve_steps()
        self.eval_windows = len(self.heldout_set) if cfg.eval_tokens == 0 else min(
            len(self.heldout_set), -(-cfg.eval_tokens // cfg.window))
        self.resume, self.resume_from = resume, self._check_out_dir(resume)

        torch.manual_seed(cfg.seed)
        self.sae = self._create_sae()
        self.sae.train()
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr)
        world.check_same("the training options and cache", [cfg.to_dict(), self.cache.fingerprint])
        self.parallel = DataParallel(self.sae, world, self.device)
        self.step = self.epoch = self.next_batch = self.tokens = 0
        self.scale: float | None = None
        self.metrics: dict[str, float] = {}
        self.metrics_step = -1
        self.log_records = 0  # records in log.jsonl; a checkpoint stores it so that resume cuts the log there
        self.record_sinks: list[Callable[[dict[str, Any]], None]] = []  # also given each log.jsonl record (wandb)
        self.l0_control = None if cfg.target_l0 is None else L0Controller.for_run(
            cfg.target_l0, cfg.sparsity_warmup_steps, self.total_steps)

    # ================================================================== fit
    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train to ``total_steps`` and write ``final/``; returns the outcome.

        ``stop_at``: stop after that step instead (a checkpoint is written
        there, no ``final/``), as an interruption would; ``--resume`` continues.
        """
        self.world.barrier()  # every rank has read --out before rank 0 writes it
        with self._run_dir_lock():
            return self._fit(stop_at)

    @contextlib.contextmanager
    def _run_dir_lock(self) -> Iterator[None]:
        """Rank 0 holds ``out``'s lock while it trains: a second `mtsae train` into it stops with one line."""
        if not self.world.is_main:
            yield
            return
        out, existed = self.out, self.out.exists()
        lock = hold_folder_lock(out, RUN_LOCK, unwritable=f"cannot write the run directory {out}",
                                busy=f"another mtsae train is writing {out}; wait for it to finish or choose another --out")
        try:
            # Decided again under the lock: a run that another process wrote since __init__ is seen now.
            self.resume_from = self._check_out_dir(self.resume, log=lambda _line: None)
            yield
        finally:
            release_folder_lock(lock, out, RUN_LOCK)
            if not existed and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # created for the lock by a run that wrote nothing

    def _fit(self, stop_at: int | None) -> TrainResult:
        self._prepare_run_dir()
        if self.scale is None:
            self.scale = self.estimate_scale()
        bar = self._progress_bar()
        try:
            if self.step == 0 and self.cfg.eval_every:
                self.evaluate()  # the untrained baseline, logged as step 0
            self.clock = _Clock(self.tokens)
            for x in self.train_batches():
                components = self.train_step(x)
                self.write_log({"split": "train", "step": self.step, "tokens": self.tokens, **components})
                with self.clock.paused():
                    if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
                        self.evaluate()
                    stopping = stop_at is not None and self.step >= stop_at
                    if stopping or (self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0):
                        path = self.checkpoint_dir(self.step)
                        self._wait_checked()
                        if self.world.is_main:  # rank 0 writes for all: the ranks hold the same state
                            self.save_checkpoint(path)
                bar.update(1)
                bar.set_postfix(loss=f"{components['loss']:.4g}", tok_s=f"{self.clock.rate(self.tokens):,.0f}",
                                refresh=False)
                if stopping:
                    self.clock.stop()
                    self._close_log()
                    self.world.barrier()
                    return self._result(path, finished=False)
            self.clock.stop()
            bar.close()
            if self.metrics_step != self.step:
                self.evaluate()
            self._check_finite_metrics()
            self._wait_checked()
            final = self.save_final() if self.world.is_main else self.out / FINAL_DIRNAME
        except BaseException:
            self._close_log(quietly=True)  # a full disk must not turn the real error into a traceback
            raise
        finally:
            bar.close()
        self._close_log()
        self.world.barrier()  # every rank ends once final/ is written
        return self._result(final, finished=True)

    def _wait_checked(self) -> None:
        """Before anything is saved: every chunk read so far, on every rank, passed its digest check."""
        self.train_set.wait_checked()  # the held-out set shares the cache's checker
        self.world.barrier()  # a rank whose check failed has stopped: the others wait here, nothing is written

    def _result(self, checkpoint: Path, finished: bool) -> TrainResult:
        rate = self.clock.rate(self.tokens)
        self.log(f"trained {self.tokens - self.clock.start_tokens:,} tokens at {rate:,.0f} tokens/s "
                 "(train steps only, evaluation and checkpoints excluded)")
        return TrainResult(self.out, checkpoint, dict(self.metrics), self.step, self.tokens, finished, rate,
                           self._too_short())

    def _too_short(self) -> tuple[int, int, int, int]:
        offsets, train = self.cache.seq_offsets, self.train_set.sequences
        sequences, tokens = too_short(offsets, self.cfg.window, train)
        return sequences, len(train), tokens, int((offsets[train + 1] - offsets[train]).sum())

    # ================================================================ steps
    def train_batches(self) -> Iterator[torch.Tensor]:
        """Batches from the current position (epoch, next batch) to ``total_steps``."""
        remaining = self.total_steps - self.step
        if remaining <= 0:
            return
        batches = self.train_set.batches(
            self.cfg.batch_windows, self.epoch, shuffle=True, epochs=None, start_batch=self.next_batch,
            drop_last=True, device=self.device, prefetch=self.cfg.prefetch_batches,
            shard=(self.world.rank, self.world.size) if self.world.size > 1 else None,
        )
        for i, x in enumerate(batches):
            yield x
            if i + 1 >= remaining:
                return

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        """One optimizer step on ``x`` ``[B, T, d]`` (raw activations); returns the logged values."""
        cfg, sae = self.cfg, self.sae
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sparsity_scale = linear_warmup(self.step, cfg.sparsity_warmup_steps)
        if self.l0_control is not None:
            sparsity_scale *= self.l0_control.multiplier
        x = self.prepare_input(x)
        with self.autocast():
            out = self.parallel.loss(x, sparsity_scale)
        if not math.isfinite(out.components["loss"]):
            raise MtsaeError(
                f"the loss became {out.components['loss']} at step {self.step + 1} ({_fmt(out.components)}); "
                "lower --lr, set --grad-clip, or check the cache for non-finite activations"
            )
        out.loss.backward()
        sae.remove_parallel_gradient_()
        record: dict[str, float] = {"lr": lr, "sparsity_scale": sparsity_scale}
        if cfg.grad_clip > 0:
            record["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sae.constrain_parameters_()
        if self.l0_control is not None:
            self.l0_control.update(self.step, out.components["l0"])
        self.step += 1
        self.tokens += token_count(x) * self.world.size
        self.next_batch += 1
        if self.next_batch >= self.batches_per_epoch:
            self.epoch, self.next_batch = self.epoch + 1, 0
        return {**record, **out.components}

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the normalisation scale; flatten windows to tokens for per-token architectures."""
        if self.scale is not None and self.scale != 1.0:
            x = x * self.scale
        return x if self.sae.is_temporal else x.reshape(-1, x.shape[-1])

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) step ``step``: warm-up from 0, then decay to 0 over the last steps."""
        cfg, n = self.cfg, self.total_steps
        factor = 1.0
        if cfg.lr_warmup_steps > 0 and step < cfg.lr_warmup_steps:
            factor = (step + 1) / cfg.lr_warmup_steps
        decay_steps = 0 if cfg.lr_decay == "constant" else int(round(cfg.lr_decay_fraction * n))
        decay_start = n - decay_steps
        if decay_steps > 0 and step >= decay_start:
            progress = (step - decay_start) / decay_steps  # 0 at the first decayed step, → 1 after the last
            factor *= 1 - progress if cfg.lr_decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return cfg.lr * factor

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp_dtype == torch.bfloat16)

    # ========================================================== evaluation
    @torch.no_grad()
    def estimate_scale(self) -> float:
        """``sqrt(d_in) / mean ‖x‖`` over a seeded sample of train windows (special rows excluded); 1 if off."""
        if self.cfg.normalize_activations == "none":
            return 1.0
        ds = self.train_set
        idx = sample_windows(len(ds), -(-NORM_SAMPLE_TOKENS // ds.window), self.cfg.seed)
        total, count = 0.0, 0
        for start in range(0, len(idx), self.cfg.batch_windows):
            x, special = ds.assemble(idx[start : start + self.cfg.batch_windows])
            norms = x.double().norm(dim=-1)[~special]
            total, count = total + float(norms.sum()), count + norms.numel()
        mean = total / max(count, 1)
        if not math.isfinite(mean) or mean <= 0:
            raise MtsaeError(
                f"cannot normalise activations of layer {self.cfg.layer}: their mean norm is {mean}; "
                "check the cache for non-finite or all-zero activations, or pass --normalize-activations none"
            )
        scale = math.sqrt(ds.d_model) / mean
        self.log(f"activation scale {scale:.6g} (mean norm {mean:.4g} over {count:,} train tokens)")
        return scale

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out metrics on the fixed evaluation windows; logged and kept in ``self.metrics``.

        Special (zeroed) rows are excluded. ``mse`` is in the training units
        (after normalisation); ``fve`` = 1 − Σ‖x − x̂‖² / Σ‖x − mean‖²; ``l0`` active
        features per token; ``dead_fraction`` from the training tracker;
        ``silent_fraction`` features that never fire on these windows; ``sep`` the
        mean cosine of the codes of adjacent tokens (t, t+1) within windows.
        """
        if not self.world.is_main:  # rank 0 evaluates and logs for all ranks
            return self.metrics
        sae, d = self.sae, self.cache.d_model
        sae.eval()
        sse = sum_sq = l0 = sep = 0.0
        n = n_pairs = 0
        sum_x = torch.zeros(d, dtype=torch.float64, device=self.device)
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=self.device)
        batches = self.heldout_set.batches(
            self.cfg.batch_windows, 0, shuffle=True, limit=self.eval_windows, device=self.device,
            prefetch=self.cfg.prefetch_batches, with_special=True,
        )
        for x, special in batches:
            B, T, _ = x.shape
            x = x * self.scale if self.scale not in (None, 1.0) else x
            with self.autocast():
                codes = sae.encode(x if sae.is_temporal else x.reshape(-1, d))
                recon = sae.decode(codes)
            codes, recon = codes.float().reshape(B, T, -1), recon.float().reshape(B, T, d)
            keep = ~special
            xs, active = x[keep].double(), codes[keep] != 0
            sse += float((recon[keep].double() - xs).pow(2).sum())
            sum_x += xs.sum(0)
            sum_sq += float(xs.pow(2).sum())
            l0 += float(active.sum())
            fired |= active.any(0)
            n += xs.shape[0]
            pair = keep[:, :-1] & keep[:, 1:]
            if T > 1 and bool(pair.any()):
                u, v = codes[:, :-1][pair], codes[:, 1:][pair]
                cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp_min(1e-8)
                sep += float(cos.double().sum())
                n_pairs += int(pair.sum())
        sae.train()
        if n == 0:
            raise MtsaeError("the held-out windows hold only special tokens; raise --holdout-fraction")
        total_var = sum_sq - float(sum_x.pow(2).sum()) / n
        self.metrics = {
            "mse": sse / n,
            "fve": 1.0 - sse / total_var if total_var > 0 else float("nan"),
            "l0": l0 / n,
            "dead_fraction": float(sae.dead_mask().float().mean()),
            "silent_fraction": 1.0 - float(fired.float().mean()),
            "sep": sep / n_pairs if n_pairs else 0.0,
            "tokens": n,
        }
        self.metrics_step = self.step
        self.write_log({"split": "heldout", "step": self.step, "tokens": self.tokens,
                        **{k: v for k, v in self.metrics.items() if k != "tokens"}, "eval_tokens": n})
        return self.metrics

    def _check_finite_metrics(self) -> None:
        bad = {k: v for k, v in self.metrics.items() if not math.isfinite(v)}
        if bad:
            raise MtsaeError(f"held-out metrics are not finite after training ({bad}); lower --lr or set --grad-clip")

    # ========================================================= checkpoints
    def checkpoint_dir(self, step: int) -> Path:
        return self.out / CHECKPOINTS_DIRNAME / f"step_{step:06d}"

    def metadata(self, final: bool) -> dict[str, Any]:
        """Checkpoint metadata (``cfg.json["mtsae"]["metadata"]``)."""
        manifest, cfg = self.cache.manifest, self.cfg
        metrics = {k: v for k, v in self.metrics.items() if k != "tokens"}
        return {
            "model_name": manifest["model"]["id"],
            "model_revision": model_revision(manifest["model"]),
            "layer": cfg.layer,
            "hook_name": hook_name(cfg.layer),
            "d_in": self.cache.d_model,
            "d_sae": cfg.d_sae,
            "architecture": cfg.arch,
            "context_size": manifest.get("context_len"),
            "prepend_bos": True,
            "dataset_path": manifest.get("dataset", {}).get("id"),
            "cache_fingerprint": self.cache.fingerprint,
            "tokens_seen": self.tokens,
            "steps": self.step,
            ("final_metrics" if final else "heldout_metrics"): metrics,
            "heldout_metrics_step": self.metrics_step,
            "activation_scale": self.scale,
            "activation_scale_folded": True,
            "special_tokens": "zeroed (rows flagged in the cache's special_mask)",
            "mtsae_version": mtsae.__version__,
            "train_config": cfg.to_dict(),
            "sparsity_coefficient": self.sparsity_coefficient(),
            "seed": cfg.seed,
        }

    def sparsity_coefficient(self) -> dict[str, float] | None:
        """The sparsity coefficient in force (``--target-l0`` scales the configured one), or None (TopK-style)."""
        name = self.sae.sparsity_coefficient
        if name is None:
            return None
        multiplier = 1.0 if self.l0_control is None else self.l0_control.multiplier
        return {"name": name, "value": getattr(self.sae.cfg, name) * multiplier, "multiplier": multiplier}

    def save_checkpoint(self, path: Path) -> Path:
        """A resumable checkpoint: the folded SAE (SAELens layout) + ``trainer_state.pt``.

        One atomic directory (written aside, then renamed): a crash leaves the
        previous checkpoints and at worst a hidden temporary, never a
        ``step_N`` that resume could pick but not load. The log is made durable
        first, so it holds every record the checkpoint counts.
        """
        self._flush_log(durable=True)
        state = self._resume_state()
        with self._writing(f"checkpoint {path}"):
            save_checkpoint(fold_activation_scale(self.sae, self.scale or 1.0), path, self.metadata(final=False),
                            extra_files={STATE_FILENAME: lambda target: save_state(state, target)})
        return path

    def _resume_state(self) -> dict[str, Any]:
        """What ``trainer_state.pt`` holds: everything --resume needs to continue bit for bit."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "next_batch": self.next_batch,
            "tokens": self.tokens,
            "scale": self.scale,
            "metrics": self.metrics,
            "metrics_step": self.metrics_step,
            "l0_log_multiplier": None if self.l0_control is None else self.l0_control.log_multiplier,
            "l0_control": None if self.l0_control is None else self.l0_control.state(),
            "sae": {k: v.detach().cpu().clone() for k, v in self.sae.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "config": self.cfg.to_dict(),
            "cache_fingerprint": self.cache.fingerprint,
            "log_records": self.log_records,
        }

    def save_final(self) -> Path:
        with self._writing(f"the final checkpoint {self.out / FINAL_DIRNAME}"):
            path = save_checkpoint(fold_activation_scale(self.sae, self.scale or 1.0), self.out / FINAL_DIRNAME,
                                   self.metadata(final=True))
        self.log(f"final checkpoint: {path}")
        return path

    def load_state(self, path: Path) -> dict[str, Any]:
        state = read_resume_state(path)
        self._check_resume_state(path, state)
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.next_batch = state["step"], state["epoch"], state["next_batch"]
        self.tokens, self.scale = state["tokens"], state["scale"]
        self.metrics, self.metrics_step = dict(state["metrics"]), state["metrics_step"]
        if self.l0_control is not None:
            self.l0_control.restore(state.get("l0_control") or state["l0_log_multiplier"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.log(f"resuming {self.out} at step {self.step:,} ({self.tokens:,} tokens) from {path}")
        return state

    def _check_resume_state(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of another run (copied in by hand): its tensors would not fit, or fit wrongly."""
        try:
            same_config = TrainConfig.from_dict(state["config"]).same_run(self.cfg)
        except (MtsaeError, KeyError, TypeError):
            same_config = False
        if not same_config or state.get("cache_fingerprint") != self.cache.fingerprint:
            raise MtsaeError(
                f"cannot resume from {path}: it is a checkpoint of another run (different config or cache); "
                "remove it to resume from an earlier one, or pass --force to start over"
            )
        self._check_same_architecture_config(path)

    def _check_same_architecture_config(self, path: Path) -> None:
        """A run started under other architecture defaults (MTSAE padding was circular) must not resume
        as today's default: the same tensors would mean another function. Its cfg.json says what it was."""
        try:
            saved = json.loads((path / CFG_FILENAME).read_text())["mtsae"]["config"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # read_resume_state and the weights' load report a damaged checkpoint
        now = self.sae.cfg.to_dict()
        differs = {key: saved[key] for key in saved
                   if key in now and key not in self.sae.config_scale_powers and saved[key] != now[key]}  # folded: rescaled
        if differs:
            options = " ".join(f"--arch-option {key}={json.dumps(value)}" for key, value in differs.items())
            raise MtsaeError(
                f"cannot resume from {path}: its SAE was built with {differs}, but the same options now give "
                f"{ {key: now[key] for key in differs} } (a default changed since the run started), so it cannot "
                f"continue as the same run; start over with --force (add {options} to keep the old behaviour)")

    # ============================================================ run dir
    def _resolve_steps(self) -> int:
        cfg = self.cfg
        if len(self.heldout_set) == 0:
            raise MtsaeError(
                f"no held-out window of {cfg.window} tokens: the {len(self.heldout_set.sequences)} held-out sequences "
                "are all shorter; raise --holdout-fraction or lower --window"
            )
        if self.batches_per_epoch == 0:
            raise MtsaeError(
                f"the train split has {len(self.train_set)} windows of {cfg.window} tokens, fewer than one batch "
                f"of {cfg.batch_windows}; lower --batch-windows or --window, or harvest more tokens"
            )
        if cfg.steps is not None:
            return cfg.steps
        if cfg.train_tokens is not None:
            steps = cfg.train_tokens // cfg.batch_tokens
            if steps == 0:
                raise MtsaeError(
                    f"--train-tokens {cfg.train_tokens} is less than one batch ({cfg.batch_tokens} tokens), "
                    "so 0 steps would be trained; raise it or lower --batch-windows"
                )
            return steps
        return self.batches_per_epoch

    def _check_out_dir(self, resume: bool, log: Callable[[str], None] | None = None) -> Path | None:
        """Decide what to do with ``out`` without writing; returns the checkpoint to resume from."""
        out, log = self.out, log or self.log
        if out.exists() and not out.is_dir():
            raise MtsaeError(f"--out {out} is a file; choose a directory path")
        if not out.exists() or not any(not _TEMPORARY.match(p.name) and p.name != RUN_LOCK for p in out.iterdir()):
            if resume:
                log(f"nothing to resume in {out}; starting a new run")
            return None
        run = read_run_info(out)
        if run is None:
            raise MtsaeError(f"--out {out} is not empty and is not an mtsae run directory; choose another --out")
        try:
            previous = TrainConfig.from_dict(run["config"])
            differs = previous.differences(self.cfg)
        except (MtsaeError, KeyError, TypeError):
            differs = ["config"]
        if run.get("cache_fingerprint") != self.cache.fingerprint:
            differs.append("cache (fingerprint)")
        if self.force:
            return None
        if not resume:
            if differs:
                raise MtsaeError(
                    f"{out} holds a different run (differs in: {', '.join(differs)}); "
                    "choose another --out or pass --force to replace it"
                )
            raise MtsaeError(f"{out} already holds a run of this config; pass --resume to continue it or --force to start over")
        if differs:
            raise MtsaeError(
                f"cannot resume {out}: it was trained with a different config (differs in: {', '.join(differs)}); "
                "use the same options, or pass --force to start over"
            )
        if (out / FINAL_DIRNAME).exists():
            raise MtsaeError(f"the run in {out} is already finished ({out / FINAL_DIRNAME}); pass --force to train it again")
        latest = latest_checkpoint(out)
        if latest is None:
            log(f"no checkpoint in {out} yet; restarting the run from step 0")
        return latest

    def _prepare_run_dir(self) -> None:
        if not self.world.is_main:  # rank 0 owns the run directory; the others need only the resume state
            if self.resume_from is not None:
                self.load_state(self.resume_from)
            return
        out = self.out
        if self.force and out.exists() and read_run_info(out) is not None:
            self.log(f"replacing the run in {out}")
            empty_run_dir(out)
        with self._writing(f"the run directory {out}"):
            out.mkdir(parents=True, exist_ok=True)
            remove_temporaries(out)
            if self.resume_from is not None:
                state = self.load_state(self.resume_from)
                if "log_records" in state:
                    self.log_records = keep_log_records(out / LOG_FILENAME, state["log_records"])
                else:  # a checkpoint of an older mtsae: cut the log by step
                    self.log_records = truncate_log(out / LOG_FILENAME, self.step)
            else:
                for stale in (CHECKPOINTS_DIRNAME, FINAL_DIRNAME):
                    shutil.rmtree(out / stale, ignore_errors=True)
                self.log_records = keep_log_records(out / LOG_FILENAME, 0)
            info = {"config": self.cfg.to_dict(), "cache_fingerprint": self.cache.fingerprint,
                    "mtsae_version": mtsae.__version__, "total_steps": self.total_steps,
                    "compute_dtype": str(self.amp_dtype).removeprefix("torch.")}
            _atomic_write_text(out / RUN_FILENAME, json.dumps(info, indent=2) + "\n")
            self._log_file = open(out / LOG_FILENAME, "a", encoding="utf-8")

    def write_log(self, record: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        with self._writing(f"the training log {self.out / LOG_FILENAME}"):
            self._log_file.write(json.dumps(record) + "\n")
        self.log_records += 1
        for sink in self.record_sinks:
            sink(record)

    def _flush_log(self, durable: bool = False) -> None:
        if getattr(self, "_log_file", None) is not None and not self._log_file.closed:
            with self._writing(f"the training log {self.out / LOG_FILENAME}"):
                self._log_file.flush()
                if durable:
                    os.fsync(self._log_file.fileno())

    def _close_log(self, quietly: bool = False) -> None:
        if getattr(self, "_log_file", None) is not None and not self._log_file.closed:
            try:
                with self._writing(f"the training log {self.out / LOG_FILENAME}"):
                    self._log_file.close()
            except MtsaeError:
                if not quietly:
                    raise

    def _writing(self, what: str) -> contextlib.AbstractContextManager[None]:
        """A failed write (full disk, read-only folder) as one line that says how to go on."""
        return writing(what, RESUME_HINT)

    def _create_sae(self) -> SparseAutoencoder:
        cfg = self.cfg
        try:
            return create_sae(cfg.arch, d_in=self.cache.d_model, d_sae=cfg.d_sae, **cfg.arch_config).to(self.device)
        except (RuntimeError, TypeError, ValueError, MemoryError) as exc:
            if not isinstance(exc, MemoryError) and not re.search(r"allocate|out of memory|Overflow", str(exc)):
                raise
            raise MtsaeError(
                f"cannot allocate a {cfg.arch} SAE with d_sae {cfg.d_sae} on {self.device} "
                f"({str(exc).splitlines()[0][:160]}); lower --d-sae"
            ) from None

    def _progress_bar(self) -> tqdm:
        desc = f"train {self.cfg.arch} L{self.cfg.layer}"
        return tqdm(total=self.total_steps, initial=self.step, unit="step", desc=desc, disable=not self.progress,
                    dynamic_ncols=True)


# ======================================================================== helpers
class _Clock:
    """Wall time of the training loop minus what ``paused()`` blocks took (evaluation, checkpoints)."""

    def __init__(self, start_tokens: int) -> None:
        self.start_tokens = start_tokens
        self.started = time.perf_counter()
        self.stopped: float | None = None
        self.excluded = 0.0

    def stop(self) -> None:
        self.stopped = time.perf_counter()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t

    def rate(self, tokens: int) -> float:
        seconds = (self.stopped or time.perf_counter()) - self.started - self.excluded
        return (tokens - self.start_tokens) / max(seconds, 1e-9)


def fold_activation_scale(sae: SparseAutoencoder, scale: float) -> SparseAutoencoder:
    """A copy of ``sae`` that, on raw ``x``, gives ``sae(scale·x) / scale`` (codes too are divided by scale).

    Decoder rows keep unit norm (SAE-Bench checks it): ``W_enc``, ``W_dec`` and
    the conv kernels are unchanged, everything measured in input units (biases,
    thresholds, BatchNorm affine and statistics, BatchNorm eps, JumpReLU
    bandwidth) is divided by the power of ``scale`` the architecture declares
    (``scale_powers``, ``config_scale_powers``). Exact up to rounding, in eval and in training mode.
    """
    if scale == 1.0:
        return sae
    cfg = sae.cfg
    powers = sae.scale_powers
    changes = {name: getattr(cfg, name) / scale**p for name, p in sae.config_scale_powers.items()}
    folded = type(sae)(dataclasses.replace(cfg, **changes)).to(sae.W_dec.device)
    state = {}
    for name, tensor in sae.state_dict().items():
        if name in sae.training_state_buffers:
            state[name] = tensor.clone()
            continue
        if name not in powers:
            raise MtsaeError(
                f"cannot fold the normalisation scale into {sae.architecture}'s tensor {name!r}; "
                "declare its power in the class's scale_powers, or train with --normalize-activations none"
            )
        state[name] = tensor / scale ** powers[name]
    folded.load_state_dict(state)
    return folded.train(sae.training)


def resolve_amp_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def read_run_info(out: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((out / RUN_FILENAME).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("config"), dict) else None


def latest_checkpoint(out: Path) -> Path | None:
    """The resumable checkpoint (one with ``trainer_state.pt``) with the highest step, if any."""
    found = []
    root = out / CHECKPOINTS_DIRNAME
    if root.is_dir():
        for child in root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / STATE_FILENAME).is_file():
                found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def save_state(state: dict[str, Any], path: Path) -> None:
    """torch.save through memory: writing to a file itself, torch turns a full disk into an errno-less RuntimeError."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def read_resume_state(path: Path) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.pt``; a damaged one is named with the way out."""
    try:
        return torch.load(path / STATE_FILENAME, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise MtsaeError(
            f"cannot resume from {path}: its {STATE_FILENAME} is unreadable ({str(exc).splitlines()[0][:120]}); "
            "remove that checkpoint directory to resume from the one before"
        ) from None


def remove_temporaries(out: Path) -> None:
    """Delete what a killed run left half-written (hidden ``.NAME.tmp…`` entries); never a checkpoint."""
    for folder in (out, out / CHECKPOINTS_DIRNAME):
        if folder.is_dir():
            for entry in folder.iterdir():
                if _TEMPORARY.match(entry.name):
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def empty_run_dir(path: Path) -> None:
    """Delete a run but its lock (held by this run); moved aside first, ``run.json`` last, so a crash
    midway leaves a run that --force replaces, never a folder mtsae would not recognise as one."""
    aside = path.with_name(f".{path.name}.removing-{os.getpid()}")
    aside.mkdir()
    entries = sorted((p for p in path.iterdir() if p.name != RUN_LOCK), key=lambda p: p.name == RUN_FILENAME)
    for entry in entries:
        os.rename(entry, aside / entry.name)
    shutil.rmtree(aside)


def keep_log_records(path: Path, count: int) -> int:
    """Keep the first ``count`` records of the log (what the checkpoint resumed from had written); returns count."""
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as f:
        kept = [line.rstrip("\n") + "\n" for line, _ in zip(f, range(count))]
    _atomic_write_text(path, "".join(kept))
    return len(kept)


def truncate_log(path: Path, keep_until: int) -> int:
    """Keep only the log records of steps ``<= keep_until``; returns how many remain."""
    if not path.exists():
        return 0
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if record.get("step", 0) <= keep_until:
            kept.append(line)
    _atomic_write_text(path, "".join(line + "\n" for line in kept))
    return len(kept)


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl``."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _fmt(components: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in components.items())

