"""Adding an architecture is one class and its registration (docs/architecture.md, "Adding an architecture").

A throwaway architecture, registered only inside the test, goes through training (with the activation
scale folded into its checkpoint), the checkpoint, SAE-Bench's adapter and the report, with no other
change to the package: every place that needs to know about it reads what the class declares.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from conftest import tiny_arch_config
from mtsae.cache import open_cache
from mtsae.evaluate.adapter import load_adapter
from mtsae.evaluate.report import write_report
from mtsae.train import losses, registry
from mtsae.train.base import Encoded, SAEConfig, SparseAutoencoder, Term
from mtsae.train.config import Windowing
from mtsae.train.checkpoint import load_checkpoint
from mtsae.train.loader import WindowDataset
from mtsae.train.parallel import buffer_reductions
from mtsae.train.trainer import train
from test_trainer import QUIET, tiny_config

NAME = "abs-relu"


@dataclasses.dataclass(frozen=True)
class AbsReluConfig(SAEConfig):
    abs_coefficient: float = 0.04
    """Weight of the L1 penalty on the codes."""
    shift_init: float = 0.5
    """Initial dead zone around 0 (input units)."""


class AbsReluSAE(SparseAutoencoder):
    """codes = ReLU(|pre| - shift): a latent fires on strong evidence of either sign. ``shift`` is in input
    units (it folds like a bias); ``l0_ema`` is training state that data-parallel ranks average."""

    config_class = AbsReluConfig
    sparsity_coefficient = "abs_coefficient"
    sparsity_symbol = "|L1| λ"
    scale_powers = {**SparseAutoencoder.scale_powers, "shift": 1}
    training_state_buffers = SparseAutoencoder.training_state_buffers + ("l0_ema",)
    buffer_reductions = {"l0_ema": "mean"}
    tiny_config = {"abs_coefficient": 0.01}

    def __init__(self, cfg: AbsReluConfig) -> None:
        super().__init__(cfg)
        self.shift = nn.Parameter(torch.full((cfg.d_sae,), cfg.shift_init))
        self.register_buffer("l0_ema", torch.zeros(()))

    def encode_full(self, x: torch.Tensor) -> Encoded:
        self.check_input(x)
        pre = self.pre_activations(x)
        return Encoded((pre.abs() - self.shift).relu(), pre)

    def penalties(self, x, enc, recon, sparsity_scale, dead_mask) -> dict[str, Term]:
        return {"abs_l1": Term(losses.l1_penalty(enc.codes), self.cfg.abs_coefficient * sparsity_scale)}

    @torch.no_grad()
    def update_training_state_(self, enc: Encoded) -> None:
        super().update_training_state_(enc)
        self.l0_ema.mul_(0.9).add_(0.1 * losses.l0(enc.codes))


def test_a_new_architecture_needs_only_its_class_and_registration(tiny_cache_path, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone when the block ends
        registry.register(NAME)(AbsReluSAE)
        run = tmp_path / "run"
        result = train(tiny_config(tiny_cache_path, run, NAME, steps=20, checkpoint_every=10), **QUIET)
        sae, meta = load_checkpoint(result.checkpoint)
        assert type(sae) is AbsReluSAE and buffer_reductions(sae) == {"l0_ema": "mean"}
        assert meta["activation_scale"] != 1.0 and float(sae.l0_ema) > 0
        assert_acts_on_raw_activations(sae, meta, tiny_cache_path)

        adapter = load_adapter(result.checkpoint)
        x = torch.randn(2, 8, sae.cfg.d_in)
        assert adapter.cfg.architecture == NAME and not adapter.is_temporal
        torch.testing.assert_close(adapter.encode(x), sae.encode(x))

        data = write_report([run], tmp_path / "report")
        label = f"run ({NAME}, seed 0)"
        assert data["figures"]["sparsity_comparison.png"][label]["sparsity"] == "|L1| λ=0.01"
        assert f"| run | {NAME} | 0 | 20 |" in (tmp_path / "report" / "report.md").read_text()
    assert NAME not in registry.architecture_names()


def assert_acts_on_raw_activations(sae: SparseAutoencoder, meta: dict, cache_path) -> None:
    """The folded checkpoint (``shift`` divided by the scale as declared) reproduces the held-out FVE on raw inputs."""
    held = WindowDataset(open_cache(cache_path), meta["layer"], Windowing(window=16, holdout_fraction=0.1), split="heldout")
    x, special = held.assemble(torch.arange(len(held)).numpy())
    with torch.no_grad():
        recon = sae(x)
    xs = x[~special].double()
    fve = 1 - (recon[~special].double() - xs).pow(2).sum() / (xs - xs.mean(0)).pow(2).sum()
    assert float(fve) == pytest.approx(meta["final_metrics"]["fve"], abs=1e-4)


def test_the_shared_tiny_configs_are_what_each_architecture_declares():
    for name in registry.architecture_names():
        config = tiny_arch_config(name)
        assert config == registry.get_architecture(name).tiny_config and config is not registry.get_architecture(name).tiny_config
        registry.create_sae(name, d_in=16, d_sae=32, **config)  # fits the tests' smallest size
