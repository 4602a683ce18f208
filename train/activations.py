"""Sparsifying activations shared by several architectures.

All functions act on the last (feature) dimension and accept any number of
leading dimensions, so ``[N, F]`` and ``[B, T, F]`` pre-activations both work.
"""

from __future__ import annotations

from typing import Any

import torch


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest entries of each row (last dim), ReLU them, zero the rest.

    Selection happens on the raw pre-activations and the ReLU afterwards (as in
    Gao et al. 2024), so a row with fewer than ``k`` positive entries yields
    fewer than ``k`` non-zero codes. This is also SAELens's ``topk`` encoder, so
    checkpoints give identical codes in both libraries.
    """
    values, indices = torch.topk(pre, k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


def batch_topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """BatchTopK (Bussmann et al. 2024): keep the ``k * n_tokens`` largest ReLU'd
    pre-activations over the whole batch instead of ``k`` per token.

    Tokens therefore get a variable number of active features with ``k`` on
    average; every leading dimension counts as a token.
    """
    acts = pre.relu()
    flat = acts.reshape(-1)
    n_tokens = acts[..., 0].numel()
    keep = min(k * n_tokens, flat.numel())
    values, indices = torch.topk(flat, keep, sorted=False)
    return torch.zeros_like(flat).scatter(0, indices, values).reshape(acts.shape)


def grouped_topk_relu(pre: torch.Tensor, sizes: tuple[int, ...], budgets: tuple[int, ...]) -> torch.Tensor:
    """:func:`topk_relu` within each contiguous feature group: group g (``sizes[g]`` features) keeps its ``budgets[g]`` largest."""
    parts = torch.split(pre, sizes, dim=-1)
    return torch.cat([topk_relu(part, k) for part, k in zip(parts, budgets)], dim=-1)


@torch.no_grad()
def update_batchtopk_threshold_(threshold: torch.Tensor, updates: torch.Tensor, codes: torch.Tensor, beta: float) -> None:
    """BatchTopK's inference threshold θ after one training batch (see :mod:`mtsae.train.archs.batchtopk`).

    ``m`` = the smallest positive code; ``θ ← β_n·θ + (1-β_n)·m`` with ``β_n = min(beta, n/(n+1))``
    after ``n`` updates. In place, without host syncs.
    """
    min_positive = torch.where(codes > 0, codes, torch.full_like(codes, torch.inf)).min().to(threshold.dtype)
    beta_n = torch.clamp(updates / (updates + 1), max=beta).to(threshold.dtype)
    updated = beta_n * threshold + (1 - beta_n) * min_positive
    finite = torch.isfinite(min_positive)
    threshold.copy_(torch.where(finite, updated, threshold))
    updates.add_(finite.to(updates.dtype))


def _rectangle_window(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    # Rectangle kernel K(u) = 1[-1/2 < u < 1/2] at u = (pre - threshold) / bandwidth.
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype)


def _sum_to_features(grad: torch.Tensor, n_features: int) -> torch.Tensor:
    return grad.reshape(-1, n_features).sum(0)


class _JumpReLU(torch.autograd.Function):
    """``pre * H(pre - θ)``; the pseudo-derivative w.r.t. θ is -(θ/ε)·K((pre-θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        pre, threshold = ctx.saved_tensors
        grad_pre = grad_thr = None
        if ctx.needs_input_grad[0]:
            # Away from the jump the function is the identity or zero.
            grad_pre = grad_out * (pre > threshold).to(grad_out.dtype)
        if ctx.needs_input_grad[1]:
            window = _rectangle_window(pre, threshold, ctx.bandwidth)
            grad_thr = _sum_to_features(
                -(threshold / ctx.bandwidth) * window * grad_out, threshold.numel()
            )
        return grad_pre, grad_thr, None


class _HeavisideSTE(torch.autograd.Function):
    """``H(pre - θ)``; no gradient to ``pre``, pseudo-derivative -(1/ε)·K((pre-θ)/ε) to θ."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[None, torch.Tensor | None, None]:
        pre, threshold = ctx.saved_tensors
        grad_thr = None
        if ctx.needs_input_grad[1]:
            window = _rectangle_window(pre, threshold, ctx.bandwidth)
            grad_thr = _sum_to_features(-(1.0 / ctx.bandwidth) * window * grad_out, threshold.numel())
        return None, grad_thr, None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """JumpReLU (Rajamanoharan et al. 2024): ``pre`` where ``pre > threshold`` else 0.

    ``threshold`` has shape ``[F]``. Gradients: w.r.t. ``pre`` the exact one
    (``H(pre - θ)``); w.r.t. ``θ`` the straight-through estimate with a rectangle
    kernel of width ``bandwidth``.
    """
    return _JumpReLU.apply(pre, threshold, bandwidth)


def heaviside_ste(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``1[pre > threshold]`` with a straight-through gradient to ``threshold`` only.

    Summed over features it is the L0 of a JumpReLU layer, which is what the
    JumpReLU sparsity penalty differentiates.
    """
    return _HeavisideSTE.apply(pre, threshold, bandwidth)
