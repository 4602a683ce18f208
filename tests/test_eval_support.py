"""Helpers shared by the test_eval_* modules (no tests here): checkpoints of the embedded model's width."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import tiny_arch_config, train_a_few_steps

from mtsae.train.checkpoint import save_checkpoint
from mtsae.train.registry import architecture_names, create_sae

D_MODEL = 64  # the embedded tiny Gemma-2's residual width
EMBEDDED_ID = "embedded:tiny-gemma2-v1"  # what a cache of the embedded model records as its model id
ARCH_VARIANTS = [(name, tiny_arch_config(name)) for name in architecture_names()] + [
    ("mtsae", {"activation": "topk", "k": 8, "padding": "causal", "dilations": (1, 4)}),
    ("mtsae", {"padding": "zeros", "dilations": (1, 3, 9), "kernel_size": 5}),
]
ARCH_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(ARCH_VARIANTS)]


def metadata(layer: int = 5, model: str = EMBEDDED_ID, **extra) -> dict:
    return {"model_name": model, "layer": layer, "hook_name": f"blocks.{layer}.hook_resid_post",
            "cache_fingerprint": "f" * 64, "tokens_seen": 1000, **extra}


def trained_sae(name: str, overrides: dict, d_in: int = D_MODEL, d_sae: int = 96, steps: int = 3, seed: int = 0):
    """A few real training steps, so thresholds and BatchNorm statistics are not at their init."""
    torch.manual_seed(seed)
    sae = create_sae(name, d_in=d_in, d_sae=d_sae, **overrides).train()
    return train_a_few_steps(sae, (4, 16, d_in), steps).eval()


def save(tmp: Path, name: str, overrides: dict | None = None, layer: int = 5, **kw) -> Path:
    model = kw.pop("model", EMBEDDED_ID)
    sae = trained_sae(name, overrides or tiny_arch_config(name), **kw)
    return save_checkpoint(sae, tmp / f"{name}-L{layer}", metadata(layer, model))
