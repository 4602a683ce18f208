"""Contract suite over every registered architecture, plus small hand-computed checks.

A new architecture registered in ``mtsae.train.archs`` is covered by the
contract tests automatically, with the ``tiny_config`` its class declares.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import tiny_arch_config
from mtsae.errors import MtsaeError
from mtsae.train import losses
from mtsae.train.activations import batch_topk_relu, heaviside_ste, jumprelu, topk_relu
from mtsae.train.base import SparseAutoencoder, linear_warmup
from mtsae.train.parallel import buffer_reductions
from mtsae.train.presets import PRESETS, build_sae, get_preset
from mtsae.train.registry import architecture_names, create_sae, get_architecture, register

D_IN, D_SAE, B, T = 16, 32, 3, 12

VARIANTS = [(name, tiny_arch_config(name)) for name in architecture_names()] + [
    ("mtsae", {"activation": "topk", "k": 4}),
    ("mtsae", {"padding": "causal", "kernel_size": 4, "dilations": (1, 4, 16)}),
    ("mtsae", {"padding": "zeros", "dilations": (1, 3, 9), "kernel_size": 5}),
    ("mtsae", {"gate_init": 1.0, "temporal_loss": "persistence", "temporal_loss_scale": "raw"}),
    ("mtsae", {"activation": "batchtopk", "k": 4}),
    ("mtsae", {"mixer": "bank", "activation": "topk", "k": 5, "widths": (1, 3, 9), "padding": "causal"}),
    ("mtsae", {"mixer": "bank", "activation": "relu", "widths": (1, 5), "padding": "zeros"}),
]
VARIANT_IDS = [name + "".join(f"-{k}={v}" for k, v in o.items() if k in ("activation", "padding", "mixer", "gate_init"))
               for name, o in VARIANTS]


def make(name: str, overrides: dict, seed: int = 0) -> SparseAutoencoder:
    torch.manual_seed(seed)
    return create_sae(name, d_in=D_IN, d_sae=D_SAE, **overrides)


def batch(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, D_IN, generator=g)


variants = pytest.mark.parametrize("name,overrides", VARIANTS, ids=VARIANT_IDS)



# --------------------------------------------------------------- contract
def test_registry_has_builtins():
    assert {"relu", "topk", "batchtopk", "jumprelu", "mtsae"} <= set(architecture_names())


def test_builtin_names_listed_without_importing_match_what_each_module_registers():
    from mtsae.train.registry import builtin_architecture_names

    names = builtin_architecture_names()  # the CLI's --arch help, read without importing torch
    assert names and set(names) <= set(architecture_names())
    assert all(get_architecture(name).__module__ == f"mtsae.train.archs.{name}" for name in names)


@variants
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_shapes(name, overrides, mode):
    sae = getattr(make(name, overrides), mode)()
    x = batch()
    for inp in (x, x.reshape(-1, D_IN)):
        lead = inp.shape[:-1]
        assert sae.encode(inp).shape == (*lead, D_SAE)
        assert sae(inp).shape == inp.shape
        out = sae.loss(inp)
        assert out.loss.shape == () and torch.isfinite(out.loss)
        assert out.recon.shape == inp.shape and out.codes.shape == (*lead, D_SAE)
        assert {"loss", "mse", "l0", "dead_fraction"} <= set(out.components)
        assert all(isinstance(v, float) for v in out.components.values())


@variants
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_decode_encode_is_forward(name, overrides, mode):
    sae = getattr(make(name, overrides), mode)()
    x = batch()
    torch.testing.assert_close(sae.decode(sae.encode(x)), sae(x))


@variants
def test_declares_how_each_weight_scales_with_the_input(name, overrides):
    """Checkpoints fold the normalisation scale by these declarations: an undeclared tensor would fail there."""
    sae = make(name, overrides)
    weights = set(sae.state_dict()) - set(sae.training_state_buffers)
    assert weights <= set(sae.scale_powers), f"{name}: no scale power for {sorted(weights - set(sae.scale_powers))}"
    assert set(sae.config_scale_powers) <= {f.name for f in dataclasses.fields(sae.cfg)}


@variants
def test_declares_how_each_buffer_reduces_across_ranks(name, overrides):
    sae = make(name, overrides)
    reductions = buffer_reductions(sae)  # raises for an undeclared buffer
    assert set(reductions) == {n for n, _ in sae.named_buffers()} - {"tokens_since_fired"}


def test_an_undeclared_buffer_is_refused_before_training():
    sae = make("relu", {})
    sae.register_buffer("running_norm", torch.ones(()))
    with pytest.raises(MtsaeError, match=r"buffer\(s\) \['running_norm'\].*buffer_reductions"):
        buffer_reductions(sae)


@variants
def test_codes_are_non_negative(name, overrides):
    sae = make(name, overrides)
    for mode in ("train", "eval"):
        getattr(sae, mode)()
        assert (sae.encode(batch()) >= 0).all()


def opened(sae: SparseAutoencoder) -> SparseAutoencoder:
    """A temporal SAE whose zero-initialised gates have opened, as after some training."""
    if hasattr(sae, "temporal"):
        with torch.no_grad():
            sae.temporal.bn_weight.fill_(0.5)
    return sae


@variants
def test_per_token_archs_ignore_layout(name, overrides):
    sae = opened(make(name, overrides)).eval()
    x = batch()
    flat = sae.encode(x.reshape(-1, D_IN)).reshape(B, T, D_SAE)
    if sae.is_temporal:
        assert not torch.allclose(flat, sae.encode(x))
    else:
        torch.testing.assert_close(flat, sae.encode(x))


@variants
def test_unit_decoder_norms(name, overrides):
    sae = make(name, overrides)
    ones = torch.ones(D_SAE)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), ones)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1) * 3 + 0.1)
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), ones)
    with torch.no_grad():
        sae.W_dec.mul_(2.0)
    sae.constrain_parameters_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), ones)


@variants
def test_remove_parallel_gradient(name, overrides):
    sae = make(name, overrides).train()
    sae.loss(batch()).loss.backward()
    sae.remove_parallel_gradient_()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(-1)
    torch.testing.assert_close(parallel, torch.zeros(D_SAE), atol=1e-5, rtol=0)


@variants
def test_gradients_reach_every_parameter(name, overrides):
    sae = opened(make(name, overrides)).train()
    # Every latent dead, so AuxK (where present) also trains latents TopK skipped.
    out = sae.loss(batch(), dead_mask=torch.ones(D_SAE, dtype=torch.bool))
    out.loss.backward()
    for pname, p in sae.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


@variants
def test_loss_falls_with_adam(name, overrides):
    """The trainer's step sequence on a fixed batch lowers the loss within 50 steps."""
    sae = make(name, overrides).train()
    x = batch()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    first = last = None
    for step in range(50):
        out = sae.loss(x, sparsity_scale=linear_warmup(step, 10))
        opt.zero_grad()
        out.loss.backward()
        sae.remove_parallel_gradient_()
        opt.step()
        sae.constrain_parameters_()
        first = out.components["loss"] if first is None else first
        last = out.components["loss"]
    assert last < 0.8 * first, (first, last)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))


@variants
def test_bad_input_shape(name, overrides):
    sae = make(name, overrides)
    with pytest.raises(MtsaeError):
        sae.encode(torch.randn(4, D_IN + 1))
    with pytest.raises(MtsaeError):
        sae.loss(torch.randn(D_IN))


@variants
def test_config_dict_round_trip(name, overrides):
    sae = make(name, overrides)
    cls = type(sae)
    assert cls.config_class.from_dict(sae.cfg.to_dict()) == sae.cfg
    with pytest.raises(MtsaeError):
        cls.config_class.from_dict({**sae.cfg.to_dict(), "no_such_field": 1})


@variants
def test_dead_feature_tracking(name, overrides):
    sae = make(name, overrides)
    x = batch()
    sae.eval()
    sae.loss(x)
    assert sae.tokens_since_fired.sum() == 0  # eval mode leaves the training state alone
    sae.train()
    out = sae.loss(x)
    fired = (out.codes.reshape(-1, D_SAE) != 0).any(0)
    expected = torch.where(fired, 0, B * T)
    assert torch.equal(sae.tokens_since_fired, expected)


# ----------------------------------------------------------- registry etc.
def test_register_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):

        @register("relu")
        class Again(get_architecture("relu")):  # noqa: F811
            pass


def test_unknown_architecture_is_a_user_error():
    with pytest.raises(MtsaeError, match="unknown SAE architecture"):
        get_architecture("nope")


@pytest.mark.parametrize(
    "name,bad",
    [("relu", {"l1_coefficient": -1}), ("topk", {"k": 0}), ("topk", {"k": D_SAE + 1}),
     ("jumprelu", {"bandwidth": 0}), ("mtsae", {"kernel_size": 4, "padding": "zeros"}), ("mtsae", {"padding": "reflect"}),
     ("mtsae", {"activation": "gelu"}), ("relu", {"d_sae": 0})],
)
def test_bad_config_values(name, bad):
    with pytest.raises(MtsaeError):
        create_sae(name, **{"d_in": D_IN, "d_sae": D_SAE, **bad})


def test_presets():
    assert set(PRESETS) == {"run0", "run1", "run2", "run3"}
    for p in PRESETS.values():
        assert (p.layer, p.d_sae, p.lr) == (19, 2304, 3e-4)
    run1, run2, run3 = (get_preset(n) for n in ("run1", "run2", "run3"))
    assert get_preset("run0").architecture == "relu" and get_preset("run0").arch_config["l1_coefficient"] == 0.04
    assert (run1.arch_config["dilations"], run1.arch_config["padding"], run1.window) == ((1, 2, 4), "circular", 8)
    assert (run2.arch_config["cos_coefficient"], run2.arch_config["l1_coefficient"], run2.window) == (0.2, 0.08, 128)
    assert run3.arch_config["dilations"] == (1, 4, 16) and run3.arch_config["padding"] == "replicate"
    sae = build_sae("run3", d_in=8)
    assert sae.architecture == "mtsae" and sae.cfg.dilations == (1, 4, 16) and sae.cfg.d_sae == 2304
    assert build_sae(run1, d_in=8, d_sae=16).cfg.d_sae == 16
    with pytest.raises(MtsaeError):
        get_preset("run9")
    run1.arch_config["padding"] = "zeros"  # a copy: the shared preset is unchanged
    assert get_preset("run1").arch_config["padding"] == "circular"
    assert dataclasses.asdict(get_preset("run2"))["arch_config"]["dilations"] == (1, 3, 9)


# ------------------------------------------------------- hand-computed checks
def test_relu_codes_and_loss_by_hand():
    sae = make("relu", {"l1_coefficient": 0.5}).train()
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = batch()
    codes = torch.clamp((x - sae.b_dec) @ sae.W_enc + sae.b_enc, min=0)
    out = sae.loss(x, sparsity_scale=0.5)
    torch.testing.assert_close(out.codes, codes)
    mse = ((codes @ sae.W_dec + sae.b_dec - x) ** 2).sum(-1).mean()
    l1 = codes.sum(-1).mean()
    torch.testing.assert_close(out.loss, mse + 0.25 * l1)
    assert out.components["l1"] == pytest.approx(l1.item(), rel=1e-6)
    torch.testing.assert_close(sae.loss(x, sparsity_scale=0.0).loss, mse)


def test_topk_keeps_exactly_k_largest():
    pre = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5], [-3.0, -2.0, -1.0, 0.2, -0.5]])
    codes = topk_relu(pre, 2)
    # Row 2: the top 2 are 0.2 and -0.5; the ReLU then zeroes -0.5, leaving one active.
    assert torch.equal(codes, torch.tensor([[0, 3.0, 0, 2.0, 0], [0, 0, 0, 0.2, 0]]))
    sae = make("topk", {"k": 4})
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive → exactly k active
    x = batch()
    codes = sae.encode(x)
    assert ((codes != 0).sum(-1) == 4).all()
    pre = sae.pre_activations(x)
    torch.testing.assert_close(codes.sum(-1), pre.topk(4, dim=-1).values.sum(-1))


def test_batchtopk_training_and_threshold():
    pre = torch.tensor([[1.0, 5.0, 0.0], [4.0, 3.0, 2.0]])
    assert torch.equal(batch_topk_relu(pre, 1), torch.tensor([[0, 5.0, 0], [4.0, 0, 0]]))

    sae = make("batchtopk", {"k": 4, "threshold_beta": 0.5}).train()
    with torch.no_grad():
        sae.b_enc.fill_(100.0)
    x = batch()
    out = sae.loss(x)
    assert (out.codes != 0).sum() == 4 * B * T
    first_min = out.codes[out.codes > 0].min()
    torch.testing.assert_close(sae.threshold, first_min)  # first update sets θ directly
    out2 = sae.loss(x * 0.5)
    torch.testing.assert_close(sae.threshold, 0.5 * first_min + 0.5 * out2.codes[out2.codes > 0].min())
    sae.eval()
    pre = sae.pre_activations(x)
    torch.testing.assert_close(sae.encode(x), pre.relu() * (pre > sae.threshold))


def test_batchtopk_threshold_is_a_plain_mean_until_the_ema_takes_over():
    """With β = 0.999 a plain EMA would still hold ~37 % of the first batch's value after 1000 steps."""
    sae = make("batchtopk", {"k": 4, "threshold_beta": 0.999}).train()
    x = batch()
    minima = []
    for scale in (1.0, 0.5, 0.25):
        out = sae.loss(x * scale)
        minima.append(out.codes[out.codes > 0].min())
    torch.testing.assert_close(sae.threshold, torch.stack(minima).mean())
    assert sae.threshold_updates.item() == 3 and "threshold_updates" in sae.tensors_for_saving()[1]


def test_jumprelu_threshold_semantics_and_gradients():
    theta = torch.tensor([1.0, 1.0, 1.0, 1.0])
    pre = torch.tensor([[0.5, 1.0, 1.5, -1.0]])
    assert torch.equal(jumprelu(pre, theta, 0.1), torch.tensor([[0.0, 0.0, 1.5, 0.0]]))  # pre == θ is off

    theta = torch.tensor([0.5, 0.5], requires_grad=True)
    pre = torch.tensor([[0.49, 0.9]], requires_grad=True)
    jumprelu(pre, theta, 0.1).sum().backward()
    # Only feature 0 is within ε/2 of θ: ∂/∂θ = -θ/ε = -5; ∂/∂pre = H(pre - θ).
    torch.testing.assert_close(theta.grad, torch.tensor([-5.0, 0.0]))
    torch.testing.assert_close(pre.grad, torch.tensor([[0.0, 1.0]]))
    theta.grad = None
    pre.grad = None
    heaviside_ste(pre, theta, 0.1).sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([-10.0, 0.0]))  # -1/ε
    assert pre.grad is None or torch.all(pre.grad == 0)

    sae = make("jumprelu", {})
    sae.set_threshold_(torch.full((sae.cfg.d_sae,), -0.3))  # θ = exp(r·φ) cannot be negative: -0.3 is 0 exactly
    sae.constrain_parameters_()
    assert (sae.threshold == 0).all()
    x = batch()
    pre = sae.pre_activations(x)
    torch.testing.assert_close(sae.encode(x), pre * (pre > 0))


def test_jumprelu_l0_penalty_counts_active():
    sae = make("jumprelu", {"l0_coefficient": 2.0}).train()
    x = batch()
    out = sae.loss(x)
    assert out.components["l0_penalty"] == pytest.approx(out.components["l0"])
    mse = ((out.recon - x) ** 2).sum(-1).mean()
    torch.testing.assert_close(out.loss, mse + 2.0 * (out.codes > 0).float().sum(-1).mean())


def test_auxk_uses_only_dead_latents():
    sae = make("topk", {"k": 2, "k_aux": 3}).train()
    x = batch()
    none_dead = sae.loss(x, dead_mask=torch.zeros(D_SAE, dtype=torch.bool))
    assert none_dead.components["auxk"] == 0.0
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:5] = True
    out = sae.loss(x, dead_mask=dead)
    assert out.components["auxk"] > 0
    sae.zero_grad()
    (out.loss - losses.mse_loss(out.recon, x)).backward()  # the AuxK term alone
    rows_with_grad = sae.W_dec.grad.abs().sum(1) > 0
    assert rows_with_grad[:5].any() and not rows_with_grad[5:].any()
    # Tracking drives the mask when none is passed.
    sae2 = make("topk", {"k": 2, "dead_tokens_threshold": 1})
    sae2.train()
    sae2.loss(x)
    assert torch.equal(sae2.dead_mask(), sae2.tokens_since_fired >= 1)


def test_adjacent_cosine_by_hand():
    codes = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]], requires_grad=True)
    # pairs: cos 1, cos 0, zero vector → 0
    value = losses.adjacent_cosine(codes)
    torch.testing.assert_close(value, torch.tensor(1.0 / 3))
    value.backward()
    assert torch.isfinite(codes.grad).all()
    assert losses.adjacent_cosine(codes.detach()[:, :1]) == 0
    assert losses.adjacent_cosine(codes.detach()[0]) == 0  # [N, d]: no time axis


def test_mtsae_loss_terms_by_hand():
    sae = make("mtsae", {"l1_coefficient": 0.3, "cos_coefficient": 0.7, "temporal_loss_scale": "raw"}).train()
    x = batch()
    out = sae.loss(x, sparsity_scale=0.5)
    mse = ((out.recon - x) ** 2).sum(-1).mean()
    c = out.codes
    cos = (c[:, :-1] * c[:, 1:]).sum(-1) / (c[:, :-1].norm(dim=-1) * c[:, 1:].norm(dim=-1)).clamp_min(1e-8)
    expected = mse + 0.15 * c.sum(-1).mean() + 0.7 * cos.mean()
    torch.testing.assert_close(out.loss, expected)
    assert out.components["sep"] == pytest.approx(cos.mean().item(), rel=1e-5)


def test_mtsae_batchnorm_train_vs_eval():
    sae = make("mtsae", {"dilations": (1, 3, 9), "gate_init": 1.0})  # the seed's open gate
    x = batch()
    buffers = lambda: [b.clone() for b in (sae.temporal.bn_running_mean, sae.temporal.bn_running_var)]  # noqa: E731

    # Fresh eval: running stats 0 / 1, so BN is x / sqrt(1 + eps).
    sae.eval()
    before = buffers()
    enc = sae.encode_full(x)
    assert all(torch.equal(a, b) for a, b in zip(before, buffers()))
    from mtsae.train.temporal import dilated_depthwise_conv

    pre = sae.pre_activations(x)
    t = sae.temporal
    expected = pre + sum(
        dilated_depthwise_conv(pre, t.conv_weight[i], r, t.padding) / (1 + t.bn_eps) ** 0.5
        for i, r in enumerate(t.dilations)
    )
    torch.testing.assert_close(enc.pre, expected)
    # Eval mode: each sequence is encoded independently of the rest of the batch.
    torch.testing.assert_close(sae.encode(x[:1]), sae.encode(x)[:1])

    # Train mode: batch statistics (so batch-dependent), running stats move.
    sae.train()
    train_codes = sae.encode(x)
    assert not all(torch.equal(a, b) for a, b in zip(before, buffers()))
    assert not torch.allclose(sae.encode(x[:1]), sae.encode(x)[:1])
    assert not torch.allclose(train_codes, enc.codes)
    # Batch statistics: each BN branch output has ~zero mean over (B, T) per feature.
    conv = dilated_depthwise_conv(pre, t.conv_weight[0], 1, t.padding)
    normed = (conv - conv.mean((0, 1))) / torch.sqrt(conv.var((0, 1), unbiased=False) + t.bn_eps)
    torch.testing.assert_close(normed.mean((0, 1)), torch.zeros(D_SAE), atol=1e-5, rtol=0)


def test_mtsae_single_token_training_is_refused():
    sae = make("mtsae", {}).train()
    with pytest.raises(MtsaeError, match="eval"):
        sae.encode(torch.randn(1, D_IN))
    sae.eval()
    assert sae.encode(torch.randn(1, D_IN)).shape == (1, D_SAE)


def test_linear_warmup():
    assert [linear_warmup(s, 4) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert linear_warmup(0, 0) == 1.0


def test_configs_are_frozen():
    sae = make("relu", {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        sae.cfg.l1_coefficient = 1.0  # type: ignore[misc]
