"""JumpReLU SAE (Rajamanoharan et al. 2024) with an L0 penalty.

::

    pre   = (x - b_dec) @ W_enc + b_enc
    codes = pre · H(pre - θ)                 (θ ≥ 0 per feature, so codes ≥ 0)
    loss  = mean_tokens ‖recon - x‖² + l0_coefficient · s · mean_tokens Σ_f H(pre_f - θ_f)

``H`` is the Heaviside step; ``s`` the trainer's ``sparsity_scale``. Gradients
w.r.t. θ use straight-through estimators with a rectangle kernel
``K(u) = 1[|u| < 1/2]`` of width ε = ``bandwidth``:

    ∂codes/∂θ  = -(θ/ε)·K((pre-θ)/ε)         ∂H(pre-θ)/∂θ = -(1/ε)·K((pre-θ)/ε)

and the L0 term sends no gradient to ``pre`` (DeepMind's variant), so the
encoder feels sparsity only through θ. θ is a plain parameter (not log θ, so a
small init can move within a typical ``lr · steps`` budget, as SAELens found);
``constrain_parameters_()`` clamps it at 0 after each step. A token position
with ``pre == θ`` is off, matching SAELens's ``pre > threshold``.

Scale (Rajamanoharan et al. 2024 set θ and ε relative to normalised inputs):
``threshold_init`` and ``bandwidth`` are in units of the trainer's normalised
activations (``E‖x‖ = √d_in``), where a random unit encoder column gives
pre-activations of standard deviation ≈ 1. θ starts at 1.5 (a random latent
fires on ~7 % of tokens) and ε is 1.0. The seed's 0.001 / 0.001 (the paper's
values for ~10⁵ steps at lr 7e-5) left θ unable to reach the ~1.8 the
synthetic benchmark needs within a few hundred Adam steps (θ moves at most
``lr`` per step whatever the coefficient): L0 stayed near 6.5 whatever the
target and no feature was recovered; a ε of 0.001 also puts almost no token
inside the estimator's window. With the L0 penalty warm-up
(``--sparsity-warmup-steps``) and ``--target-l0`` this reaches the target
within ±20 % (docs/results.md).

Start: the encoder begins at ``gain · W_decᵀ`` and θ at ``gain · threshold_init``
(:func:`initial_encoder_gain`). The tied unit-gain start reconstructed LM
activations at several times their size; reconstruction then pushed the active
latents below θ within ~10 steps, where they get no encoder gradient, and L0
fell from 36 to ≈ 5 with no L0 penalty — so ``--target-l0 16`` on the world LM
ended near 6 (docs/architectures.md, tests/test_jumprelu_init.py).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from mtsae.train.activations import heaviside_ste, jumprelu
from mtsae.train.base import Encoded, SAEConfig, SparseAutoencoder, Term, require
from mtsae.train.registry import register


@dataclasses.dataclass(frozen=True)
class JumpReLUSAEConfig(SAEConfig):
    l0_coefficient: float = 0.03
    """Weight of the L0 penalty (expected active features per token). 0.03: between the values that hold
    L0 16 on the world LM (≈ 0.004) and the embedded model (≈ 0.2), where --target-l0 starts its search."""
    bandwidth: float = 1.0
    """Width ε of the rectangle kernel in the straight-through estimators (normalised activation units)."""
    threshold_init: float = 1.5
    """Initial θ in units of a fresh latent's pre-activation σ (θ = encoder gain × this; ~7 % of tokens pass it)."""
    encoder_gain: float | None = None
    """Initial ``W_enc = gain · W_decᵀ``; None: :func:`initial_encoder_gain` (the first reconstruction's
    least-squares scale on normalised inputs). 1.0 is the plain tied start, which collapses L0 (module doc)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.l0_coefficient >= 0, f"l0_coefficient must be >= 0, got {self.l0_coefficient}")
        require(self.bandwidth > 0, f"bandwidth must be positive, got {self.bandwidth}")
        require(self.threshold_init >= 0, f"threshold_init must be >= 0, got {self.threshold_init}")
        require(self.encoder_gain is None or self.encoder_gain > 0,
                f"encoder_gain must be positive, got {self.encoder_gain}")

    @property
    def initial_gain(self) -> float:
        if self.encoder_gain is not None:
            return self.encoder_gain
        return initial_encoder_gain(self.d_in, self.d_sae, self.threshold_init)


def initial_encoder_gain(d_in: int, d_sae: int, threshold: float) -> float:
    """``d_in / (d_in + S)``: the least-squares scale of a tied start's first reconstruction.

    On normalised inputs (``‖x‖² ≈ d_in``) a unit-gain latent reads ``p = x·d_f ~ N(0, 1)`` and fires when
    ``p > θ₀``; the reconstruction ``R = Σ_active p_f d_f`` has ``<x, R> ≈ S = d_sae·E[p²; p > θ₀]`` and
    ``‖R‖² ≈ S²/d_in + S`` (its part along x, and the random rest), so ``<x, R>/‖R‖² = d_in / (d_in + S)``.
    Measured on the embedded model's layer 19 (d 64, d_sae 512, θ₀ 1.5): 0.31 against 0.32 from this formula.
    """
    density = math.exp(-threshold**2 / 2) / math.sqrt(2 * math.pi)
    tail = 0.5 * math.erfc(threshold / math.sqrt(2))
    return d_in / (d_in + d_sae * (threshold * density + tail))


@register("jumprelu")
class JumpReLUSAE(SparseAutoencoder):
    """JumpReLU SAE; loads in SAELens as ``architecture="jumprelu"``."""

    config_class = JumpReLUSAEConfig
    saelens_architecture = "jumprelu"
    sparsity_coefficient = "l0_coefficient"
    sparsity_symbol = "L0 λ"
    scale_powers = {**SparseAutoencoder.scale_powers, "threshold": 1}
    config_scale_powers = {"bandwidth": 1}
    # A low θ and a wide kernel, so the threshold's straight-through gradient is non-zero on a tiny batch.
    tiny_config = {"bandwidth": 0.5, "threshold_init": 0.05, "l0_coefficient": 0.1}
    cfg: JumpReLUSAEConfig

    def __init__(self, cfg: JumpReLUSAEConfig) -> None:
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), cfg.threshold_init * cfg.initial_gain))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        # Scaled so the first reconstruction is not several times the input (see the module doc).
        self.W_enc.mul_(self.cfg.initial_gain)
        if "threshold" in self._parameters:  # absent while the base __init__ runs
            self.threshold.fill_(self.cfg.threshold_init * self.cfg.initial_gain)

    def encode_full(self, x: torch.Tensor) -> Encoded:
        self.check_input(x)
        pre = self.pre_activations(x)
        return Encoded(jumprelu(pre, self.threshold, self.cfg.bandwidth), pre)

    def penalties(self, x, enc, recon, sparsity_scale, dead_mask) -> dict[str, Term]:
        active = heaviside_ste(enc.pre, self.threshold, self.cfg.bandwidth).sum(-1).mean()
        return {"l0_penalty": Term(active, self.cfg.l0_coefficient * sparsity_scale)}

    @torch.no_grad()
    def constrain_parameters_(self) -> None:
        super().constrain_parameters_()
        # A negative threshold would let negative pre-activations through.
        self.threshold.clamp_(min=0.0)
