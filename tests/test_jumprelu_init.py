"""JumpReLU's start on LM-like inputs: the first reconstruction fits the input, so L0 does not collapse.

The failure this guards (issue 16 point 4, world and embedded caches): with a tied unit-gain encoder and
θ₀ = 1.5, ~7 % of latents fire with codes ≥ 1.5 along unit decoder rows, so the first reconstruction is several
times the input (FVE −3.4 on the embedded model's layer 19). Reconstruction then shrinks the active latents'
pre-activations below θ within ~10 Adam steps, a latent below θ gets no encoder gradient, and L0 fell from 36
to ~5 with no L0 penalty at all, so ``--target-l0 16`` could not be reached (an L0 penalty can only sparsify).
"""

from __future__ import annotations

import pytest
import torch

from mtsae.train.archs.jumprelu import initial_encoder_gain
from mtsae.train.registry import create_sae

D_IN, D_SAE = 32, 256


def lm_like_inputs(n: int, seed: int = 0) -> torch.Tensor:
    """Normalised as the trainer does (E‖x‖ = √d), with what residual streams have: a large mean direction
    (half the norm, as on the world LM's layer 19) and an anisotropic spread."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(D_IN, generator=g)
    spread = torch.randn(D_IN, D_IN, generator=g) * torch.linspace(1.5, 0.2, D_IN)
    x = mean / mean.norm() * 4.0 + torch.randn(n, D_IN, generator=g) @ spread
    return x * D_IN**0.5 / x.norm(dim=-1).mean()


def fit_scale(sae, x: torch.Tensor) -> float:
    """Least-squares scale of the first reconstruction: ⟨x, x̂⟩ / ‖x̂‖² (1 when it has the input's size)."""
    with torch.no_grad():
        recon = sae(x)
    return float((x * recon).sum() / (recon * recon).sum())


@pytest.mark.parametrize("d_sae, threshold", [(D_SAE, 1.5), (512, 1.5), (D_SAE, 0.5)])
def test_default_start_reconstructs_at_the_inputs_scale(d_sae, threshold):
    x = lm_like_inputs(2048)
    torch.manual_seed(0)
    sae = create_sae("jumprelu", d_in=D_IN, d_sae=d_sae, threshold_init=threshold)
    assert 0.6 < fit_scale(sae, x) < 1.6
    assert sae.threshold[0].item() == pytest.approx(threshold * initial_encoder_gain(D_IN, d_sae, threshold))
    torch.manual_seed(0)
    tied = create_sae("jumprelu", d_in=D_IN, d_sae=d_sae, threshold_init=threshold, encoder_gain=1.0)
    assert fit_scale(tied, x) < 0.5  # the seed's start: the reconstruction overshoots the input


def train_without_penalty(encoder_gain: float | None, steps: int = 20) -> list[float]:
    x = lm_like_inputs(2048)
    torch.manual_seed(0)
    options = {} if encoder_gain is None else {"encoder_gain": encoder_gain}
    sae = create_sae("jumprelu", d_in=D_IN, d_sae=D_SAE, l0_coefficient=0.0, **options)
    optimizer = torch.optim.Adam(sae.parameters(), lr=3e-3)  # the experiments' learning rate
    g = torch.Generator().manual_seed(1)
    l0 = []
    for _ in range(steps):
        out = sae.loss(x[torch.randint(0, len(x), (256,), generator=g)])
        l0.append(out.components["l0"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        sae.constrain_parameters_()
    return l0


def test_l0_does_not_collapse_from_reconstruction_alone():
    """No L0 penalty: the default start keeps its L0; the unit-gain start loses most of it in 20 steps."""
    default = train_without_penalty(None)
    assert min(default) > 0.7 * default[0]
    tied = train_without_penalty(1.0)
    assert tied[-1] < 0.5 * tied[0]


def test_threshold_keeps_its_size_relative_to_the_encoder():
    """θ_f follows ‖W_enc[:, f]‖ between steps (the encoder grows ~2× on synthetic codes; θ must not lag)."""
    for follows in (True, False):
        torch.manual_seed(0)
        sae = create_sae("jumprelu", d_in=D_IN, d_sae=D_SAE, threshold_follows_encoder=follows)
        before = sae.threshold.detach().clone()
        with torch.no_grad():
            sae.W_enc[:, :10].mul_(3.0)
        sae.constrain_parameters_()
        expected = before.clone()
        if follows:
            expected[:10] *= 3.0
        torch.testing.assert_close(sae.threshold.detach(), expected)


@pytest.mark.parametrize("rate", [1.0, 3.0])
def test_log_threshold_moves_rate_times_an_adam_step(rate):
    """Adam's first step moves each parameter by lr: log θ moves by rate·lr, i.e. θ changes by a factor."""
    x = lm_like_inputs(512)
    torch.manual_seed(0)
    sae = create_sae("jumprelu", d_in=D_IN, d_sae=D_SAE, threshold_rate=rate, threshold_follows_encoder=False)
    before = sae.threshold.detach().log()
    optimizer = torch.optim.Adam([sae.threshold_exponent], lr=1e-2)
    sae.loss(x).loss.backward()
    moved = sae.threshold_exponent.grad != 0
    optimizer.step()
    step = sae.threshold.detach().log() - before
    assert moved.sum() > D_SAE // 2
    torch.testing.assert_close(step[moved].abs(), torch.full_like(step[moved], rate * 1e-2), rtol=1e-3, atol=1e-6)


def test_threshold_round_trips_through_checkpoint_tensors_and_saelens_names():
    torch.manual_seed(0)
    sae = create_sae("jumprelu", d_in=D_IN, d_sae=D_SAE)
    sae.set_threshold_(torch.rand(D_SAE) + 0.1)
    weights, state = sae.tensors_for_saving()
    assert "threshold" in weights and "threshold_exponent" not in weights  # SAELens loads weights strictly
    torch.testing.assert_close(weights["threshold"], sae.threshold.detach())
    other = create_sae("jumprelu", d_in=D_IN, d_sae=D_SAE)
    other.load_saved_tensors_(weights, state)
    assert torch.equal(other.threshold_exponent, sae.threshold_exponent)  # exact: a resumed run is bit-identical
    del state["threshold_exponent"], state["encoder_norms"]  # a checkpoint from before, or SAELens's file
    older = create_sae("jumprelu", d_in=D_IN, d_sae=D_SAE)
    older.load_saved_tensors_(weights, state)
    torch.testing.assert_close(older.threshold, sae.threshold.detach())
