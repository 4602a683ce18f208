"""Fused Triton kernels for :func:`mtsae.train.temporal.temporal_mix` (CUDA).

The PyTorch path materialises one ``[B, T, F]`` tensor per tap and rate, a
stacked ``[B, T, R, F]`` conv output, a normalised copy and the sum — a dozen
full passes over memory. Here every pass reads ``pre`` once from DRAM (the
taps re-read neighbouring rows of the same ``[T, BLOCK_F]`` slab, which stay in
cache) and recomputes the convolutions instead of storing them:

forward (training)   1. ``_conv_stats_kernel``: per (sequence, rate, feature) mean and
                        M2 of conv_r, merged over time blocks with Chan's formula
                        (no E[x²]-E[x]² cancellation); merged over sequences in torch.
                     2. ``_apply_kernel``: ``out = pre + Σ_r conv_r·scale_r + shift_r``.
forward (eval)       only step 2, with the running statistics.
backward             3. ``_grad_stats_kernel``: Σ dY and Σ dY·x̂_r (dβ, dγ).
                     4. ``_grad_input_kernel``: dpre as a gather over the transposed
                        taps (replicate padding adds the clamped edge rows), and
                        ``_grad_weight_kernel``: per-tap Σ dconv_r·pre-tap.

BatchNorm backward in training mode is ``dconv_r = A·dY + Bc + C·conv_r`` with
per-(rate, feature) constants from step 3, so dconv never has to be stored.

Every program owns one sequence ``b`` and ``BLOCK_F`` features and walks the
whole window, so partial sums are per sequence (``[B, …, F]``) and reduced in
torch: deterministic, no atomics. Arithmetic is float32 whatever ``pre``'s
dtype; the output and ``dpre`` have ``pre``'s dtype.

Selection: :class:`mtsae.train.temporal.TemporalMixer` uses this on CUDA
tensors when Triton imports (``MTSAE_FUSED_TEMPORAL=0`` turns it off);
elsewhere it keeps the PyTorch path, which is also the reference the tests
hold this against. With ``TRITON_INTERPRET=1`` set before this module is
imported the same kernels run on CPU tensors in Triton's interpreter (slow;
that is how the tests check them without a GPU).
"""

from __future__ import annotations

from typing import Sequence

import torch

from mtsae import env
from mtsae.train.temporal import PADDING_MODES, validate_temporal_args

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs without triton keep the PyTorch path
    triton = None
    tl = None

PADDING_CODES = {mode: code for code, mode in enumerate(PADDING_MODES)}  # circular 0, replicate 1, zeros 2, causal 3
DEFAULT_BLOCK_T = 32
DEFAULT_BLOCK_F = 64


def fused_available() -> bool:
    """True when Triton imports and ``MTSAE_FUSED_TEMPORAL`` is not ``0``."""
    return triton is not None and env.get(env.FUSED_TEMPORAL) != "0"


_checked_devices: set[torch.device] = set()


def check_on_first_use(device: torch.device, padding: str) -> None:
    """Compare the fused kernels with the PyTorch path once per device and padding, forward and gradients.

    A compiler or card the kernels were never run on must fail loudly here,
    not train a wrong model: any mismatch or compile error raises
    ``MtsaeError`` naming the switch back to the PyTorch path.
    """
    from mtsae.errors import MtsaeError
    from mtsae.train.temporal import temporal_mix

    key = (torch.device(device), padding)
    if key in _checked_devices:
        return
    gen = torch.Generator(device="cpu").manual_seed(0)
    B, T, F, dil = 3, 37, 70, (1, 2, 5)
    tensors = [torch.randn(B, T, F, generator=gen), torch.randn(len(dil), F, 3, generator=gen) / 3,
               1 + torch.rand(len(dil), F, generator=gen), torch.randn(len(dil), F, generator=gen) / 10]
    try:
        results = []
        for mix in (temporal_mix, fused_temporal_mix):
            leaves = [t.to(device).requires_grad_() for t in tensors]
            stats = [torch.zeros(len(dil), F, device=device), torch.ones(len(dil), F, device=device)]
            out = mix(*leaves, *stats, dilations=dil, padding=padding, training=True)
            out.float().pow(2).sum().backward()
            results.append([out.detach().float(), *stats, *(t.grad for t in leaves)])
        for ref, got in zip(*results):
            torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)
    except Exception as exc:  # noqa: BLE001 - any failure means the kernels cannot be trusted here
        raise MtsaeError(
            f"the fused Triton temporal kernels failed their first-use check on {device} ({padding} padding): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; set MTSAE_FUSED_TEMPORAL=0 to train "
            "with the PyTorch path, and please report it"
        ) from exc
    _checked_devices.add(key)


if triton is not None:

    @triton.jit
    def _tap_offset(j, r, K: tl.constexpr, PADDING: tl.constexpr):
        # Same rule as temporal.tap_offsets: causal taps end at the current step, others are centred.
        if PADDING == 3:
            return -(K - 1 - j) * r
        else:
            return (j - (K - 1) // 2) * r

    @triton.jit
    def _source_rows(t, T, PADDING: tl.constexpr):
        """(row to read, whether it exists) for time steps ``t`` that may lie outside [0, T)."""
        if PADDING == 0:
            src = ((t % T) + T) % T  # % truncates toward zero: fold negatives back
            exists = t == t
        elif PADDING == 1:
            src = tl.minimum(tl.maximum(t, 0), T - 1)
            exists = t == t
        else:
            exists = (t >= 0) & (t < T)
            src = tl.where(exists, t, 0)
        return src, exists

    @triton.jit
    def _load_rows(base, rows, rows_ok, f, f_ok, F):
        mask = rows_ok[:, None] & f_ok[None, :]
        return tl.load(base + rows[:, None] * F + f[None, :], mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _conv_tile(pre_base, w_ptr, i, r, t, t_ok, f, f_ok, T, F,
                   K: tl.constexpr, PADDING: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
        """conv_i at time steps ``t`` (rows where ``t_ok`` is false are 0): ``Σ_j w[i, f, j]·pre[src(t + o_j)]``."""
        acc = tl.zeros((BLOCK_T, BLOCK_F), dtype=tl.float32)
        for j in tl.static_range(K):
            w = tl.load(w_ptr + (i * F + f) * K + j, mask=f_ok, other=0.0)
            src, exists = _source_rows(t + _tap_offset(j, r, K, PADDING), T, PADDING)
            acc += w[None, :] * _load_rows(pre_base, src, exists & t_ok, f, f_ok, F)
        return acc

    @triton.jit
    def _dconv_tile(pre_base, dy_base, w_ptr, i, r, t, t_ok, f, f_ok, a, bc, c, T, F,
                    K: tl.constexpr, PADDING: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
        """Gradient at conv_i's output, ``A·dY + Bc + C·conv_i``, recomputed at steps ``t`` (0 where not ``t_ok``)."""
        conv = _conv_tile(pre_base, w_ptr, i, r, t, t_ok, f, f_ok, T, F, K, PADDING, BLOCK_T, BLOCK_F)
        g = _load_rows(dy_base, t, t_ok, f, f_ok, F)
        d = a[None, :] * g + bc[None, :] + c[None, :] * conv
        return tl.where(t_ok[:, None], d, 0.0)

    @triton.jit
    def _conv_stats_kernel(pre_ptr, w_ptr, dil_ptr, mean_ptr, m2_ptr, T, F,
                           R: tl.constexpr, K: tl.constexpr, PADDING: tl.constexpr,
                           BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
        """Per (sequence b, rate, feature): mean and Σ(x - mean)² of conv over the window."""
        f = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
        f_ok = f < F
        b = tl.program_id(1).to(tl.int64)
        pre_base = pre_ptr + b * T * F
        for i in tl.static_range(R):
            r = tl.load(dil_ptr + i)
            mean = tl.zeros((BLOCK_F,), dtype=tl.float32)
            m2 = tl.zeros((BLOCK_F,), dtype=tl.float32)
            for t0 in range(0, T, BLOCK_T):
                t = t0 + tl.arange(0, BLOCK_T)
                t_ok = t < T
                conv = _conv_tile(pre_base, w_ptr, i, r, t, t_ok, f, f_ok, T, F, K, PADDING, BLOCK_T, BLOCK_F)
                n_block = tl.sum(t_ok.to(tl.float32), axis=0)
                n_before = t0 * 1.0
                block_mean = tl.sum(conv, axis=0) / n_block
                dev = tl.where(t_ok[:, None], conv - block_mean[None, :], 0.0)
                delta = block_mean - mean
                n_total = n_before + n_block
                mean += delta * (n_block / n_total)
                m2 += tl.sum(dev * dev, axis=0) + delta * delta * (n_before * n_block / n_total)
            out = (b * R + i) * F + f
            tl.store(mean_ptr + out, mean, mask=f_ok)
            tl.store(m2_ptr + out, m2, mask=f_ok)

    @triton.jit
    def _apply_kernel(pre_ptr, w_ptr, dil_ptr, scale_ptr, shift_ptr, out_ptr, T, F,
                      R: tl.constexpr, K: tl.constexpr, PADDING: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
        """``out = pre + Σ_r conv_r·scale_r + shift_r`` (BatchNorm folded into scale/shift)."""
        f = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
        f_ok = f < F
        b = tl.program_id(1).to(tl.int64)
        pre_base = pre_ptr + b * T * F
        for t0 in range(0, T, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            t_ok = t < T
            acc = _load_rows(pre_base, t, t_ok, f, f_ok, F)
            for i in tl.static_range(R):
                r = tl.load(dil_ptr + i)
                conv = _conv_tile(pre_base, w_ptr, i, r, t, t_ok, f, f_ok, T, F, K, PADDING, BLOCK_T, BLOCK_F)
                scale = tl.load(scale_ptr + i * F + f, mask=f_ok, other=0.0)
                shift = tl.load(shift_ptr + i * F + f, mask=f_ok, other=0.0)
                acc += conv * scale[None, :] + shift[None, :]
            mask = t_ok[:, None] & f_ok[None, :]
            tl.store(out_ptr + b * T * F + t[:, None] * F + f[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _grad_stats_kernel(pre_ptr, dy_ptr, w_ptr, dil_ptr, mean_ptr, rstd_ptr, dbeta_ptr, dgamma_ptr, T, F,
                           R: tl.constexpr, K: tl.constexpr, PADDING: tl.constexpr,
                           BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
        """Per sequence b: Σ_t dY (dβ, the same for every rate) and Σ_t dY·x̂_r (dγ_r)."""
        f = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
        f_ok = f < F
        b = tl.program_id(1).to(tl.int64)
        pre_base = pre_ptr + b * T * F
        dy_base = dy_ptr + b * T * F
        dbeta = tl.zeros((BLOCK_F,), dtype=tl.float32)
        for t0 in range(0, T, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            dbeta += tl.sum(_load_rows(dy_base, t, t < T, f, f_ok, F), axis=0)
        tl.store(dbeta_ptr + b * F + f, dbeta, mask=f_ok)
        for i in tl.static_range(R):
            r = tl.load(dil_ptr + i)
            mean = tl.load(mean_ptr + i * F + f, mask=f_ok, other=0.0)
            rstd = tl.load(rstd_ptr + i * F + f, mask=f_ok, other=0.0)
            dgamma = tl.zeros((BLOCK_F,), dtype=tl.float32)
            for t0 in range(0, T, BLOCK_T):
                t = t0 + tl.arange(0, BLOCK_T)
                t_ok = t < T
                conv = _conv_tile(pre_base, w_ptr, i, r, t, t_ok, f, f_ok, T, F, K, PADDING, BLOCK_T, BLOCK_F)
                g = _load_rows(dy_base, t, t_ok, f, f_ok, F)  # 0 on padded rows, so their x̂ adds nothing
                dgamma += tl.sum(g * (conv - mean[None, :]) * rstd[None, :], axis=0)
            tl.store(dgamma_ptr + (b * R + i) * F + f, dgamma, mask=f_ok)

    @triton.jit
    def _grad_input_kernel(pre_ptr, dy_ptr, w_ptr, dil_ptr, a_ptr, bc_ptr, c_ptr, dpre_ptr, T, F,
                           R: tl.constexpr, K: tl.constexpr, PADDING: tl.constexpr,
                           BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
        """``dpre[s] = dY[s] + Σ_r Σ_j w[r, f, j]·dconv_r[t]`` over every t whose tap j reads row s."""
        f = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
        f_ok = f < F
        b = tl.program_id(1).to(tl.int64)
        pre_base = pre_ptr + b * T * F
        dy_base = dy_ptr + b * T * F
        for s0 in range(0, T, BLOCK_T):
            s = s0 + tl.arange(0, BLOCK_T)
            s_ok = s < T
            acc = _load_rows(dy_base, s, s_ok, f, f_ok, F)
            for i in tl.static_range(R):
                r = tl.load(dil_ptr + i)
                a = tl.load(a_ptr + i * F + f, mask=f_ok, other=0.0)
                bc = tl.load(bc_ptr + i * F + f, mask=f_ok, other=0.0)
                c = tl.load(c_ptr + i * F + f, mask=f_ok, other=0.0)
                for j in tl.static_range(K):
                    o = _tap_offset(j, r, K, PADDING)
                    w = tl.load(w_ptr + (i * F + f) * K + j, mask=f_ok, other=0.0)
                    # The one t with t + o == s (mod T for circular); clamped rows come below.
                    if PADDING == 0:
                        t = (((s - o) % T) + T) % T
                        t_ok = s_ok
                    else:
                        t_ok = s_ok & (s - o >= 0) & (s - o < T)
                        t = tl.where(t_ok, s - o, 0)
                    acc += w[None, :] * _dconv_tile(pre_base, dy_base, w_ptr, i, r, t, t_ok, f, f_ok, a, bc, c,
                                                    T, F, K, PADDING, BLOCK_T, BLOCK_F)
                    if PADDING == 1:
                        # Replicate: every t with t + o < 0 also read row 0, every t with t + o > T-1 row T-1.
                        n_low = tl.where(s0 == 0, tl.minimum(tl.maximum(-o, 0), T), 0)
                        for e in range(0, n_low):
                            t_edge = tl.where(s == 0, e, 0)
                            acc += w[None, :] * _dconv_tile(pre_base, dy_base, w_ptr, i, r, t_edge, s_ok & (s == 0),
                                                            f, f_ok, a, bc, c, T, F, K, PADDING, BLOCK_T, BLOCK_F)
                        n_high = tl.where(s0 + BLOCK_T >= T, tl.minimum(tl.maximum(o, 0), T), 0)
                        for e in range(0, n_high):
                            t_edge = tl.where(s == T - 1, T - 1 - e, 0)
                            acc += w[None, :] * _dconv_tile(pre_base, dy_base, w_ptr, i, r, t_edge,
                                                            s_ok & (s == T - 1), f, f_ok, a, bc, c,
                                                            T, F, K, PADDING, BLOCK_T, BLOCK_F)
            mask = s_ok[:, None] & f_ok[None, :]
            tl.store(dpre_ptr + b * T * F + s[:, None] * F + f[None, :], acc.to(dpre_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _grad_weight_kernel(pre_ptr, dy_ptr, w_ptr, dil_ptr, a_ptr, bc_ptr, c_ptr, dw_ptr, T, F,
                            R: tl.constexpr, K: tl.constexpr, K_POW2: tl.constexpr, PADDING: tl.constexpr,
                            BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
        """Per sequence b: ``dw[r, j, f] = Σ_t dconv_r[t]·pre[src(t + o_j)]``."""
        f = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
        f_ok = f < F
        b = tl.program_id(1).to(tl.int64)
        pre_base = pre_ptr + b * T * F
        dy_base = dy_ptr + b * T * F
        taps = tl.arange(0, K_POW2)
        for i in tl.static_range(R):
            r = tl.load(dil_ptr + i)
            a = tl.load(a_ptr + i * F + f, mask=f_ok, other=0.0)
            bc = tl.load(bc_ptr + i * F + f, mask=f_ok, other=0.0)
            c = tl.load(c_ptr + i * F + f, mask=f_ok, other=0.0)
            dw = tl.zeros((K_POW2, BLOCK_F), dtype=tl.float32)
            for t0 in range(0, T, BLOCK_T):
                t = t0 + tl.arange(0, BLOCK_T)
                t_ok = t < T
                dconv = _dconv_tile(pre_base, dy_base, w_ptr, i, r, t, t_ok, f, f_ok, a, bc, c,
                                    T, F, K, PADDING, BLOCK_T, BLOCK_F)
                for j in tl.static_range(K):
                    src, exists = _source_rows(t + _tap_offset(j, r, K, PADDING), T, PADDING)
                    tap = _load_rows(pre_base, src, exists & t_ok, f, f_ok, F)
                    dw += tl.where(taps[:, None] == j, tl.sum(dconv * tap, axis=0)[None, :], 0.0)
            out = ((b * R + i) * K + taps[:, None]) * F + f[None, :]
            tl.store(dw_ptr + out, dw, mask=(taps[:, None] < K) & f_ok[None, :])


def _check_supported(pre_BTF: torch.Tensor, dilations: Sequence[int], kernel_size: int, padding: str) -> None:
    if triton is None:
        raise RuntimeError("the fused temporal kernel needs triton; use mtsae.train.temporal.temporal_mix")
    validate_temporal_args(dilations, kernel_size, padding)
    if pre_BTF.dim() != 3:
        raise ValueError(f"pre must be [B, T, F], got shape {tuple(pre_BTF.shape)}")


def _grid(B: int, F: int, block_f: int) -> tuple[int, int]:
    return (triton.cdiv(F, block_f), B)


class _FusedTemporalMix(torch.autograd.Function):
    """Autograd wrapper: forward = kernels 1–2, backward = kernels 3–4 (see module doc)."""

    @staticmethod
    def forward(ctx, pre, conv_weight, bn_weight, bn_bias, running_mean, running_var, dilations,
                padding, training, momentum, eps, block_t, block_f):
        B, T, F = pre.shape
        R, _, K = conv_weight.shape
        pre = pre.contiguous()
        w = conv_weight.detach().float().contiguous()
        dil = torch.tensor(dilations, dtype=torch.int32, device=pre.device)
        code = PADDING_CODES[padding]
        meta = dict(R=R, K=K, PADDING=code, BLOCK_T=block_t, BLOCK_F=block_f)
        if training:
            mean, var = _batch_statistics(pre, w, dil, meta)
            _update_running(running_mean, running_var, mean, var, B * T, momentum)
        else:
            mean, var = running_mean.float(), running_var.float()
        rstd = torch.rsqrt(var + eps)
        gamma = bn_weight.detach().float()
        scale = (gamma * rstd).contiguous()
        shift = (bn_bias.detach().float() - mean * scale).contiguous()
        out = torch.empty_like(pre)
        _apply_kernel[_grid(B, F, block_f)](pre, w, dil, scale, shift, out, T, F, **meta)
        ctx.save_for_backward(pre, w, dil, gamma, mean, rstd)
        ctx.meta, ctx.training = meta, training
        return out

    @staticmethod
    def backward(ctx, grad_out):
        pre, w, dil, gamma, mean, rstd = ctx.saved_tensors
        meta = ctx.meta
        B, T, F = pre.shape
        R, K = meta["R"], meta["K"]
        dy = grad_out.contiguous()
        grid = _grid(B, F, meta["BLOCK_F"])
        part_dbeta = torch.empty(B, F, dtype=torch.float32, device=pre.device)
        part_dgamma = torch.empty(B, R, F, dtype=torch.float32, device=pre.device)
        _grad_stats_kernel[grid](pre, dy, w, dil, mean.contiguous(), rstd.contiguous(), part_dbeta, part_dgamma,
                                 T, F, **meta)
        dbeta = part_dbeta.sum(0).expand(R, F)
        dgamma = part_dgamma.sum(0)
        a, bc, c = _bn_backward_constants(gamma, mean, rstd, dgamma, dbeta, B * T, ctx.training)
        dpre = torch.empty_like(pre)
        _grad_input_kernel[grid](pre, dy, w, dil, a, bc, c, dpre, T, F, **meta)
        part_dw = torch.empty(B, R, K, F, dtype=torch.float32, device=pre.device)
        _grad_weight_kernel[grid](pre, dy, w, dil, a, bc, c, part_dw, T, F, K_POW2=triton.next_power_of_2(K), **meta)
        dw = part_dw.sum(0).transpose(1, 2)
        return dpre, dw, dgamma, dbeta.contiguous(), None, None, None, None, None, None, None, None, None


def _batch_statistics(pre, w, dil, meta) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of every conv_r over (B, T): per-sequence kernel partials merged with Chan's formula."""
    B, T, F = pre.shape
    R = meta["R"]
    part_mean = torch.empty(B, R, F, dtype=torch.float32, device=pre.device)
    part_m2 = torch.empty(B, R, F, dtype=torch.float32, device=pre.device)
    _conv_stats_kernel[_grid(B, F, meta["BLOCK_F"])](pre, w, dil, part_mean, part_m2, T, F, **meta)
    mean = part_mean.mean(0)  # every sequence has T rows
    m2 = part_m2.sum(0) + T * ((part_mean - mean) ** 2).sum(0)
    return mean, m2 / (B * T)


@torch.no_grad()
def _update_running(running_mean, running_var, mean, var, n, momentum) -> None:
    unbiased = var * n / (n - 1) if n > 1 else var  # torch.nn.BatchNorm1d's convention
    running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
    running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))


def _bn_backward_constants(gamma, mean, rstd, dgamma, dbeta, n, training):
    """``(A, Bc, C)`` with ``dconv = A·dY + Bc + C·conv`` (C = Bc = 0 with running statistics)."""
    a = gamma * rstd
    if not training:
        zeros = torch.zeros_like(a)
        return a.contiguous(), zeros, zeros.clone()
    c = -a * rstd * dgamma / n
    bc = -a * dbeta / n - c * mean
    return a.contiguous(), bc.contiguous(), c.contiguous()


def fused_temporal_mix(
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
    block_t: int = DEFAULT_BLOCK_T,
    block_f: int = DEFAULT_BLOCK_F,
) -> torch.Tensor:
    """Same contract as :func:`mtsae.train.temporal.temporal_mix`, computed by the fused kernels.

    Differences: the output has ``pre``'s dtype (the PyTorch path promotes a
    bfloat16 ``pre`` to float32 through ``batch_norm``); ``block_t``/``block_f``
    (powers of two) set the tile, tests use small ones to cross tile edges.
    """
    _check_supported(pre_BTF, dilations, conv_weight_RFK.shape[2], padding)
    return _FusedTemporalMix.apply(
        pre_BTF, conv_weight_RFK, bn_weight_RF, bn_bias_RF, bn_running_mean_RF, bn_running_var_RF,
        tuple(dilations), padding, training, momentum, eps, block_t, block_f,
    )
