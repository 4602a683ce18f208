"""SAEs that mtsae did not write: a SAELens checkpoint folder, or a SAELens release on the hub.

``mtsae eval`` benchmarks them next to ours through the same SAE-Bench adapter:
SAELens loads them (``SAE.load_from_disk`` / ``SAE.from_pretrained``, its own
converters for Gemma Scope and other releases), and :func:`from_saelens` turns the
result into the mtsae SAE that computes the same codes:

    SAELens ``standard``  → ``relu``      SAELens ``topk`` → ``topk``
    SAELens ``jumprelu``  → ``jumprelu``  (also what SAELens saves a BatchTopK SAE as)

Exact rewrites, so SAE-Bench sees one layout: ``apply_b_dec_to_input=False``
(Gemma Scope) becomes ``b_enc + b_dec @ W_enc``; decoder norms are folded in with
SAELens's own ``fold_W_dec_norm`` where that is exact (standard, jumprelu, topk with
``rescale_acts_by_decoder_norm``). Anything else (other architectures, input
normalisation, hook_z SAEs) ends in one ``MtsaeError`` line.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch

from mtsae.errors import MtsaeError
from mtsae.evaluate.checkpoints import CheckpointInfo, info_from_metadata
from mtsae.train.base import SparseAutoencoder
from mtsae.train.checkpoint import CFG_FILENAME, WEIGHTS_FILENAME
from mtsae.train.registry import create_sae

ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
"""SAELens architecture → the mtsae architecture whose eval-mode encode is the same function."""
FOLD_IS_EXACT = {"standard", "jumprelu"}


def is_saelens_folder(path: str | Path) -> bool:
    """A folder SAELens's ``save_model`` wrote: ``cfg.json`` (without an mtsae section) and the weights."""
    path = Path(path).expanduser()
    try:
        cfg = json.loads((path / CFG_FILENAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "mtsae" not in cfg and (path / WEIGHTS_FILENAME).is_file()


def parse_release(spec: str) -> tuple[str, str]:
    """``RELEASE:ID`` → ``(release, sae_id)``, as SAELens names them (pretrained_saes.yaml)."""
    release, sep, sae_id = spec.partition(":")
    if not sep or not release.strip() or not sae_id.strip():
        raise MtsaeError(f"--saelens takes RELEASE:ID (e.g. gemma-scope-2b-pt-res-canonical:layer_19/width_16k/canonical), "
                         f"got {spec!r}")
    return release.strip(), sae_id.strip()


def folder_info(path: str | Path) -> CheckpointInfo:
    """What an evaluation needs from a SAELens folder's ``cfg.json`` (no weights read)."""
    from sae_lens.loading.pretrained_sae_loaders import get_sae_lens_config_from_disk, handle_config_defaulting

    path = Path(path).expanduser().resolve()
    try:
        cfg = handle_config_defaulting(get_sae_lens_config_from_disk(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MtsaeError(f"{path}/{CFG_FILENAME} is not a SAELens config SAELens can read ({exc}); re-save it") from None
    return _info(cfg, path, f"SAELens checkpoint {path}", saelens=str(path))


def release_info(spec: str) -> CheckpointInfo:
    """What an evaluation needs from a SAELens release, by SAELens's own config getter (may reach the hub)."""
    from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

    release, sae_id = parse_release(spec)
    with _hub_errors(spec):
        cfg = load_sae_config_from_huggingface(release, sae_id)
    return _info(cfg, None, f"SAELens release {spec}", saelens=f"{release}:{sae_id}")


def _info(cfg: dict[str, Any], path: Path | None, what: str, saelens: str) -> CheckpointInfo:
    architecture = ARCHITECTURES.get(str(cfg.get("architecture")))
    if architecture is None:
        raise MtsaeError(f"{what} has SAELens architecture {cfg.get('architecture')!r}; mtsae eval runs "
                         f"{', '.join(sorted(ARCHITECTURES))} SAEs")
    _check_plain(cfg, what)
    meta = {**cfg, **(cfg.get("metadata") or {})}  # pre-6.0 configs keep these keys at the top level
    meta.setdefault("tokens_seen", meta.get("training_tokens"))
    return info_from_metadata(path, cfg, meta, architecture, is_temporal=False, what=what, saelens=saelens)


def _check_plain(cfg: dict[str, Any], what: str) -> None:
    if cfg.get("normalize_activations") not in (None, "none"):
        raise MtsaeError(f"{what} normalises its input ({cfg['normalize_activations']!r}); SAE-Bench feeds raw "
                         "activations: fold the normalisation into the weights and re-save it")
    if cfg.get("reshape_activations") not in (None, "none"):
        raise MtsaeError(f"{what} reads {cfg['reshape_activations']!r} activations; mtsae eval runs residual-stream SAEs")


def load_saelens_sae(info: CheckpointInfo, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load ``info``'s SAE with SAELens and convert it (see :func:`from_saelens`), in eval mode."""
    from sae_lens import SAE

    if info.path is not None:
        try:
            theirs = SAE.load_from_disk(str(info.path), device="cpu")
        except Exception as exc:  # noqa: BLE001  (safetensors, torch and SAELens each raise their own kinds)
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise MtsaeError(f"SAELens cannot load {info.path}: {type(exc).__name__}: {first}; the checkpoint is "
                             "damaged or not SAELens's layout, re-save it") from None
    else:
        release, sae_id = parse_release(str(info.saelens))
        with _hub_errors(str(info.saelens)):
            theirs = SAE.from_pretrained(release, sae_id, device="cpu", dtype=info.dtype)
    return from_saelens(theirs, info.label).to(device).eval()


@torch.no_grad()
def from_saelens(theirs: Any, label: str) -> SparseAutoencoder:
    """The mtsae SAE whose eval-mode ``encode``/``decode`` equal SAELens SAE ``theirs``'s (float tolerance)."""
    cfg = theirs.cfg
    kind = cfg.architecture()
    if kind not in ARCHITECTURES:
        raise MtsaeError(f"{label}: SAELens architecture {kind!r} has no mtsae counterpart ({', '.join(ARCHITECTURES)})")
    _check_plain({"normalize_activations": cfg.normalize_activations, "reshape_activations": cfg.reshape_activations},
                 label)
    rescaled = kind == "topk" and cfg.rescale_acts_by_decoder_norm
    if kind in FOLD_IS_EXACT or rescaled:
        theirs.fold_W_dec_norm()  # SAELens's own, exact for these: unit decoder rows as SAE-Bench expects
    options = {"k": cfg.k} if kind == "topk" else {}
    ours = create_sae(ARCHITECTURES[kind], d_in=cfg.d_in, d_sae=cfg.d_sae, **options).to(theirs.W_dec.dtype)
    b_enc = theirs.b_enc
    if not cfg.apply_b_dec_to_input:  # x @ W + b  ==  (x - b_dec) @ W + (b + b_dec @ W)
        b_enc = b_enc + theirs.b_dec @ theirs.W_enc
    for name, value in (("W_enc", theirs.W_enc), ("W_dec", theirs.W_dec), ("b_enc", b_enc), ("b_dec", theirs.b_dec)):
        getattr(ours, name).copy_(value)
    if kind == "jumprelu":  # SAELens: relu(pre)·1[pre > θ]; ours: pre·1[pre > θ]; equal once θ >= 0
        ours.set_threshold_(theirs.threshold.clamp(min=0))
    return ours


@contextlib.contextmanager
def _hub_errors(spec: str) -> Iterator[None]:
    """SAELens's and the hub's failures for a release, as one ``MtsaeError`` line."""
    try:
        yield
    except MtsaeError:
        raise
    except Exception as exc:  # noqa: BLE001  (the hub, SAELens's lookups and converters raise many kinds)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise MtsaeError(f"cannot load SAELens release {spec}: {type(exc).__name__}: {first}; check RELEASE:ID "
                         "against SAELens's pretrained_saes.yaml, and that the Hugging Face hub is reachable "
                         "(HF_HUB_OFFLINE unset)") from None
