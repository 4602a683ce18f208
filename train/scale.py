"""Activation normalisation (``--normalize-activations expected_norm``): estimate the scale, fold it into checkpoints.

The trainer multiplies inputs by ``scale = sqrt(d_in) / E‖x‖`` (estimated once on
train windows, special rows excluded, then kept fixed and saved). Saved
checkpoints have it **folded in** (:func:`fold_activation_scale`): they act on
raw activations, with unit-norm decoder rows, and produce codes in raw units
(``codes_raw = codes / scale``). ``trainer_state.pt`` keeps the unfolded
weights, so resuming is exact.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from mtsae.errors import MtsaeError
from mtsae.train.base import SparseAutoencoder
from mtsae.train.loader import WindowDataset
from mtsae.train.windows import sample_windows

NORM_SAMPLE_TOKENS = 65_536
"""Train tokens (whole windows, seeded sample) used to estimate the normalisation scale."""


@torch.no_grad()
def measure_scale(ds: WindowDataset, batch_windows: int, seed: int) -> tuple[float, float, int]:
    """``(sqrt(d_in) / mean ‖x‖, mean ‖x‖, tokens measured)`` over a seeded sample of ``ds``'s windows
    (special rows excluded)."""
    idx = sample_windows(len(ds), -(-NORM_SAMPLE_TOKENS // ds.window), seed)
    total, count = 0.0, 0
    for start in range(0, len(idx), batch_windows):
        x, special = ds.assemble(idx[start : start + batch_windows])
        norms = x.double().norm(dim=-1)[~special]
        total, count = total + float(norms.sum()), count + norms.numel()
    mean = total / max(count, 1)
    if not math.isfinite(mean) or mean <= 0:
        raise MtsaeError(
            f"cannot normalise activations of layer {ds.layer}: their mean norm is {mean}; "
            "check the cache for non-finite or all-zero activations, or pass --normalize-activations none"
        )
    return math.sqrt(ds.d_model) / mean, mean, count


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
