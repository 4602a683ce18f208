"""Multi-scale temporal mixing of SAE pre-activations (the "MT" in MTSAE).

Given pre-activations ``pre`` of shape ``[B, T, F]`` (F = d_sae) and dilation
rates ``r ∈ dilations``::

    conv_r[b, t, f] = Σ_j w[r, f, j] · pre[b, t + o_j(r), f]
    mixed           = pre + Σ_r BN_r(conv_r)

Every feature has its own kernel (depth-wise, no cross-feature mixing) and
``BN_r`` normalises each (rate, feature) channel with statistics over B and T
(running statistics in eval mode). Tap offsets for kernel size K::

    non-causal (K odd, c = (K-1)/2):  o_j = (j - c)·r,      j = 0..K-1
    causal:                           o_j = -(K-1-j)·r,     j = 0..K-1

(``j`` indexes the kernel like ``torch.nn.Conv1d``: the last tap of a causal
kernel is the current step). A tap that falls outside ``[0, T)`` reads::

    circular   pre[(t + o) mod T]           (wraps as often as needed)
    replicate  pre[clamp(t + o, 0, T-1)]    (edge values)
    zeros      0
    causal     0 (only past taps exist, so this is zero left-padding)

There is no conv bias: the BatchNorm shift right after it would cancel it.

:func:`temporal_mix` is the fast path (shifted-add in ``[B, T, F]`` layout, no
transposes, vectorised over B and F); :func:`temporal_mix_reference` is a slow
loop-over-t-and-taps version that exists only so tests can check the fast one.
On CUDA, :class:`TemporalMixer` runs the fused Triton kernels of
:mod:`mtsae.train.temporal_triton` instead, tested against :func:`temporal_mix`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtsae.train.base import require

PADDING_MODES = ("circular", "replicate", "zeros", "causal")


def validate_temporal_args(dilations: Sequence[int], kernel_size: int, padding: str) -> None:
    """Raise ``MtsaeError`` for an unusable (dilations, kernel_size, padding) combination."""
    require(padding in PADDING_MODES, f"padding must be one of {PADDING_MODES}, got {padding!r}")
    require(len(dilations) > 0, "dilations must not be empty; use the 'relu' architecture for a per-token SAE")
    require(
        all(isinstance(r, int) and r >= 1 for r in dilations),
        f"dilations must be positive integers, got {tuple(dilations)}",
    )
    require(len(set(dilations)) == len(dilations), f"dilations must be distinct, got {tuple(dilations)}")
    require(kernel_size >= 1, f"kernel_size must be at least 1, got {kernel_size}")
    require(
        padding == "causal" or kernel_size % 2 == 1,
        f"kernel_size must be odd for {padding!r} padding (centred taps), got {kernel_size}; "
        "use an odd size or padding='causal'",
    )


def tap_offsets(kernel_size: int, dilation: int, padding: str) -> tuple[int, ...]:
    """Time offsets ``o_j`` of the ``kernel_size`` taps at ``dilation`` (see module doc)."""
    if padding == "causal":
        return tuple(-(kernel_size - 1 - j) * dilation for j in range(kernel_size))
    centre = (kernel_size - 1) // 2
    return tuple((j - centre) * dilation for j in range(kernel_size))


def is_causal(kernel_size: int, dilations: Sequence[int], padding: str) -> bool:
    """Whether no output step reads a later step: no tap ahead of t, and no wrap-around.

    Only ``causal`` padding is (or a 1-tap kernel, which reads t alone): centred taps
    read t + r, and circular padding also wraps the window's end into its start.
    """
    offsets = {o for r in dilations for o in tap_offsets(kernel_size, r, padding)}
    return max(offsets) <= 0 and (padding != "circular" or offsets == {0})


def receptive_field(dilations: Sequence[int], kernel_size: int) -> int:
    """Number of time steps one output can see: ``(K-1)·max(r) + 1``."""
    return (kernel_size - 1) * max(dilations) + 1


def shift_time(pre_BTF: torch.Tensor, offset: int, padding: str) -> torch.Tensor:
    """``out[:, t] = pre[:, t + offset]`` with the padding rule for out-of-range steps."""
    T = pre_BTF.shape[1]
    if offset == 0:
        return pre_BTF
    if padding == "circular":
        return torch.roll(pre_BTF, shifts=-offset, dims=1)
    if padding == "replicate":
        index = (torch.arange(T, device=pre_BTF.device) + offset).clamp_(0, T - 1)
        return pre_BTF.index_select(1, index)
    # zeros / causal: slice the valid part and pad with zeros on the side that fell off.
    if abs(offset) >= T:
        return torch.zeros_like(pre_BTF)
    if offset > 0:
        return F.pad(pre_BTF[:, offset:], (0, 0, 0, offset))
    return F.pad(pre_BTF[:, : T + offset], (0, 0, -offset, 0))


def dilated_depthwise_conv(
    pre_BTF: torch.Tensor, weight_FK: torch.Tensor, dilation: int, padding: str
) -> torch.Tensor:
    """One dilated depth-wise conv over time, shifted-add form: ``Σ_j w[:, j] · shift(pre, o_j)``."""
    kernel_size = weight_FK.shape[1]
    out = None
    for j, offset in enumerate(tap_offsets(kernel_size, dilation, padding)):
        term = shift_time(pre_BTF, offset, padding) * weight_FK[:, j]
        out = term if out is None else out + term
    return out


def temporal_mix(
    pre_BTF: torch.Tensor,
    conv_weight_RFK: torch.Tensor,
    bn_weight_RF: torch.Tensor,
    bn_bias_RF: torch.Tensor,
    bn_running_mean_RF: torch.Tensor,
    bn_running_var_RF: torch.Tensor,
    *,
    dilations: Sequence[int],
    padding: str,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Fast ``pre + Σ_r BN_r(conv_r(pre))`` on ``[B, T, F]``; returns ``[B, T, F]``.

    In training mode the BatchNorm uses batch statistics over (B, T) and updates
    the running buffers in place (``running = (1-momentum)·running + momentum·batch``,
    unbiased batch variance, as ``torch.nn.BatchNorm1d``); otherwise it uses them.
    """
    B, T, Fdim = pre_BTF.shape
    R = len(dilations)
    conv_BTRF = torch.stack(
        [dilated_depthwise_conv(pre_BTF, conv_weight_RFK[i], r, padding) for i, r in enumerate(dilations)],
        dim=2,
    )
    # All R·F channels in one batch_norm call: rows are the B·T tokens.
    normed = F.batch_norm(
        conv_BTRF.reshape(B * T, R * Fdim),
        bn_running_mean_RF.view(-1),  # views share storage: in-place updates land in the buffers
        bn_running_var_RF.view(-1),
        bn_weight_RF.reshape(-1),
        bn_bias_RF.reshape(-1),
        training,
        momentum,
        eps,
    )
    return pre_BTF + normed.view(B, T, R, Fdim).sum(2)


def temporal_mix_reference(
    pre_BTF: torch.Tensor,
    conv_weight_RFK: torch.Tensor,
    bn_weight_RF: torch.Tensor,
    bn_bias_RF: torch.Tensor,
    bn_running_mean_RF: torch.Tensor,
    bn_running_var_RF: torch.Tensor,
    *,
    dilations: Sequence[int],
    padding: str,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Slow, literal version of :func:`temporal_mix` (explicit loops over t and taps). Tests only."""
    B, T, Fdim = pre_BTF.shape
    kernel_size = conv_weight_RFK.shape[2]
    mixed = pre_BTF
    for i, r in enumerate(dilations):
        columns = []
        for t in range(T):
            acc = torch.zeros(B, Fdim, dtype=pre_BTF.dtype, device=pre_BTF.device)
            for j, offset in enumerate(tap_offsets(kernel_size, r, padding)):
                s = t + offset
                if padding == "circular":
                    s = s % T
                elif padding == "replicate":
                    s = min(max(s, 0), T - 1)
                elif not 0 <= s < T:  # zeros / causal
                    continue
                acc = acc + conv_weight_RFK[i, :, j] * pre_BTF[:, s, :]
            columns.append(acc)
        conv_BTF = torch.stack(columns, dim=1)
        if training:
            n = B * T
            mean_F = conv_BTF.sum(dim=(0, 1)) / n
            var_F = ((conv_BTF - mean_F) ** 2).sum(dim=(0, 1)) / n
            with torch.no_grad():
                unbiased = var_F * n / (n - 1) if n > 1 else var_F
                bn_running_mean_RF[i].mul_(1 - momentum).add_(momentum * mean_F)
                bn_running_var_RF[i].mul_(1 - momentum).add_(momentum * unbiased)
        else:
            mean_F, var_F = bn_running_mean_RF[i], bn_running_var_RF[i]
        normed = (conv_BTF - mean_F) / torch.sqrt(var_F + eps) * bn_weight_RF[i] + bn_bias_RF[i]
        mixed = mixed + normed
    return mixed


class TemporalMixer(nn.Module):
    """Learned state of :func:`temporal_mix` for ``d_sae`` features.

    Parameters / buffers (these are the checkpoint names under ``temporal.``):

    - ``conv_weight`` ``[R, d_sae, K]``: per-rate, per-feature kernels, init
      ``U(-1/√K, 1/√K)`` (``torch.nn.Conv1d``'s default for a depth-wise conv).
    - ``bn_weight`` / ``bn_bias`` ``[R, d_sae]``: BatchNorm affine, init 1 / 0.
    - ``bn_running_mean`` / ``bn_running_var`` ``[R, d_sae]``: BatchNorm running
      statistics, init 0 / 1, used in eval mode.

    ``R = len(dilations)``; stacking the rates keeps the tensors a fused kernel
    would read contiguous.
    """

    def __init__(
        self,
        d_sae: int,
        dilations: Sequence[int],
        kernel_size: int,
        padding: str,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        validate_temporal_args(dilations, kernel_size, padding)
        self.dilations = tuple(dilations)
        self.kernel_size = kernel_size
        self.padding = padding
        self.bn_momentum = bn_momentum
        self.bn_eps = bn_eps
        R = len(self.dilations)
        self.conv_weight = nn.Parameter(torch.empty(R, d_sae, kernel_size))
        self.bn_weight = nn.Parameter(torch.ones(R, d_sae))
        self.bn_bias = nn.Parameter(torch.zeros(R, d_sae))
        self.register_buffer("bn_running_mean", torch.zeros(R, d_sae))
        self.register_buffer("bn_running_var", torch.ones(R, d_sae))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.kernel_size)
        self.conv_weight.uniform_(-bound, bound)
        self.bn_weight.fill_(1.0)
        self.bn_bias.zero_()
        self.bn_running_mean.zero_()
        self.bn_running_var.fill_(1.0)

    def forward(self, pre_BTF: torch.Tensor) -> torch.Tensor:
        mix = temporal_mix
        if pre_BTF.is_cuda:  # CUDA: the fused Triton kernels; CPU keeps the PyTorch path (their reference)
            from mtsae.train import temporal_triton

            if temporal_triton.fused_available():
                temporal_triton.check_on_first_use(pre_BTF.device, self.padding)
                mix = temporal_triton.fused_temporal_mix
        return mix(
            pre_BTF,
            self.conv_weight,
            self.bn_weight,
            self.bn_bias,
            self.bn_running_mean,
            self.bn_running_var,
            dilations=self.dilations,
            padding=self.padding,
            training=self.training,
            momentum=self.bn_momentum,
            eps=self.bn_eps,
        )
