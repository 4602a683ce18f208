"""TopK SAE with the AuxK dead-latent loss (Gao et al. 2024).

::

    pre   = (x - b_dec) @ W_enc + b_enc
    codes = TopK_k(pre), then ReLU on the kept values (per token)
    loss  = mean_tokens ‖recon - x‖² + auxk_coefficient · L_aux

``L_aux`` (see :func:`mtsae.train.losses.auxk_loss`) reconstructs the detached
residual ``x - recon`` from the ``k_aux`` largest pre-activations among *dead*
latents. Dead latents come from the base class's tracker: a buffer
``tokens_since_fired [d_sae]`` that ``loss()`` advances in training mode; a
latent is dead once it reaches ``dead_tokens_threshold``. A trainer may instead
pass ``loss(x, dead_mask=...)`` to override it for a step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mtsae.train import losses
from mtsae.train.activations import topk_relu
from mtsae.train.base import Encoded, SAEConfig, SparseAutoencoder, Term, require
from mtsae.train.registry import register


@dataclasses.dataclass(frozen=True)
class TopKSAEConfig(SAEConfig):
    k: int = 64
    """Active latents per token."""
    k_aux: int | None = None
    """Dead latents used by the AuxK loss per token; ``None`` means ``d_in // 2``."""
    auxk_coefficient: float = 1 / 32
    """Weight of the (variance-normalised) AuxK loss; 0 disables it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.k <= self.d_sae, f"k must be in 1..d_sae={self.d_sae}, got {self.k}")
        require(self.k_aux is None or self.k_aux > 0, f"k_aux must be positive or None, got {self.k_aux}")
        require(self.auxk_coefficient >= 0, f"auxk_coefficient must be >= 0, got {self.auxk_coefficient}")


@register("topk")
class TopKSAE(SparseAutoencoder):
    """TopK SAE; loads in SAELens as ``architecture="topk"``."""

    config_class = TopKSAEConfig
    saelens_architecture = "topk"
    tiny_config = {"k": 8}
    cfg: TopKSAEConfig

    def encode_full(self, x: torch.Tensor) -> Encoded:
        self.check_input(x)
        pre = self.pre_activations(x)
        return Encoded(topk_relu(pre, self.cfg.k), pre)

    def penalties(self, x, enc, recon, sparsity_scale, dead_mask) -> dict[str, Term]:
        k_aux = losses.resolve_k_aux(self.cfg.k_aux, self.cfg.d_in)
        aux = losses.auxk_loss(x, recon, enc.pre, dead_mask, self.W_dec, k_aux)
        return {"auxk": Term(aux, self.cfg.auxk_coefficient)}

    def saelens_config(self) -> dict[str, Any]:
        # Our decoder rows are unit norm, so SAELens must not rescale by them.
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}
