"""The MTSAE starts as its per-token twin, and its temporal losses sit on a scale where the coefficient means something."""

from __future__ import annotations

import pytest
import torch

from mtsae.train import losses
from mtsae.train.registry import create_sae

D_IN, D_SAE, B, T = 16, 32, 3, 12
TWINS = [("relu", {}, {}), ("topk", {"k": 4}, {"activation": "topk", "k": 4})]


def _x(seed: int = 1, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(B, T, D_IN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("twin,twin_options,mtsae_options", TWINS, ids=[t[0] for t in TWINS])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fresh_mtsae_equals_its_per_token_twin(twin, twin_options, mtsae_options, mode):
    torch.manual_seed(0)
    per_token = getattr(create_sae(twin, d_in=D_IN, d_sae=D_SAE, **twin_options), mode)()
    torch.manual_seed(0)
    temporal = getattr(create_sae("mtsae", d_in=D_IN, d_sae=D_SAE, cos_coefficient=0.0, **mtsae_options), mode)()
    x = _x()
    torch.testing.assert_close(temporal(x), per_token(x), rtol=0, atol=0)
    torch.testing.assert_close(temporal.encode(x), per_token.encode(x), rtol=0, atol=0)
    out_t, out_p = temporal.loss(x), per_token.loss(x)
    assert out_t.components["mse"] == out_p.components["mse"]


def test_the_seed_gate_starts_open_and_differs_from_the_twin():
    torch.manual_seed(0)
    relu = create_sae("relu", d_in=D_IN, d_sae=D_SAE).eval()
    torch.manual_seed(0)
    seed_mixer = create_sae("mtsae", d_in=D_IN, d_sae=D_SAE, gate_init=1.0).eval()
    assert torch.equal(seed_mixer.temporal.bn_weight, torch.ones_like(seed_mixer.temporal.bn_weight))
    assert not torch.allclose(seed_mixer(_x()), relu(_x()))


def test_closed_gate_gets_gradient_so_training_can_open_it():
    sae = create_sae("mtsae", d_in=D_IN, d_sae=D_SAE).train()
    sae.loss(_x()).loss.backward()
    assert sae.temporal.bn_weight.grad.abs().sum() > 0
    # The kernels behind a closed gate get none yet (they start learning once the gate moves).
    assert sae.temporal.conv_weight.grad.abs().sum() == 0


@pytest.mark.parametrize("temporal_loss", ["separation", "persistence"])
def test_variance_scaled_temporal_loss_tracks_the_mse_scale(temporal_loss):
    """Scaling the input by s scales the MSE by s²; the variance-scaled term follows, the raw one does not."""
    torch.manual_seed(0)
    options = {"cos_coefficient": 0.1, "temporal_loss": temporal_loss, "gate_init": 1.0}
    sae = create_sae("mtsae", d_in=D_IN, d_sae=D_SAE, **options).train()
    raw = create_sae("mtsae", d_in=D_IN, d_sae=D_SAE, **options, temporal_loss_scale="raw").train()
    raw.load_state_dict(sae.state_dict())
    x = _x()
    for scale in (1.0, 10.0):
        xs = x * scale
        value = sae.loss(xs).components["sep"]
        unscaled = raw.loss(xs).components["sep"]
        variance = losses.input_variance(xs).item()
        assert 0.0 < unscaled <= 1.0
        assert value == pytest.approx(unscaled * variance, rel=1e-4)
    # At 10x the input, the scaled term grew ~100x (like the MSE), the raw one stayed in [0, 1].
    assert sae.loss(10 * x).components["sep"] > 50 * sae.loss(x).components["sep"]


def test_persistence_loss_by_hand():
    codes = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]], requires_grad=True)
    # changes: 0, then |(-1, 2)|² = 5; sizes: (1 + 1) + (1 + 4) = 7
    value = losses.adjacent_change(codes)
    torch.testing.assert_close(value, torch.tensor(5.0 / 7))
    value.backward()
    assert torch.isfinite(codes.grad).all()
    steady = torch.ones(2, 5, 3)
    assert losses.adjacent_change(steady) == 0
    disjoint = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]]])
    assert losses.adjacent_change(disjoint) == pytest.approx(1.0)
    assert losses.adjacent_change(codes.detach()[0]) == 0  # [N, d]: no time axis


def test_persistence_and_separation_pull_opposite_ways():
    """On codes that switch features every step, persistence is high and separation low; steady codes the reverse."""
    switching = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    steady = torch.tensor([[[1.0, 0.5], [1.0, 0.5], [1.0, 0.5], [1.0, 0.5]]])
    assert losses.adjacent_change(switching) > losses.adjacent_change(steady)
    assert losses.adjacent_cosine(switching) < losses.adjacent_cosine(steady)
