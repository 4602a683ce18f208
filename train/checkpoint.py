"""Save / load SAE checkpoints in the SAELens directory layout.

A checkpoint is a directory::

    cfg.json                  SAELens ≥ 6 config keys + an "mtsae" section
    sae_weights.safetensors   model tensors (exactly what SAELens's class expects for baselines)
    mtsae_state.safetensors   training bookkeeping (tokens_since_fired), kept apart so that
                              SAELens's strict load_state_dict never sees it

``cfg.json`` top level (read by ``sae_lens.SAE.load_from_disk``)::

    architecture            "standard" (relu) | "topk" | "jumprelu" (jumprelu, batchtopk)
                            | "mtsae" (SAELens opens it after ``import mtsae.saelens``)
    d_in, d_sae, dtype, device ("cpu"), apply_b_dec_to_input (true),
    normalize_activations ("none"), reshape_activations ("none"),
    k, rescale_acts_by_decoder_norm (false)           topk only
    metadata                the caller's metadata + sae_lens_version, hook_layer (= layer)…

``cfg.json["mtsae"]``::

    format_version  1
    architecture    registry name (relu, topk, batchtopk, jumprelu, mtsae)
    config          the architecture config dataclass as a dict
    mtsae_version   version of the package that wrote it
    metadata        the caller's metadata dict, verbatim (what load_checkpoint returns)

Writes are atomic: everything goes to a temporary sibling directory that is
renamed into place; an existing checkpoint at ``path`` is replaced (it is
moved aside first, so a crash leaves either the old or the new one, plus at
worst a stray ``.old`` directory). Round trips are bit-exact (dtypes kept).
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import mtsae
from mtsae.durable import publish_dir
from mtsae.errors import MtsaeError
from mtsae.train.base import SparseAutoencoder
from mtsae.train.registry import get_architecture

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
STATE_FILENAME = "mtsae_state.safetensors"
FORMAT_VERSION = 1
SAELENS_CFG_FORMAT = "6.0.0"
"""Written as ``metadata.sae_lens_version`` when the caller gives none: the
oldest SAELens whose cfg.json layout this follows (older ones are "pre-6.0")."""

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


class LoadedCheckpoint(NamedTuple):
    sae: SparseAutoencoder
    """The SAE, on the requested device, in **eval** mode."""
    metadata: dict[str, Any]
    """The metadata dict given to :func:`save_checkpoint`."""


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a directory written by :func:`save_checkpoint`."""
    cfg_path = Path(path) / CFG_FILENAME
    try:
        return isinstance(json.loads(cfg_path.read_text()).get("mtsae"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def _saelens_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    out = dict(metadata)
    out.setdefault("sae_lens_version", SAELENS_CFG_FORMAT)
    if "layer" in out:
        out.setdefault("hook_layer", out["layer"])  # the name SAE-Bench reads
    out.setdefault("hook_head_index", None)
    return out


def _build_cfg(sae: SparseAutoencoder, metadata: dict[str, Any]) -> dict[str, Any]:
    dtype = sae.W_dec.dtype
    if dtype not in _DTYPE_NAMES:
        raise MtsaeError(f"cannot save an SAE with dtype {dtype}; cast it to one of {list(_DTYPE_NAMES.values())}")
    return {
        "architecture": sae.saelens_architecture or sae.architecture,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": _DTYPE_NAMES[dtype],
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **sae.saelens_config(),
        "metadata": _saelens_metadata(metadata),
        "mtsae": {
            "format_version": FORMAT_VERSION,
            "architecture": sae.architecture,
            "config": sae.cfg.to_dict(),
            "mtsae_version": mtsae.__version__,
            "metadata": metadata,
        },
    }


def _to_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' save_file, with its I/O failures (full disk…) raised as the OSError they are."""
    try:
        save_file(_to_cpu(tensors), path, metadata={"format": "pt"})
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number) if number in errno.errorcode else str(exc), str(path)) from exc


def _folder_mode(file_mode: int) -> int:
    """The mode a folder gets under the umask that gave files ``file_mode``: search wherever read is allowed."""
    return file_mode | (file_mode & 0o444) >> 2


def save_checkpoint(
    sae: SparseAutoencoder, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None,
    extra_files: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write ``sae`` and ``metadata`` to the directory ``path`` atomically; returns the path.

    ``metadata`` must be JSON-serialisable (model name, layer, hook name, cache
    fingerprint, tokens seen, final metrics…); it lands verbatim in
    ``cfg.json["mtsae"]["metadata"]`` and, merged with SAELens defaults, in
    ``cfg.json["metadata"]``. Refuses to replace a directory that is not an
    mtsae checkpoint. ``extra_files`` maps file names to writers called with the
    file's path inside the temporary directory (the trainer's resume state), so
    they appear together with the weights or not at all.
    """
    path = Path(path)
    metadata = dict(metadata or {})
    cfg = _build_cfg(sae, metadata)
    try:
        cfg_text = json.dumps(cfg, indent=2, sort_keys=False)
    except (TypeError, ValueError) as exc:
        raise MtsaeError(f"checkpoint metadata is not JSON-serialisable ({exc}); pass plain str/int/float/list/dict values") from None
    if path.exists() and not is_checkpoint(path):
        raise MtsaeError(f"refusing to overwrite {path}: it exists and is not an mtsae checkpoint; choose another path")

    weights, state = sae.tensors_for_saving()

    def build(tmp: Path) -> None:
        (tmp / CFG_FILENAME).write_text(cfg_text + "\n")  # first: its mode is the umask's, which the others copy
        file_mode = (tmp / CFG_FILENAME).stat().st_mode & 0o777
        tmp.chmod(_folder_mode(file_mode))  # mkdtemp makes it 0700
        for tensors, name in ((weights, WEIGHTS_FILENAME), (state, STATE_FILENAME)):
            _save_tensors(tensors, tmp / name)
            (tmp / name).chmod(file_mode)  # safetensors writes 0600: teammates could not read the weights
        for name, write in (extra_files or {}).items():
            write(tmp / name)

    publish_dir(path, build)  # an existing checkpoint is replaced: a crash leaves the old one or the new one
    return path


def _read_cfg(path: Path) -> dict[str, Any]:
    cfg_path = path / CFG_FILENAME
    if not cfg_path.is_file():
        raise MtsaeError(f"{path} is not an SAE checkpoint (no {CFG_FILENAME}); pass a directory written by save_checkpoint")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise MtsaeError(f"{cfg_path} is not valid JSON ({exc}); the checkpoint is corrupt, re-save it") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("mtsae"), dict):
        raise MtsaeError(
            f"{path} was not written by mtsae (no 'mtsae' section in {CFG_FILENAME}); "
            "open plain SAELens checkpoints with sae_lens.SAE.load_from_disk"
        )
    return cfg


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint written by :func:`save_checkpoint` → ``(sae, metadata)``.

    The class comes from the registry via ``cfg.json["mtsae"]["architecture"]``.
    The SAE is returned in eval mode (inference semantics: BatchNorm running
    statistics, the BatchTopK threshold); call ``.train()`` to resume training.
    Raises ``MtsaeError`` for a missing/corrupt checkpoint, an unknown format
    version or architecture, or weights that do not match the config.
    """
    path = Path(path)
    cfg = _read_cfg(path)
    block = cfg["mtsae"]
    version = block.get("format_version")
    if version != FORMAT_VERSION:
        raise MtsaeError(
            f"{path} has mtsae checkpoint format {version!r}, this mtsae reads format {FORMAT_VERSION}; "
            "load it with the mtsae version that wrote it"
        )
    cls = get_architecture(str(block.get("architecture")))
    config = cls.config_class.from_dict(dict(block.get("config") or {}))
    if (cfg.get("d_in"), cfg.get("d_sae")) != (config.d_in, config.d_sae):
        raise MtsaeError(f"{path}/{CFG_FILENAME} is inconsistent: top-level d_in/d_sae differ from the mtsae config; re-save it")
    for name in (WEIGHTS_FILENAME, STATE_FILENAME):
        if not (path / name).is_file():
            raise MtsaeError(f"{path} is incomplete: {name} is missing; re-save the checkpoint")

    sae = cls(config)
    weights = load_file(path / WEIGHTS_FILENAME)
    state = load_file(path / STATE_FILENAME)
    sae.load_saved_tensors_(weights, state)
    sae.to(device)
    sae.eval()
    return LoadedCheckpoint(sae, dict(block.get("metadata") or {}))
