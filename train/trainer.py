"""Train an SAE on cached activations: ``Trainer(cfg).fit()``.

One step (the SAE's own methods do the architecture-specific work)::

    x = scale · batch                      [B, T, d]; flattened to [B·T, d] unless sae.is_temporal
    out = sae.loss(x, sparsity_scale=linear_warmup(step, sparsity_warmup_steps))
    out.loss.backward()
    sae.remove_parallel_gradient_()
    clip_grad_norm_(grad_clip)             if grad_clip > 0
    Adam step at lr(step)                  linear warm-up, then linear/cosine decay to 0 at the end
    sae.constrain_parameters_()            unit decoder rows (+ arch constraints)

Run directory ``out``: run.json, log.jsonl, checkpoints/step_NNNNNN/, final/ (train/rundir.py).

Activation normalisation: train/scale.py. Checkpoints and exact resume: train/checkpointing.py.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

import mtsae
from mtsae.cache import open_cache
from mtsae.cache.shared import local_cache
from mtsae.devices import resolve_amp_dtype, resolve_device
from mtsae.distributed import SINGLE_PROCESS, World
from mtsae.errors import MtsaeError, writing
from mtsae.train.base import SparseAutoencoder, linear_warmup
from mtsae.train.checkpointing import Checkpointing
from mtsae.train.clock import LoopClock
from mtsae.train.config import TrainConfig
from mtsae.train.heldout import check_finite, heldout_metrics
from mtsae.train.loader import WindowDataset
from mtsae.train.parallel import DataParallel, check_batch_divides, token_count
from mtsae.train.registry import create_sae
from mtsae.train.rundir import RESUME_HINT, RunDir, RunLog
from mtsae.train.rundir import read_log  # noqa: F401  (public: documented as mtsae.train.trainer.read_log)
from mtsae.train.scale import measure_scale
from mtsae.train.sparsity_control import L0Controller
from mtsae.train.windows import too_short


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


class Trainer(Checkpointing):
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
        self.run = RunDir(cfg.out)
        self.out = self.run.path
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
        self.train_set = WindowDataset(self.cache, cfg.layer, cfg.windowing(), split="train")
        self.heldout_set = WindowDataset(self.cache, cfg.layer, cfg.windowing(), split="heldout")
        self.batches_per_epoch = self.train_set.batches_per_epoch(cfg.batch_windows)
        self.total_steps = self._resolve_steps()
        self.eval_windows = len(self.heldout_set) if cfg.eval_tokens == 0 else min(
            len(self.heldout_set), -(-cfg.eval_tokens // cfg.window))
        self.resume = resume
        self.resume_from = self._resume_point(log)

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
        self.run_log: RunLog | None = None  # log.jsonl, opened by rank 0 when fit() starts
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
        with self.run.locked():
            # Decided again under the lock: a run that another process wrote since __init__ is seen now.
            self.resume_from = self._resume_point(log=lambda _line: None)
            yield

    def _resume_point(self, log: Callable[[str], None]) -> Path | None:
        return self.run.resume_point(self.cfg, self.cache.fingerprint, resume=self.resume, force=self.force,
                                     log=log)

    def _fit(self, stop_at: int | None) -> TrainResult:
        self._prepare_run_dir()
        if self.scale is None:
            self.scale = self.estimate_scale()
        bar = self._progress_bar()
        try:
            if self.step == 0 and self.cfg.eval_every:
                self.evaluate()  # the untrained baseline, logged as step 0
            self.clock = LoopClock(self.tokens)
            for x in self.train_batches():
                components = self.train_step(x)
                self.write_log({"split": "train", "step": self.step, "tokens": self.tokens, **components})
                with self.clock.paused():
                    if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
                        self.evaluate()
                    stopping = stop_at is not None and self.step >= stop_at
                    if stopping or (self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0):
                        path = self.run.checkpoint(self.step)
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
            check_finite(self.metrics)
            self._wait_checked()
            final = self.save_final() if self.world.is_main else self.run.final
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
    def estimate_scale(self) -> float:
        """The normalisation scale (train/scale.py); 1 when normalisation is off."""
        if self.cfg.normalize_activations == "none":
            return 1.0
        scale, mean, count = measure_scale(self.train_set, self.cfg.batch_windows, self.cfg.seed)
        self.log(f"activation scale {scale:.6g} (mean norm {mean:.4g} over {count:,} train tokens)")
        return scale

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics (train/heldout.py) on the fixed evaluation windows; logged and kept in ``self.metrics``."""
        if not self.world.is_main:  # rank 0 evaluates and logs for all ranks
            return self.metrics
        batches = self.heldout_set.batches(
            self.cfg.batch_windows, 0, shuffle=True, limit=self.eval_windows, device=self.device,
            prefetch=self.cfg.prefetch_batches, with_special=True,
        )
        self.sae.eval()
        self.metrics = heldout_metrics(self.sae, batches, scale=self.scale, autocast=self.autocast)
        self.sae.train()
        self.metrics_step = self.step
        measured = {k: v for k, v in self.metrics.items() if k != "tokens"}
        self.write_log({"split": "heldout", "step": self.step, "tokens": self.tokens, **measured,
                        "eval_tokens": self.metrics["tokens"]})
        return self.metrics

    # ============================================================ setup and run dir
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

    def _prepare_run_dir(self) -> None:
        if not self.world.is_main:  # rank 0 owns the run directory; the others need only the resume state
            if self.resume_from is not None:
                self.load_state(self.resume_from)
            return
        run = self.run
        if self.force and run.read_info() is not None:
            self.log(f"replacing the run in {run.path}")
            run.empty()
        with self._writing(f"the run directory {run.path}"):
            run.create()
            if self.resume_from is not None:
                records = run.cut_log_for(self.load_state(self.resume_from))
            else:
                records = run.start_over()
            run.write_info({"config": self.cfg.to_dict(), "cache_fingerprint": self.cache.fingerprint,
                            "mtsae_version": mtsae.__version__, "total_steps": self.total_steps,
                            "compute_dtype": str(self.amp_dtype).removeprefix("torch.")})
            self.run_log = run.open_log(records)

    def write_log(self, record: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        self.run_log.append(record)
        for sink in self.record_sinks:
            sink(record)

    def _close_log(self, quietly: bool = False) -> None:
        if self.run_log is not None:
            self.run_log.close(quietly)

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
def _fmt(components: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in components.items())

