"""``mtsae train --wandb PROJECT``: mirror a run to Weights & Biases.

What goes to wandb: the run's config (``TrainConfig`` plus the cache fingerprint and
mtsae version, as in ``run.json``), every record the trainer writes to ``log.jsonl``
(``train/<metric>`` and ``heldout/<metric>`` at that record's step), and the final
checkpoint folder as a ``model`` artifact. ``log.jsonl`` stays the record of truth;
wandb is a copy. wandb's own folder is ``<out>/wandb`` unless ``WANDB_DIR`` says
otherwise; ``WANDB_MODE=offline`` keeps it there for a later ``wandb sync``.

wandb is imported only when a run asks for it (it is not an mtsae dependency:
``pip install wandb``; sae-bench, in the ``eval`` extra, installs it too).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import mtsae
from mtsae.errors import MtsaeError


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise MtsaeError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from None
    return wandb


class WandbRun:
    """One wandb run for one ``mtsae train`` call (a resumed run starts a new wandb run)."""

    def __init__(self, project: str, out: Path, config: dict[str, Any]) -> None:
        wandb = _import_wandb()
        self._wandb = wandb
        self.name = out.resolve().name
        directory = os.environ.get("WANDB_DIR") or str(out)
        try:
            self.run = wandb.init(project=project, name=self.name, dir=directory, job_type="train",
                                  config={**config, "mtsae_version": mtsae.__version__})
        except Exception as exc:  # noqa: BLE001  (wandb's login/network/settings errors have many types)
            first = (str(exc).strip().splitlines() or [""])[0]
            raise MtsaeError(f"cannot start the wandb run in project {project!r}: {type(exc).__name__}: {first}; "
                             "log in (wandb login), set WANDB_MODE=offline, or drop --wandb") from None

    def log_record(self, record: dict[str, Any]) -> None:
        """A ``log.jsonl`` record, its metrics under ``<split>/``, at its step."""
        split = record.get("split", "train")
        metrics = {f"{split}/{key}": value for key, value in record.items()
                   if key not in ("split", "step") and isinstance(value, (int, float))}
        self.run.log(metrics, step=int(record["step"]))

    def log_checkpoint(self, path: Path, metrics: dict[str, float]) -> None:
        """The final checkpoint folder as a ``model`` artifact (name: the run folder's, made artifact-safe)."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-.") or "run"
        artifact = self._wandb.Artifact(f"{name}-final", type="model", metadata={"metrics": metrics})
        artifact.add_dir(str(path))
        self.run.log_artifact(artifact)

    def finish(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)
        # finish() can return before wandb's service has written the run's last records (its exit record
        # went missing under load); teardown waits for the service, so the run folder is complete here.
        self._wandb.teardown()


def fit_with_wandb(trainer: Any, project: str) -> Any:
    """``trainer.fit()`` with every log.jsonl record, then the final checkpoint, mirrored to a wandb run.

    The run starts at the first record, after the trainer has prepared its folder
    (``--force`` empties it first, wandb's folder included).
    """
    _import_wandb()  # a missing package stops the run before any training
    config = {**trainer.cfg.to_dict(), "cache_fingerprint": trainer.cache.fingerprint,
              "total_steps": trainer.total_steps}
    runs: list[WandbRun] = []

    def log_record(record: dict[str, Any]) -> None:
        if not runs:
            runs.append(WandbRun(project, trainer.out, config))
        runs[0].log_record(record)

    trainer.record_sinks.append(log_record)
    try:
        result = trainer.fit()
    except BaseException:
        if runs:
            runs[0].finish(failed=True)
        raise
    if runs:
        if result.finished:
            runs[0].log_checkpoint(result.checkpoint, result.metrics)
        runs[0].finish()
    return result
