"""The trainer's checkpoints: what they hold and how a run resumes from one.

A checkpoint is the SAE with the activation scale folded in (train/scale.py),
in the SAELens layout (train/checkpoint.py), its metadata, and, for
``checkpoints/step_NNNNNN/``, ``trainer_state.pt``: the unfolded SAE, the Adam
state, the step, the position in the window order (epoch, next batch), tokens
seen, the normaliser scale, the latest held-out metrics, the L0 controller,
the torch RNG states and how many log records were written. On CPU with a
fixed seed, N steps in one go equal k steps, a stop, and a resume to N, bit
for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

import mtsae
from mtsae.cache import hook_name
from mtsae.cache.format import model_revision
from mtsae.errors import MtsaeError
from mtsae.train.checkpoint import CFG_FILENAME, save_checkpoint
from mtsae.train.config import TrainConfig
from mtsae.train.rundir import STATE_FILENAME, read_resume_state, save_state
from mtsae.train.scale import fold_activation_scale


class Checkpointing:
    """The :class:`~mtsae.train.trainer.Trainer`'s checkpoint methods (a mixin: they read and restore its
    state: cfg, cache, sae, optimizer, step, epoch, next_batch, tokens, scale, metrics, metrics_step,
    l0_control, device, out, run, run_log, log, _writing)."""

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
        self.run_log.flush(durable=True)
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
            "log_records": self.run_log.records,
        }

    def save_final(self) -> Path:
        with self._writing(f"the final checkpoint {self.run.final}"):
            path = save_checkpoint(fold_activation_scale(self.sae, self.scale or 1.0), self.run.final,
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
