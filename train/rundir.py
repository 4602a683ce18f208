"""The run directory of `mtsae train`: the one module that knows its names, reads it and writes it.

Layout of ``out``::

    run.json                        resolved TrainConfig, cache fingerprint, mtsae version, total steps,
                                    compute dtype
    log.jsonl                       one JSON object per step ("split": "train": step, tokens, lr,
                                    sparsity_scale, grad_norm, every loss component) and per
                                    evaluation ("split": "heldout": mse, fve, l0, dead_fraction,
                                    silent_fraction, sep)
    checkpoints/step_NNNNNN/        SAELens-layout checkpoint (train/checkpoint.py)
                                    + trainer_state.pt (what --resume needs)
    final/                          the finished SAE; written only when every step succeeded
    eval/summary.json               SAE-Bench results of final/ (`mtsae experiment`)
    analysis.json                   statistics of final/ (`mtsae experiment`, evaluate/analysis.py)

Writers: the trainer (through :class:`RunDir` and :class:`RunLog`) and `mtsae experiment`;
readers: report, analysis, experiment, checkpoint resolution. Files are replaced
atomically (mtsae/durable.py); a killed run leaves at most hidden ``.NAME.tmp…``
entries, which the next run removes (:meth:`RunDir.remove_temporaries`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

from mtsae.durable import write_text_atomic
from mtsae.errors import MtsaeError, writing
from mtsae.locks import hold_folder_lock, release_folder_lock
from mtsae.train.config import TrainConfig

RUN_FILENAME = "run.json"
LOG_FILENAME = "log.jsonl"
STATE_FILENAME = "trainer_state.pt"
CHECKPOINTS_DIRNAME = "checkpoints"
FINAL_DIRNAME = "final"
FINAL_CFG = "cfg.json"
"""train/checkpoint.py's CFG_FILENAME (a test keeps them equal), named here so that reading a run needs no torch."""
EVAL_SUMMARY = Path("eval") / "summary.json"
ANALYSIS_FILENAME = "analysis.json"
RUN_LOCK = ".mtsae-train.lock"
"""Held by the one `mtsae train` writing a run directory (removed when it ends)."""
RESUME_HINT = "re-run the same command with --resume to continue from the last checkpoint"

_STEP_DIR = re.compile(r"^step_(\d+)$")
_TEMPORARY = re.compile(r"^\.(step_\d+|final|run\.json|log\.jsonl|trainer_state\.pt)\.tmp")
"""Half-written files and directories a killed run leaves (atomic writes go through these names)."""


class RunDir:
    """A run directory at ``path`` (it need not exist yet)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------ names
    @property
    def info_file(self) -> Path:
        return self.path / RUN_FILENAME

    @property
    def log_file(self) -> Path:
        return self.path / LOG_FILENAME

    @property
    def final(self) -> Path:
        return self.path / FINAL_DIRNAME

    @property
    def final_cfg(self) -> Path:
        return self.final / FINAL_CFG

    @property
    def eval_summary(self) -> Path:
        return self.path / EVAL_SUMMARY

    @property
    def analysis(self) -> Path:
        return self.path / ANALYSIS_FILENAME

    def checkpoint(self, step: int) -> Path:
        return self.path / CHECKPOINTS_DIRNAME / f"step_{step:06d}"

    @property
    def is_finished(self) -> bool:
        return self.final.is_dir()

    # ------------------------------------------------------------------ reading
    def read_info(self) -> dict[str, Any] | None:
        """``run.json``, or None when the folder is not a run (no, or no valid, ``run.json``)."""
        try:
            info = json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) and isinstance(info.get("config"), dict) else None

    def read_log(self) -> list[dict[str, Any]]:
        """The records of ``log.jsonl`` ([] when there is none yet)."""
        return read_log(self.log_file) if self.log_file.is_file() else []

    def latest_checkpoint(self) -> Path | None:
        """The resumable checkpoint (one with ``trainer_state.pt``) with the highest step, if any."""
        found = []
        root = self.path / CHECKPOINTS_DIRNAME
        if root.is_dir():
            for child in root.iterdir():
                match = _STEP_DIR.match(child.name)
                if match and (child / STATE_FILENAME).is_file():
                    found.append((int(match.group(1)), child))
        return max(found)[1] if found else None

    def holds_a_run(self) -> bool:
        """Anything besides a killed run's temporaries and the lock."""
        return self.path.is_dir() and any(
            not _TEMPORARY.match(p.name) and p.name != RUN_LOCK for p in self.path.iterdir())

    # ------------------------------------------------------------------ reuse
    def resume_point(self, cfg: TrainConfig, fingerprint: str, *, resume: bool, force: bool,
                     log: Callable[[str], None]) -> Path | None:
        """Decide, without writing, what to do with this folder for a run of ``cfg`` on the cache
        ``fingerprint``; returns the checkpoint to resume from (None: start at step 0)."""
        if self.path.exists() and not self.path.is_dir():
            raise MtsaeError(f"--out {self.path} is a file; choose a directory path")
        if not self.holds_a_run():
            if resume:
                log(f"nothing to resume in {self.path}; starting a new run")
            return None
        differs = self._differences(cfg, fingerprint)
        if force:
            return None
        if not resume:
            if differs:
                raise MtsaeError(
                    f"{self.path} holds a different run (differs in: {', '.join(differs)}); "
                    "choose another --out or pass --force to replace it"
                )
            raise MtsaeError(f"{self.path} already holds a run of this config; pass --resume to continue it "
                             "or --force to start over")
        if differs:
            raise MtsaeError(
                f"cannot resume {self.path}: it was trained with a different config (differs in: {', '.join(differs)}); "
                "use the same options, or pass --force to start over"
            )
        if self.final.exists():
            raise MtsaeError(f"the run in {self.path} is already finished ({self.final}); pass --force to train it again")
        latest = self.latest_checkpoint()
        if latest is None:
            log(f"no checkpoint in {self.path} yet; restarting the run from step 0")
        return latest

    def _differences(self, cfg: TrainConfig, fingerprint: str) -> list[str]:
        run = self.read_info()
        if run is None:
            raise MtsaeError(f"--out {self.path} is not empty and is not an mtsae run directory; choose another --out")
        try:
            differs = TrainConfig.from_dict(run["config"]).differences(cfg)
        except (MtsaeError, KeyError, TypeError):
            differs = ["config"]
        if run.get("cache_fingerprint") != fingerprint:
            differs.append("cache (fingerprint)")
        return differs

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock: a second `mtsae train` into it stops with one line."""
        existed = self.path.exists()
        lock = hold_folder_lock(self.path, RUN_LOCK, unwritable=f"cannot write the run directory {self.path}",
                                busy=f"another mtsae train is writing {self.path}; wait for it to finish or "
                                     "choose another --out")
        try:
            yield
        finally:
            release_folder_lock(lock, self.path, RUN_LOCK)
            if not existed and self.path.is_dir() and not any(self.path.iterdir()):
                self.path.rmdir()  # created for the lock by a run that wrote nothing

    def create(self) -> None:
        """Make the folder and remove what a killed run left half-written (hidden ``.NAME.tmp…`` entries)."""
        self.path.mkdir(parents=True, exist_ok=True)
        for folder in (self.path, self.path / CHECKPOINTS_DIRNAME):
            if folder.is_dir():
                for entry in folder.iterdir():
                    if _TEMPORARY.match(entry.name):
                        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def empty(self) -> None:
        """Delete the run but its lock (held by this run); moved aside first, ``run.json`` last, so a crash
        midway leaves a run that --force replaces, never a folder mtsae would not recognise as one."""
        aside = self.path.with_name(f".{self.path.name}.removing-{os.getpid()}")
        aside.mkdir()
        entries = sorted((p for p in self.path.iterdir() if p.name != RUN_LOCK), key=lambda p: p.name == RUN_FILENAME)
        for entry in entries:
            os.rename(entry, aside / entry.name)
        shutil.rmtree(aside)

    def start_over(self) -> int:
        """A fresh start in a folder that may hold a stopped run's files: no checkpoints, no final, empty log."""
        for stale in (CHECKPOINTS_DIRNAME, FINAL_DIRNAME):
            shutil.rmtree(self.path / stale, ignore_errors=True)
        return self.keep_log_records(0)

    def write_info(self, info: dict[str, Any]) -> None:
        write_text_atomic(self.info_file, json.dumps(info, indent=2) + "\n")

    def keep_log_records(self, count: int) -> int:
        """Keep the first ``count`` records of the log (what the checkpoint resumed from had written); returns count."""
        if not self.log_file.exists():
            return 0
        with open(self.log_file, encoding="utf-8") as f:
            kept = [line.rstrip("\n") + "\n" for line, _ in zip(f, range(count))]
        write_text_atomic(self.log_file, "".join(kept))
        return len(kept)

    def truncate_log(self, keep_until: int) -> int:
        """Keep only the log records of steps ``<= keep_until``; returns how many remain."""
        if not self.log_file.exists():
            return 0
        kept = []
        for line in self.log_file.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            if record.get("step", 0) <= keep_until:
                kept.append(line)
        write_text_atomic(self.log_file, "".join(line + "\n" for line in kept))
        return len(kept)

    def cut_log_for(self, state: dict[str, Any]) -> int:
        """Cut the log back to what the resumed checkpoint had written; returns the records kept."""
        if "log_records" in state:
            return self.keep_log_records(state["log_records"])
        return self.truncate_log(state["step"])  # a checkpoint of an older mtsae: cut by step

    def open_log(self, records: int) -> RunLog:
        return RunLog(self.log_file, records)


class RunLog:
    """``log.jsonl`` opened for appending; a failed write (full disk) is one line that says how to go on."""

    def __init__(self, path: Path, records: int) -> None:
        self.path = path
        self.records = records  # a checkpoint stores the count so that resume cuts the log there
        self._file = open(path, "a", encoding="utf-8")

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        return writing(f"the training log {self.path}", RESUME_HINT)

    def append(self, record: dict[str, Any]) -> None:
        with self._writing():
            self._file.write(json.dumps(record) + "\n")
        self.records += 1

    def flush(self, durable: bool = False) -> None:
        """Flush; ``durable``: also fsync (before a checkpoint that counts these records)."""
        if not self._file.closed:
            with self._writing():
                self._file.flush()
                if durable:
                    os.fsync(self._file.fileno())

    def close(self, quietly: bool = False) -> None:
        if self._file.closed:
            return
        try:
            with self._writing():
                self._file.close()
        except MtsaeError:
            if not quietly:
                raise


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl``."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The resumable checkpoint of the run in ``out`` with the highest step, if any."""
    return RunDir(out).latest_checkpoint()


# ---------------------------------------------------------------------- resume state
def save_state(state: dict[str, Any], path: Path) -> None:
    """torch.save through memory: writing to a file itself, torch turns a full disk into an errno-less RuntimeError."""
    import torch  # here: readers of a run (report) do not load torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def read_resume_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.pt``; a damaged one is named with the way out."""
    import torch

    try:
        return torch.load(checkpoint / STATE_FILENAME, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise MtsaeError(
            f"cannot resume from {checkpoint}: its {STATE_FILENAME} is unreadable ({str(exc).splitlines()[0][:120]}); "
            "remove that checkpoint directory to resume from the one before"
        ) from None
