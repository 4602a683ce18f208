"""Vanilla ReLU SAE with an L1 penalty (Bricken et al. 2023; Conerly et al. 2024).

::

    codes = ReLU((x - b_dec) @ W_enc + b_enc)
    loss  = mean_tokens ‖recon - x‖² + l1_coefficient · s · mean_tokens Σ_f |codes_f|

with ``s`` the trainer's ``sparsity_scale`` (warm-up). Decoder rows are kept at
unit norm, so the L1 term needs no decoder-norm weighting.
"""

from __future__ import annotations

import dataclasses

import torch

from mtsae.train import losses
from mtsae.train.base import Encoded, SAEConfig, SparseAutoencoder, Term, require
from mtsae.train.registry import register


@dataclasses.dataclass(frozen=True)
class ReluSAEConfig(SAEConfig):
    l1_coefficient: float = 0.04
    """Weight of the L1 penalty ``mean_tokens Σ_f |codes_f|`` (relative to the summed-over-d_in MSE)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.l1_coefficient >= 0, f"l1_coefficient must be >= 0, got {self.l1_coefficient}")


@register("relu")
class ReluSAE(SparseAutoencoder):
    """ReLU SAE; loads in SAELens as ``architecture="standard"``."""

    config_class = ReluSAEConfig
    saelens_architecture = "standard"
    sparsity_coefficient = "l1_coefficient"
    sparsity_symbol = "L1 λ"
    tiny_config = {"l1_coefficient": 0.01}
    cfg: ReluSAEConfig

    def encode_full(self, x: torch.Tensor) -> Encoded:
        self.check_input(x)
        pre = self.pre_activations(x)
        return Encoded(pre.relu(), pre)

    def penalties(self, x, enc, recon, sparsity_scale, dead_mask) -> dict[str, Term]:
        return {"l1": Term(losses.l1_penalty(enc.codes), self.cfg.l1_coefficient * sparsity_scale)}
