"""The fast temporal mixing (shifted-add) against the slow loop reference and torch's conv1d."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from mtsae.errors import MtsaeError
from mtsae.train.registry import create_sae
from mtsae.train.temporal import (
    PADDING_MODES,
    TemporalMixer,
    dilated_depthwise_conv,
    receptive_field,
    tap_offsets,
    temporal_mix,
    temporal_mix_reference,
    validate_temporal_args,
)

DILATION_SETS = [(1, 2, 4), (1, 3, 9), (1, 4, 16)]
B, NF = 2, 5



def _state(R: int, K: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv_weight_RFK": torch.randn(R, NF, K, generator=g, dtype=torch.float64),
        "bn_weight_RF": 1 + 0.3 * torch.randn(R, NF, generator=g, dtype=torch.float64),
        "bn_bias_RF": 0.3 * torch.randn(R, NF, generator=g, dtype=torch.float64),
        "bn_running_mean_RF": 0.2 * torch.randn(R, NF, generator=g, dtype=torch.float64),
        "bn_running_var_RF": 0.5 + torch.rand(R, NF, generator=g, dtype=torch.float64),
    }


def _run(fn, pre, state, dilations, padding, training):
    """Apply ``fn`` on fresh leaf copies; return (output, grads, updated running stats)."""
    pre = pre.clone().requires_grad_(True)
    w = state["conv_weight_RFK"].clone().requires_grad_(True)
    gamma = state["bn_weight_RF"].clone().requires_grad_(True)
    beta = state["bn_bias_RF"].clone().requires_grad_(True)
    rm, rv = state["bn_running_mean_RF"].clone(), state["bn_running_var_RF"].clone()
    out = fn(pre, w, gamma, beta, rm, rv, dilations=dilations, padding=padding, training=training)
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad((out * probe).sum(), (pre, w, gamma, beta))
    return out.detach(), grads, (rm, rv)


@pytest.mark.parametrize("T", [12, 3], ids=["T12", "T3-shorter-than-receptive-field"])
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("dilations", DILATION_SETS, ids=str)
@pytest.mark.parametrize("padding", PADDING_MODES)
def test_fast_matches_reference(padding, dilations, kernel_size, T):
    torch.manual_seed(0)
    pre = torch.randn(B, T, NF, dtype=torch.float64)
    state = _state(len(dilations), kernel_size, seed=1)
    for training in (True, False):
        fast = _run(temporal_mix, pre, state, dilations, padding, training)
        ref = _run(temporal_mix_reference, pre, state, dilations, padding, training)
        torch.testing.assert_close(fast[0], ref[0])
        for g_fast, g_ref, name in zip(fast[1], ref[1], ["pre", "conv_weight", "bn_weight", "bn_bias"]):
            torch.testing.assert_close(g_fast, g_ref, msg=lambda m, n=name: f"grad {n}: {m}")
        torch.testing.assert_close(fast[2], ref[2])  # running stats (updated only in training)
        if not training:
            torch.testing.assert_close(fast[2][0], state["bn_running_mean_RF"])


@pytest.mark.parametrize("padding", ["zeros", "causal", "circular", "replicate"])
@pytest.mark.parametrize("dilation,kernel_size", [(1, 3), (2, 3), (3, 5), (4, 5)])
def test_conv_matches_torch_conv1d(padding, dilation, kernel_size):
    """Independent oracle: torch's grouped conv1d on padded input (pads fit inside T here)."""
    T = 12
    pre = torch.randn(B, T, NF, dtype=torch.float64)
    w = torch.randn(NF, kernel_size, dtype=torch.float64)
    x_BFT = pre.transpose(1, 2)
    span = (kernel_size - 1) * dilation
    if padding == "causal":
        padded = F.pad(x_BFT, (span, 0))
    elif padding == "zeros":
        padded = F.pad(x_BFT, (span // 2, span // 2))
    else:
        padded = F.pad(x_BFT, (span // 2, span // 2), mode=padding)
    expected = F.conv1d(padded, w.unsqueeze(1), dilation=dilation, groups=NF).transpose(1, 2)
    torch.testing.assert_close(dilated_depthwise_conv(pre, w, dilation, padding), expected)


def test_causal_even_kernel_matches_reference():
    pre = torch.randn(B, 10, NF, dtype=torch.float64)
    state = _state(2, 4, seed=3)
    fast = _run(temporal_mix, pre, state, (1, 3), "causal", True)
    ref = _run(temporal_mix_reference, pre, state, (1, 3), "causal", True)
    torch.testing.assert_close(fast[0], ref[0])


def test_tap_offsets_and_receptive_field():
    assert tap_offsets(3, 4, "circular") == (-4, 0, 4)
    assert tap_offsets(5, 2, "zeros") == (-4, -2, 0, 2, 4)
    assert tap_offsets(3, 2, "causal") == (-4, -2, 0)
    assert receptive_field((1, 4, 16), 3) == 33


def test_causal_output_ignores_the_future():
    mixer = TemporalMixer(NF, (1, 2, 4), 3, "causal").double().eval()
    pre = torch.randn(B, 12, NF, dtype=torch.float64)
    changed = pre.clone()
    changed[:, 7:] += torch.randn_like(changed[:, 7:])
    torch.testing.assert_close(mixer(pre)[:, :7], mixer(changed)[:, :7])
    assert not torch.allclose(mixer(pre)[:, 7:], mixer(changed)[:, 7:])


def test_circular_is_shift_equivariant():
    mixer = TemporalMixer(NF, (1, 3, 9), 3, "circular").double().eval()
    pre = torch.randn(B, 12, NF, dtype=torch.float64)
    torch.testing.assert_close(mixer(torch.roll(pre, 5, dims=1)), torch.roll(mixer(pre), 5, dims=1))


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("padding", PADDING_MODES)
def test_length_one_sequences(padding, kernel_size):
    """T = 1: circular/replicate see the token at every tap, zeros the centre tap, causal the last."""
    pre = torch.randn(7, 1, NF, dtype=torch.float64)
    w = torch.randn(NF, kernel_size, dtype=torch.float64)
    expected_w = {
        "circular": w.sum(1),
        "replicate": w.sum(1),
        "zeros": w[:, (kernel_size - 1) // 2],
        "causal": w[:, -1],
    }[padding]
    for r in (1, 4, 16):
        torch.testing.assert_close(dilated_depthwise_conv(pre, w, r, padding), pre * expected_w)


@pytest.mark.parametrize("padding", PADDING_MODES)
def test_sae_flat_input_is_length_one_sequences(padding):
    """MTSAE on [N, d] equals MTSAE on [N, 1, d], and in eval mode it is a per-token function."""
    torch.manual_seed(0)
    sae = create_sae("mtsae", d_in=16, d_sae=32, padding=padding, dilations=(1, 3, 9)).double()
    x = torch.randn(9, 16, dtype=torch.float64)
    for mode in ("train", "eval"):
        getattr(sae, mode)()
        torch.testing.assert_close(sae.encode(x), sae.encode(x.unsqueeze(1)).squeeze(1))
    sae.eval()
    torch.testing.assert_close(sae.encode(x[:4]), sae.encode(x)[:4])
    # Explicit eval-mode formula: mixed = pre + Σ_r BN_r(c_r · pre) with the running stats.
    t = sae.temporal
    K = sae.cfg.kernel_size
    pick = {"circular": t.conv_weight.sum(2), "replicate": t.conv_weight.sum(2),
            "zeros": t.conv_weight[:, :, (K - 1) // 2], "causal": t.conv_weight[:, :, -1]}[padding]
    pre = sae.pre_activations(x)
    normed = (pre.unsqueeze(1) * pick - t.bn_running_mean) / torch.sqrt(t.bn_running_var + t.bn_eps)
    mixed = pre + (normed * t.bn_weight + t.bn_bias).sum(1)
    torch.testing.assert_close(sae.encode_full(x).pre, mixed)


def test_mixer_updates_running_stats_only_in_training():
    mixer = TemporalMixer(NF, (1, 2), 3, "replicate")
    pre = torch.randn(B, 6, NF) * 3 + 1
    mixer.eval()
    mixer(pre)
    assert torch.equal(mixer.bn_running_mean, torch.zeros_like(mixer.bn_running_mean))
    mixer.train()
    mixer(pre)
    assert not torch.equal(mixer.bn_running_mean, torch.zeros_like(mixer.bn_running_mean))


@pytest.mark.parametrize(
    "dilations,kernel_size,padding",
    [((1, 2), 4, "circular"), ((), 3, "zeros"), ((1, 1), 3, "zeros"), ((0, 2), 3, "zeros"), ((1,), 3, "reflect")],
)
def test_invalid_temporal_args(dilations, kernel_size, padding):
    with pytest.raises(MtsaeError):
        validate_temporal_args(dilations, kernel_size, padding)


def test_all_padding_dilation_combinations_build():
    for padding, dilations in itertools.product(PADDING_MODES, DILATION_SETS):
        validate_temporal_args(dilations, 3, padding)
