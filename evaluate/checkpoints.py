"""What an evaluation needs to know about a checkpoint, read from its ``cfg.json`` (no weights).

The metadata keys are the ones ``mtsae train`` writes (``model_name``, ``layer``,
``hook_name``, ``cache_fingerprint``…, see ``Trainer.metadata``); checkpoints
saved by hand with :func:`mtsae.train.checkpoint.save_checkpoint` need at least
``model_name`` and ``layer``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtsae.errors import MtsaeError
from mtsae.train.checkpoint import CFG_FILENAME, FORMAT_VERSION, is_checkpoint
from mtsae.train.registry import get_architecture
from mtsae.train.rundir import FINAL_DIRNAME, RunDir


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path | None
    """The checkpoint folder; None for a SAELens release on the hub (see ``saelens``)."""
    architecture: str
    is_temporal: bool
    model_name: str
    layer: int
    hook_name: str
    d_in: int
    d_sae: int
    dtype: str
    cache_fingerprint: str | None = None
    context_size: int | None = None
    dataset: str | None = None
    tokens_seen: int | None = None
    is_causal: bool = True
    """False when a token's codes read later tokens (an MTSAE without causal padding)."""
    saelens: str | None = None
    """Set when mtsae did not write it: the SAELens folder, or ``RELEASE:ID`` of a SAELens release."""

    @property
    def label(self) -> str:
        """The folder, or ``RELEASE:ID`` for a hub release: what results and messages name it by."""
        return str(self.path) if self.path is not None else str(self.saelens)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly provenance for summaries."""
        return {
            "checkpoint": self.label, "saelens": self.saelens,
            "architecture": self.architecture, "temporal": self.is_temporal, "causal": self.is_causal,
            "trained_on_model": self.model_name, "layer": self.layer, "hook_name": self.hook_name,
            "d_in": self.d_in, "d_sae": self.d_sae, "dtype": self.dtype,
            "cache_fingerprint": self.cache_fingerprint, "tokens_seen": self.tokens_seen,
        }


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint directory, or a training run directory holding ``final/``."""
    path = Path(path).expanduser()
    if is_checkpoint(path):
        return path.resolve()
    if is_checkpoint(RunDir(path).final):
        return RunDir(path).final.resolve()
    raise MtsaeError(
        f"{path} is not an mtsae checkpoint (no {CFG_FILENAME} with an 'mtsae' section, nor a run's "
        f"{FINAL_DIRNAME}/) nor a SAELens checkpoint folder; pass a checkpoint directory such as runs/<name>/{FINAL_DIRNAME}"
    )


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """An mtsae checkpoint (or run directory), or a folder SAELens saved (mtsae.evaluate.saelens_checkpoints)."""
    from mtsae.evaluate import saelens_checkpoints

    if not is_checkpoint(path) and not is_checkpoint(RunDir(path).final) and saelens_checkpoints.is_saelens_folder(path):
        return saelens_checkpoints.folder_info(path)
    path = resolve_checkpoint_dir(path)
    cfg = json.loads((path / CFG_FILENAME).read_text())
    block = cfg["mtsae"]
    if block.get("format_version") != FORMAT_VERSION:
        raise MtsaeError(f"checkpoint {path} has mtsae checkpoint format {block.get('format_version')!r}, this mtsae "
                         f"reads format {FORMAT_VERSION}; evaluate it with the mtsae version that wrote it")
    arch = get_architecture(str(block.get("architecture")))
    meta = dict(block.get("metadata") or {})
    info = info_from_metadata(path, cfg, meta, arch.architecture, arch.is_temporal, f"checkpoint {path}")
    return dataclasses.replace(info, is_causal=arch.config_class.from_dict(dict(block.get("config") or {})).is_causal)


def info_from_metadata(path: Path | None, cfg: dict[str, Any], meta: dict[str, Any], architecture: str,
                       is_temporal: bool, what: str, saelens: str | None = None) -> CheckpointInfo:
    """Validate a checkpoint's model, layer, hook and widths (``cfg.json`` top level + metadata)."""
    model_name = _model_name(meta)
    if not model_name:
        raise MtsaeError(f"{what} does not say which model it was trained on (metadata 'model_name'); "
                         "re-save it with metadata={'model_name': ..., 'layer': ...}")
    layer = _layer(meta, what)
    if not all(isinstance(cfg.get(key), int) and cfg[key] > 0 for key in ("d_in", "d_sae")):
        raise MtsaeError(f"{what} has no valid d_in/d_sae in {CFG_FILENAME} ({cfg.get('d_in')!r}, {cfg.get('d_sae')!r}); "
                         "the checkpoint is damaged, re-save it")
    return CheckpointInfo(
        path=path, architecture=architecture, is_temporal=is_temporal, model_name=str(model_name),
        layer=layer, hook_name=meta.get("hook_name") or f"blocks.{layer}.hook_resid_post",
        d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]), dtype=str(cfg.get("dtype", "float32")),
        cache_fingerprint=meta.get("cache_fingerprint"), context_size=meta.get("context_size"),
        dataset=meta.get("dataset_path"), tokens_seen=meta.get("tokens_seen"), saelens=saelens,
    )


def _model_name(meta: dict[str, Any]) -> str | None:
    name = meta.get("model_name") or meta.get("model")
    return name.get("id") if isinstance(name, dict) else name


def _layer(meta: dict[str, Any], what: str) -> int:
    layer = meta.get("layer", meta.get("hook_layer"))
    if layer is None and meta.get("hook_name"):
        found = re.search(r"blocks\.(\d+)\.", str(meta["hook_name"]))
        layer = int(found.group(1)) if found else None
    if not isinstance(layer, int) or layer < 0:
        raise MtsaeError(f"{what} has no valid 'layer' in its metadata (got {layer!r}); re-save it with the layer")
    hook = meta.get("hook_name")
    if hook and hook != f"blocks.{layer}.hook_resid_post":
        raise MtsaeError(
            f"{what} was trained on {hook}, but SAE-Bench evaluates residual-stream SAEs at "
            f"blocks.{layer}.hook_resid_post; only hook_resid_post checkpoints can be evaluated"
        )
    return layer
