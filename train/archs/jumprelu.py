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
encoder feels sparsity only through θ. A token position with ``pre == θ`` is
off, matching SAELens's ``pre > threshold``.

θ is learned in log space, as in the paper's pseudo-code and SAELens's
``log_threshold``: ``θ = exp(r · φ)`` with φ the parameter and
``r = threshold_rate`` (3), so an Adam step moves log θ by up to ``r · lr`` (θ
changes by a factor, never crosses 0). And after each step θ_f is multiplied by
the change of ``‖W_enc[:, f]‖`` (``threshold_follows_encoder``), so θ keeps its
size relative to the latent's pre-activation scale. Why: the threshold that
suits a cache differs several-fold (≈ 1.7 on the synthetic benchmark, ≈ 0.6 on
the embedded model, ≈ 0.4 on the world LM, normalised units, L0 5–16), and a
plain θ moves at most ``lr`` a step: from the least-squares start below (θ ≈
0.5) the synthetic run spent most of its 300 steps far above its target L0 and
recovered 0 % of the features. Checkpoints, folding and SAELens see θ itself
(the state-dict tensor ``threshold``); φ and the last encoder norms are
training state (``mtsae_state.safetensors``), so a resumed run is bit-exact.

Scale (Rajamanoharan et al. 2024 set θ and ε relative to normalised inputs):
``threshold_init`` and ``bandwidth`` are in units of the trainer's normalised
activations (``E‖x‖ = √d_in``), where a random unit encoder column gives
pre-activations of standard deviation ≈ 1. θ starts at 1.5 (a random latent
fires on ~7 % of tokens) and ε is 1.0. The seed's 0.001 / 0.001 (the paper's
values for ~10⁵ steps at lr 7e-5) left θ unable to reach the ~1.8 the
synthetic benchmark needs within a few hundred Adam steps (a plain θ moves at
most ``lr`` per step whatever the coefficient): L0 stayed near 6.5 whatever the
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
    threshold_rate: float = 3.0
    """θ = exp(threshold_rate · φ) with φ the parameter: log θ moves ``threshold_rate`` times as fast as an
    Adam step on a plain parameter would move it (a learning-rate multiplier for log θ; module doc)."""
    threshold_follows_encoder: bool = True
    """After each step θ_f is multiplied by the change of ``‖W_enc[:, f]‖``, so θ keeps its size relative to the
    latent's pre-activation scale while the encoder grows or shrinks (module doc); False: θ moves by its gradient only."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.l0_coefficient >= 0, f"l0_coefficient must be >= 0, got {self.l0_coefficient}")
        require(self.bandwidth > 0, f"bandwidth must be positive, got {self.bandwidth}")
        require(self.threshold_init > 0, f"threshold_init must be > 0, got {self.threshold_init}")
        require(self.threshold_rate > 0, f"threshold_rate must be positive, got {self.threshold_rate}")
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
    training_state_buffers = SparseAutoencoder.training_state_buffers + ("encoder_norms", "threshold_exponent")
    buffer_reductions = {"encoder_norms": "mean"}  # equal on every rank anyway: a function of the shared W_enc
    cfg: JumpReLUSAEConfig
    encoder_norms: torch.Tensor

    def __init__(self, cfg: JumpReLUSAEConfig) -> None:
        super().__init__(cfg)
        self.threshold_exponent = nn.Parameter(torch.empty(cfg.d_sae))
        # ‖W_enc[:, f]‖ after the last step, so the next one can rescale θ by the change.
        self.register_buffer("encoder_norms", self.W_enc.detach().norm(dim=0))
        self.set_threshold_(torch.full((cfg.d_sae,), cfg.threshold_init * cfg.initial_gain))
        # Checkpoints, folding and SAELens see θ itself as the tensor "threshold".
        self._register_state_dict_hook(_threshold_to_state_dict)
        self.register_load_state_dict_pre_hook(_threshold_from_state_dict)

    @property
    def threshold(self) -> torch.Tensor:
        """θ ``[d_sae]`` in input units (differentiable; write it with :meth:`set_threshold_`)."""
        return _threshold(self.threshold_exponent, self.cfg.threshold_rate)

    @torch.no_grad()
    def set_threshold_(self, theta: torch.Tensor) -> None:
        """Set θ; θ <= 0 becomes 0 (exactly: φ = -inf), which SAELens's ``relu(pre)·1[pre > θ]`` equals."""
        self.threshold_exponent.copy_(_exponent(theta, self.cfg.threshold_rate))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        # Scaled so the first reconstruction is not several times the input (see the module doc).
        self.W_enc.mul_(self.cfg.initial_gain)
        if "threshold_exponent" in self._parameters:  # absent while the base __init__ runs
            self.encoder_norms.copy_(self.W_enc.norm(dim=0))
            self.set_threshold_(torch.full_like(self.encoder_norms, self.cfg.threshold_init * self.cfg.initial_gain))

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
        norms = self.W_enc.norm(dim=0)
        if self.cfg.threshold_follows_encoder:
            ratio = norms / self.encoder_norms.clamp_min(1e-12)
            self.threshold_exponent.add_(ratio.clamp_min(1e-12).log() / self.cfg.threshold_rate)
        self.encoder_norms.copy_(norms)

    def load_saved_tensors_(self, weights: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
        # Saved before θ was learned in log space (or by SAELens): θ alone, and the encoder as it is now.
        if "encoder_norms" not in state:
            state = {**state, "encoder_norms": weights["W_enc"].detach().float().norm(dim=0).to(weights["W_enc"].dtype)}
        if "threshold_exponent" not in state and "threshold" in weights:
            state = {**state, "threshold_exponent": _exponent(weights["threshold"], self.cfg.threshold_rate)}
        super().load_saved_tensors_(weights, state)


def _threshold(exponent: torch.Tensor, rate: float) -> torch.Tensor:
    return torch.exp(rate * exponent)  # θ = exp(r·φ)


def _exponent(theta: torch.Tensor, rate: float) -> torch.Tensor:
    return torch.log(theta.clamp_min(0)) / rate  # log 0 = -inf: exp gives θ = 0 back exactly


def _threshold_to_state_dict(module: JumpReLUSAE, state: dict, prefix: str, local_metadata: dict) -> dict:
    # θ for folding, checkpoints and SAELens; φ itself stays (training state) so a resumed run is bit-exact.
    state[prefix + "threshold"] = _threshold(state[prefix + "threshold_exponent"], module.cfg.threshold_rate)
    return state


def _threshold_from_state_dict(module: JumpReLUSAE, state: dict, prefix: str, *args) -> None:
    """θ is what counts; the stored φ is used only where it gives that θ exactly (not after folding)."""
    theta = state.pop(prefix + "threshold", None)
    exponent = state.get(prefix + "threshold_exponent")
    if theta is None:
        return
    exact = exponent is not None and torch.equal(_threshold(exponent, module.cfg.threshold_rate), theta)
    if not exact:
        state[prefix + "threshold_exponent"] = _exponent(theta, module.cfg.threshold_rate)
