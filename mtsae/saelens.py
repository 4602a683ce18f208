"""Open mtsae's MTSAE checkpoints in SAELens.

SAELens (≥ 6) opens our relu, topk, batchtopk and jumprelu checkpoints with its own
classes (their ``cfg.json`` names a SAELens architecture). MTSAE has no SAELens
counterpart, so this module registers one under the architecture name ``"mtsae"``::

    import mtsae.saelens                      # registers "mtsae" with SAELens
    from sae_lens import SAE
    sae = SAE.load_from_disk("runs/mtsae-1/final")
    codes = sae.encode(acts_BTD)              # [B, T, d_in] sequences, as mtsae encodes them

The class is inference only (SAELens's ``SAE``, not ``TrainingSAE``): its BatchNorm
always uses the checkpoint's running statistics, whatever ``.train()`` says, so
``encode`` equals mtsae's eval-mode ``MTSAE.encode`` on ``[B, T, d]`` (T consecutive
tokens per row) and on ``[N, d]`` (N independent tokens). The temporal mixing itself
is mtsae's code (:func:`mtsae.train.archs.mtsae.mix_over_time`), not a copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from sae_lens import register_sae_class
from sae_lens.registry import get_sae_class
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

from mtsae.errors import MtsaeError
from mtsae.train.archs.mtsae import MTSAEConfig, mix_over_time, sparsify
from mtsae.train.temporal import TemporalMixer

ARCHITECTURE = "mtsae"


@dataclass
class MTSAESAELensConfig(StandardSAEConfig):
    """SAELens config of an MTSAE: the standard keys plus our ``cfg.json["mtsae"]`` block."""

    mtsae: dict[str, Any] = field(default_factory=dict)
    """``cfg.json["mtsae"]`` as mtsae wrote it; ``mtsae["config"]`` is the :class:`MTSAEConfig`."""

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def mtsae_config(self) -> MTSAEConfig:
        """The MTSAE hyper-parameters, validated like mtsae's own loader does."""
        block = self.mtsae if isinstance(self.mtsae, dict) else {}
        if block.get("architecture") != ARCHITECTURE or not isinstance(block.get("config"), dict):
            raise MtsaeError("cfg.json says architecture 'mtsae' but has no mtsae section with an MTSAE config; "
                             "re-save the checkpoint with mtsae")
        config = MTSAEConfig.from_dict(block["config"])
        if (config.d_in, config.d_sae) != (self.d_in, self.d_sae):
            raise MtsaeError("cfg.json is inconsistent: top-level d_in/d_sae differ from the mtsae config; re-save it")
        return config


class MTSAESAELens(StandardSAE):
    """SAELens view of an MTSAE checkpoint (parameter names as in ``sae_weights.safetensors``)."""

    cfg: MTSAESAELensConfig  # type: ignore[assignment]
    temporal: TemporalMixer

    def initialize_weights(self) -> None:
        super().initialize_weights()  # W_enc, W_dec, b_enc, b_dec
        self.mtsae_cfg = self.cfg.mtsae_config()
        mixer = TemporalMixer(self.cfg.d_sae, self.mtsae_cfg.dilations, self.mtsae_cfg.kernel_size,
                              self.mtsae_cfg.padding, self.mtsae_cfg.bn_momentum, self.mtsae_cfg.bn_eps)
        self.temporal = mixer.to(device=self.device, dtype=self.dtype).eval()

    def train(self, mode: bool = True) -> MTSAESAELens:
        # Inference class: BatchNorm keeps its running statistics (and never updates them).
        super().train(mode)
        self.temporal.eval()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes for ``[B, T, d_in]`` (sequences) or ``[N, d_in]`` (independent tokens)."""
        if x.dim() not in (2, 3) or x.shape[-1] != self.cfg.d_in:
            raise MtsaeError(f"mtsae SAE expects [N, {self.cfg.d_in}] or [B, T, {self.cfg.d_in}] activations, "
                             f"got {list(x.shape)}")
        sae_in = self.process_sae_in(x)
        mixed = self.hook_sae_acts_pre(mix_over_time(self.temporal, sae_in @ self.W_enc + self.b_enc))
        return self.hook_sae_acts_post(sparsify(mixed, self.mtsae_cfg))

    def fold_W_dec_norm(self) -> None:
        # Scaling a feature's pre-activation does not commute with its BatchNorm; mtsae keeps rows unit-norm.
        norms = self.get_W_dec_norm()
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
            raise MtsaeError("cannot fold decoder norms into an MTSAE (its BatchNorm does not commute with scaling)")


def register() -> None:
    """Register the ``"mtsae"`` architecture with SAELens (importing this module does it; idempotent)."""
    try:
        get_sae_class(ARCHITECTURE)
    except KeyError:
        register_sae_class(ARCHITECTURE, MTSAESAELens, MTSAESAELensConfig)


register()

__all__ = ["ARCHITECTURE", "MTSAESAELens", "MTSAESAELensConfig", "register"]
