"""BatchTopK SAE (Bussmann et al. 2024) with a global inference threshold.

Training mode::

    pre   = (x - b_dec) @ W_enc + b_enc
    codes = BatchTopK_k(ReLU(pre))     # the k·n_tokens largest values of the whole batch
    loss  = mean_tokens ‖recon - x‖² + auxk_coefficient · L_aux     (AuxK as in ``topk``)

Eval mode (per token, independent of the batch)::

    codes = ReLU(pre) · 1[pre > θ]

θ is one scalar buffer estimated during training, as in dictionary_learning:
after each training ``loss()`` call, ``m`` = the smallest positive code in the
batch, and ``θ ← β_n·θ + (1-β_n)·m`` with ``β_n = min(β, n/(n+1))`` after ``n``
updates: the plain mean of the first updates, then the EMA. (A plain EMA from
the first batch's ``m`` keeps ~60 % of that early, unrepresentative value
after 500 steps at β = 0.999: short runs then infer at L0 far below k.)
Before any training θ = -1, i.e. eval mode is a plain ReLU SAE. Because eval mode is a
JumpReLU with a constant threshold, checkpoints store ``threshold`` as a
``[d_sae]`` vector and open in SAELens as ``architecture="jumprelu"`` (which is
also how SAELens itself exports its BatchTopK SAEs).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mtsae.train.activations import batch_topk_relu, update_batchtopk_threshold_
from mtsae.train.archs.topk import TopKSAE, TopKSAEConfig
from mtsae.train.base import Encoded, require
from mtsae.train.registry import register


@dataclasses.dataclass(frozen=True)
class BatchTopKSAEConfig(TopKSAEConfig):
    threshold_beta: float = 0.999
    """EMA decay of the inference threshold θ (per training step)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.threshold_beta < 1, f"threshold_beta must be in [0, 1), got {self.threshold_beta}")


@register("batchtopk")
class BatchTopKSAE(TopKSAE):
    """BatchTopK in training, JumpReLU with the learned global threshold in eval."""

    config_class = BatchTopKSAEConfig
    saelens_architecture = "jumprelu"
    cfg: BatchTopKSAEConfig
    threshold: torch.Tensor
    training_state_buffers = TopKSAE.training_state_buffers + ("threshold_updates",)
    scale_powers = {**TopKSAE.scale_powers, "threshold": 1}
    # θ is an EMA increasing in the batch minimum: the minimum over ranks is the one-process update.
    # The update count is the same on every rank, so its mean is itself.
    buffer_reductions = {"threshold": "min", "threshold_updates": "mean"}

    def __init__(self, cfg: BatchTopKSAEConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(-1.0))
        self.register_buffer("threshold_updates", torch.tensor(0.0))

    def encode_full(self, x: torch.Tensor) -> Encoded:
        self.check_input(x)
        pre = self.pre_activations(x)
        if self.training:
            return Encoded(batch_topk_relu(pre, self.cfg.k), pre)
        return Encoded(pre.relu() * (pre > self.threshold).to(pre.dtype), pre)

    @torch.no_grad()
    def update_training_state_(self, enc: Encoded) -> None:
        super().update_training_state_(enc)
        update_batchtopk_threshold_(self.threshold, self.threshold_updates, enc.codes, self.cfg.threshold_beta)

    def saelens_config(self) -> dict[str, Any]:
        return {}  # SAELens's JumpReLUSAEConfig has no extra fields

    def tensors_for_saving(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        weights, state = super().tensors_for_saving()
        weights["threshold"] = weights["threshold"].expand(self.cfg.d_sae).clone()
        return weights, state

    def load_saved_tensors_(self, weights: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
        vector = weights.get("threshold")
        if vector is not None and vector.dim() == 1:
            require(
                bool((vector == vector[0]).all()),
                "batchtopk checkpoint has a per-feature threshold; it was not saved by mtsae's batchtopk "
                "(load it with SAELens as a JumpReLU SAE instead)",
            )
            weights = {**weights, "threshold": vector[0].clone()}
        if "threshold_updates" not in state:  # saved before the count existed: treat θ as settled
            state = {**state, "threshold_updates": torch.tensor(float(2**24))}
        super().load_saved_tensors_(weights, state)
