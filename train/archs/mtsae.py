"""Multi-Scale Temporal SAE (MTSAE).

::

    pre   = (x - b_dec) @ W_enc + b_enc                       [B, T, d_sae]
    mixed = pre + Σ_{r ∈ dilations} BN_r(conv_r(pre))         (mtsae.train.temporal)
    codes = ReLU(mixed)            or TopK_k(mixed) then ReLU  (activation="topk")
    recon = codes @ W_dec + b_dec
    loss  = mean_tokens ‖recon - x‖²
            + l1_coefficient · s · mean_tokens Σ_f |codes_f|
            + cos_coefficient · L_sep
            (+ auxk_coefficient · L_aux when activation="topk")

    L_sep = 1/(B·(T-1)) · Σ_b Σ_{t=0}^{T-2} <c[b,t], c[b,t+1]> / max(‖c[b,t]‖·‖c[b,t+1]‖, 1e-8)

``conv_r`` is a depth-wise (one kernel per feature) dilated 1-D convolution over
time and ``BN_r`` a BatchNorm over the feature channel with statistics over B
and T (running statistics in eval mode).

Design choice: mix the *pre-activations*, not the input or the codes.
  * Every feature keeps exactly one encoder direction (a column of ``W_enc``)
    and one decoder direction (a row of ``W_dec``); the temporal path only
    re-weights a feature's own evidence across neighbouring tokens, so
    features stay interpretable and the SAELens/SAE-Bench weight layout holds.
  * The mixing is per feature and depth-wise: ``len(dilations)·K`` weights
    per feature instead of a d_in×d_in or d_sae×d_sae temporal map.
  * Mixing before the non-linearity lets context both raise and suppress a
    feature (a post-ReLU mix could only add to already-positive codes).
  * A fused kernel can later consume exactly this ``[B, T, d_sae]`` tensor.

``[N, d_in]`` input is treated as N independent sequences of length T = 1; the
padding mode then decides what each length-1 convolution sees (c = centre tap):
  * circular, replicate: every tap reads the token itself → conv_r = (Σ_j w[r, :, j])·pre
  * zeros: only the centre tap is in range → conv_r = w[r, :, c]·pre
  * causal: only the last (current-step) tap → conv_r = w[r, :, K-1]·pre
The BatchNorm then normalises over the N tokens (training) or with running
statistics (eval), and ``L_sep = 0`` (no adjacent pairs). In eval mode this makes
``[N, d]`` encoding a per-token function, *different* from encoding the same
tokens as one ``[1, N, d]`` sequence.
"""

from __future__ import annotations

import dataclasses

import torch

from mtsae.errors import MtsaeError
from mtsae.train import losses
from mtsae.train.activations import topk_relu
from mtsae.train.base import Encoded, SAEConfig, SparseAutoencoder, Term, require
from mtsae.train.registry import register
from mtsae.train.temporal import TemporalMixer, is_causal, validate_temporal_args

ACTIVATIONS = ("relu", "topk")


@dataclasses.dataclass(frozen=True)
class MTSAEConfig(SAEConfig):
    l1_coefficient: float = 0.04
    """Weight of the L1 penalty ``mean_tokens Σ_f |codes_f|``."""
    cos_coefficient: float = 0.1
    """Weight of the adjacent-step cosine feature-separation loss ``L_sep``."""
    dilations: tuple[int, ...] = (1, 2, 4)
    """Dilation rates, one depth-wise conv + BatchNorm branch each."""
    kernel_size: int = 3
    """Taps per branch; must be odd unless ``padding="causal"``."""
    padding: str = "causal"
    """Boundary rule over the window: ``causal | circular | replicate | zeros``. Only ``causal``
    (taps at t, t-r, …) lets the SAE be spliced into a model; the others read future tokens."""
    activation: str = "relu"
    """``relu``, or ``topk`` (TopK on the mixed pre-activations, with AuxK)."""
    k: int = 64
    """Active latents per token when ``activation="topk"``."""
    k_aux: int | None = None
    """AuxK latents when ``activation="topk"``; ``None`` means ``d_in // 2``."""
    auxk_coefficient: float = 1 / 32
    """AuxK weight when ``activation="topk"``."""
    bn_momentum: float = 0.1
    """BatchNorm running-statistics momentum (``torch.nn.BatchNorm1d`` convention)."""
    bn_eps: float = 1e-5
    """BatchNorm variance epsilon."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # JSON round trips turn the tuple into a list; keep the config hashable.
        object.__setattr__(self, "dilations", tuple(self.dilations))
        validate_temporal_args(self.dilations, self.kernel_size, self.padding)
        require(self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        require(self.l1_coefficient >= 0, f"l1_coefficient must be >= 0, got {self.l1_coefficient}")
        require(self.cos_coefficient >= 0, f"cos_coefficient must be >= 0, got {self.cos_coefficient}")
        require(
            self.activation != "topk" or 0 < self.k <= self.d_sae,
            f"k must be in 1..d_sae={self.d_sae} for activation='topk', got {self.k}",
        )
        require(self.k_aux is None or self.k_aux > 0, f"k_aux must be positive or None, got {self.k_aux}")
        require(self.auxk_coefficient >= 0, f"auxk_coefficient must be >= 0, got {self.auxk_coefficient}")
        require(0 <= self.bn_momentum <= 1, f"bn_momentum must be in [0, 1], got {self.bn_momentum}")
        require(self.bn_eps > 0, f"bn_eps must be positive, got {self.bn_eps}")

    @property
    def is_causal(self) -> bool:
        return is_causal(self.kernel_size, self.dilations, self.padding)


@register("mtsae")
class MTSAE(SparseAutoencoder):
    """Multi-Scale Temporal SAE (see module docstring). SAELens opens it after ``import mtsae.saelens``."""

    config_class = MTSAEConfig
    saelens_architecture = None
    is_temporal = True
    sparsity_coefficient = "l1_coefficient"
    cfg: MTSAEConfig

    def __init__(self, cfg: MTSAEConfig) -> None:
        super().__init__(cfg)
        self.temporal = TemporalMixer(
            cfg.d_sae, cfg.dilations, cfg.kernel_size, cfg.padding, cfg.bn_momentum, cfg.bn_eps
        )

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        if "temporal" in self._modules:  # absent while the base __init__ runs
            self.temporal.reset_parameters()

    def encode_full(self, x: torch.Tensor) -> Encoded:
        self.check_input(x)
        mixed = mix_over_time(self.temporal, self.pre_activations(x))
        return Encoded(sparsify(mixed, self.cfg), mixed)

    def penalties(self, x, enc, recon, sparsity_scale, dead_mask) -> dict[str, Term]:
        terms = {
            "l1": Term(losses.l1_penalty(enc.codes), self.cfg.l1_coefficient * sparsity_scale),
            "sep": Term(losses.adjacent_cosine(enc.codes), self.cfg.cos_coefficient),
        }
        if self.cfg.activation == "topk":
            k_aux = losses.resolve_k_aux(self.cfg.k_aux, self.cfg.d_in)
            aux = losses.auxk_loss(x, recon, enc.pre, dead_mask, self.W_dec, k_aux)
            terms["auxk"] = Term(aux, self.cfg.auxk_coefficient)
        return terms


def mix_over_time(temporal: TemporalMixer, pre: torch.Tensor) -> torch.Tensor:
    """``pre`` [B, T, d_sae] mixed over time; [N, d_sae] is N sequences of length 1.

    Shared with the SAELens class (mtsae.saelens), so both encode alike.
    """
    pre_BTF = pre if pre.dim() == 3 else pre.unsqueeze(1)
    if temporal.training and pre_BTF.shape[0] * pre_BTF.shape[1] < 2:
        raise MtsaeError(
            "a training-mode MTSAE needs at least 2 tokens per batch for its BatchNorm statistics; "
            "call sae.eval() to encode a single token"
        )
    mixed = temporal(pre_BTF)
    return mixed if pre.dim() == 3 else mixed.squeeze(1)


def sparsify(mixed: torch.Tensor, cfg: MTSAEConfig) -> torch.Tensor:
    """The codes: ReLU of the mixed pre-activations, or TopK then ReLU (``activation="topk"``)."""
    if cfg.activation == "topk":
        return topk_relu(mixed, cfg.k)
    return mixed.relu()
