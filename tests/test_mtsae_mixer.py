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


# ------------------------------------------------------------ BatchTopK twin, multi-timescale bank
def test_fresh_batchtopk_mtsae_equals_batchtopk_and_learns_its_threshold():
    torch.manual_seed(0)
    per_token = create_sae("batchtopk", d_in=D_IN, d_sae=D_SAE, k=4)
    torch.manual_seed(0)
    temporal = create_sae("mtsae", d_in=D_IN, d_sae=D_SAE, activation="batchtopk", k=4, cos_coefficient=0.0)
    x = _x()
    for mode in ("train", "eval"):
        getattr(per_token, mode)(), getattr(temporal, mode)()
        torch.testing.assert_close(temporal.encode(x), per_token.encode(x), rtol=0, atol=0)
    per_token.train(), temporal.train()
    per_token.loss(x), temporal.loss(x)
    assert temporal.threshold.item() == per_token.threshold.item() > 0
    weights, state = temporal.tensors_for_saving()
    assert "threshold" in weights and "threshold_updates" in state


def _naive_average(pre, width, padding):
    T = pre.shape[1]
    out = torch.empty_like(pre)
    for t in range(T):
        lo, hi = (t - width + 1, t) if padding == "causal" else (t - width // 2, t + width // 2)
        lo, hi = max(lo, 0), min(hi, T - 1)
        out[:, t] = pre[:, lo:hi + 1].mean(1)
    return out


@pytest.mark.parametrize("padding", ["causal", "zeros"])
@pytest.mark.parametrize("width", [1, 3, 9, 33])
def test_moving_average_matches_the_naive_loop(padding, width):
    from mtsae.train.temporal import moving_average

    pre = torch.randn(2, 20, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(moving_average(pre, width, padding), _naive_average(pre, width, padding))


def _bank(**options):
    torch.manual_seed(0)
    base = {"mixer": "bank", "activation": "topk", "k": 5, "widths": (1, 3, 9), "padding": "causal"}
    return create_sae("mtsae", d_in=D_IN, d_sae=30, **{**base, **options})


def test_bank_gives_each_group_its_own_topk_budget():
    sae = _bank().train()
    assert sae.cfg.group_budgets() == (3, 1, 1)
    codes = sae.encode(_x())
    per_group = [(g != 0).sum(-1) for g in codes.split(10, dim=-1)]
    assert all((n <= b).all() for n, b in zip(per_group, (3, 1, 1)))
    assert (per_group[0] == 3).float().mean() > 0.9  # random pre-activations: a positive top-3 nearly always
    assert _bank(k=16).cfg.group_budgets() == (10, 3, 3)
    assert _bank(group_k=(2, 2, 1)).cfg.group_budgets() == (2, 2, 1)


def test_causal_bank_ignores_the_future_and_centred_bank_does_not():
    x = _x()
    later = x.clone()
    later[:, 8:] += 5.0
    causal, centred = _bank().eval(), _bank(padding="zeros").eval()
    torch.testing.assert_close(causal.encode(later)[:, :8], causal.encode(x)[:, :8], rtol=0, atol=0)
    assert not torch.equal(centred.encode(later)[:, :8], centred.encode(x)[:, :8])


def test_bank_on_flat_input_is_per_token_and_pools_on_sequences():
    sae = _bank().eval()
    x = _x()
    flat = sae.encode(x.reshape(-1, D_IN))
    pre = sae.pre_activations(x.reshape(-1, D_IN))
    from mtsae.train.activations import grouped_topk_relu

    torch.testing.assert_close(flat, grouped_topk_relu(pre, (10, 10, 10), (3, 1, 1)))
    assert not torch.allclose(flat.reshape(B, T, -1), sae.encode(x))
    assert not list(sae.parameters())[4:]  # W_enc, W_dec, b_enc, b_dec: the bank has no temporal parameters


@pytest.mark.parametrize("bad", [
    {"padding": "circular"}, {"padding": "zeros", "widths": (1, 4)}, {"widths": (1, 0)},
    {"group_k": (1, 1)}, {"group_k": (11, 1, 1)}, {"k": 2}, {"activation": "relu", "group_k": (1, 1, 1)},
    {"mixer": "lstm"},
])
def test_bad_bank_settings_are_refused(bad):
    from mtsae.errors import MtsaeError

    with pytest.raises(MtsaeError):
        _bank(**bad)


@pytest.mark.parametrize("options", [{"mixer": "bank", "activation": "topk", "k": 5, "widths": (1, 3, 9),
                                      "padding": "causal"}, {"activation": "batchtopk", "k": 4}], ids=["bank", "batchtopk"])
def test_new_variants_round_trip_through_a_checkpoint(tmp_path, options):
    from mtsae.train.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    sae = create_sae("mtsae", d_in=D_IN, d_sae=30, **options).train()
    sae.loss(_x())  # moves the batchtopk threshold off its initial value
    sae.eval()
    loaded, _ = load_checkpoint(save_checkpoint(sae, tmp_path / "ckpt", {}))
    assert loaded.cfg == sae.cfg
    torch.testing.assert_close(loaded.encode(_x()), sae.encode(_x()), rtol=0, atol=0)


# ------------------------------------------------------------ the recommended MTSAE is the default
def test_arch_mtsae_without_a_preset_is_the_recommended_bank_and_presets_stay_the_seed():
    from mtsae.train.config import TrainConfig
    from mtsae.train.presets import RECOMMENDED_MTSAE

    cfg = TrainConfig(arch="mtsae", target_l0=5)
    assert cfg.arch_config == {**RECOMMENDED_MTSAE, "k": 5} and cfg.target_l0 is None  # L0 set by k, as TopK
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig(arch_config={"k": 16}).arch_config["mixer"] == "bank"  # mtsae is the default arch
    assert TrainConfig().arch_config["k"] == 32 and TrainConfig(d_sae=48).arch_config["k"] == 12  # groups fit
    conv = TrainConfig(arch="mtsae", arch_config={"dilations": [1, 3, 9]})
    assert conv.arch_config == {"dilations": [1, 3, 9]}  # asking for the conv mixer skips the recommendation
    seed = TrainConfig(preset="run2", target_l0=5)
    assert seed.target_l0 == 5 and seed.arch_config["gate_init"] == 1.0 and "mixer" not in seed.arch_config


def test_target_l0_and_k_must_agree_for_a_topk_mtsae():
    from mtsae.errors import MtsaeError
    from mtsae.train.config import TrainConfig

    assert TrainConfig(arch="mtsae", target_l0=5, arch_config={"k": 5}).arch_config["k"] == 5
    with pytest.raises(MtsaeError, match="disagree"):
        TrainConfig(arch="mtsae", target_l0=5, arch_config={"k": 7})


def test_mtsae_train_with_target_l0_trains_the_bank_at_that_l0(tiny_cache_path, tmp_path):
    from typer.testing import CliRunner

    from mtsae.cli import app
    from mtsae.train.checkpoint import load_checkpoint

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--cache", str(tiny_cache_path), "--arch", "mtsae", "--target-l0", "5",
                                      "--d-sae", "48", "--steps", "4", "--window", "16", "--batch-windows", "4",
                                      "--eval-every", "0", "--checkpoint-every", "0", "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    sae, _ = load_checkpoint(out / "final")
    assert (sae.cfg.mixer, sae.cfg.widths, sae.cfg.padding, sae.cfg.k) == ("bank", (1, 9, 33), "causal", 5)
    assert sae.cfg.group_budgets() == (3, 1, 1)
    codes = sae.encode(torch.randn(2, 16, sae.cfg.d_in))
    assert ((codes > 0).sum(-1) <= 5).all()
