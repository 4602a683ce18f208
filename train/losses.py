"""Loss terms shared by the architectures (each written once, used everywhere).

Conventions: ``x`` and ``recon`` are ``[..., d_in]``, ``codes`` and ``pre`` are
``[..., d_sae]``; every leading position is one token. Per-token quantities are
summed over their feature/model dimension and averaged over tokens.
"""

from __future__ import annotations

import torch


def mse_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``mean_tokens ‖recon - x‖²``: squared error summed over ``d_in``, averaged over tokens.

    Summing over ``d_in`` (rather than averaging) keeps the balance between the
    reconstruction term and per-token sparsity penalties independent of how
    the mean is taken; it is the convention of SAELens and dictionary_learning.
    """
    return (recon - x).pow(2).sum(-1).mean()


def l1_penalty(codes: torch.Tensor) -> torch.Tensor:
    """``mean_tokens Σ_f |codes_f|``.

    No decoder-norm weighting: every architecture here keeps decoder rows at
    unit norm, so ``|codes_f| · ‖W_dec[f]‖ = |codes_f|``.
    """
    return codes.abs().sum(-1).mean()


def l0(codes: torch.Tensor) -> torch.Tensor:
    """Mean number of non-zero codes per token (a metric, not differentiable)."""
    return (codes != 0).to(codes.dtype).sum(-1).mean()


def resolve_k_aux(k_aux: int | None, d_in: int) -> int:
    """AuxK width: ``k_aux`` if given, else ``d_in // 2`` (dictionary_learning's default; Gao et al. 2024 used a fixed 512)."""
    return k_aux if k_aux is not None else max(1, d_in // 2)


def auxk_loss(
    x: torch.Tensor,
    recon: torch.Tensor,
    pre: torch.Tensor,
    dead_mask_F: torch.Tensor,
    W_dec_FD: torch.Tensor,
    k_aux: int,
    eps: float = 1e-8,
) -> torch.Tensor:
    """AuxK loss (Gao et al. 2024) that lets dead latents explain the residual.

    With ``e = x - recon`` (detached: the auxiliary loss must train the dead
    latents, not pull the live reconstruction), ``ê = TopK_{k_aux}(pre | dead) @ W_dec``
    (the ``k_aux`` largest pre-activations among dead latents, no ReLU and no
    decoder bias, so even latents with negative pre-activation get a gradient)::

        L_aux = mean_n ‖e_n - ê_n‖² / max(mean_n ‖e_n - ē‖², eps)

    The denominator (residual variance, as in dictionary_learning) makes the
    loss scale-free, so one coefficient works for any activation scale. The
    loss is exactly 0 when no latent is dead. Written without host syncs
    (no ``.item()``), so it is cheap on a GPU.
    """
    d_sae = pre.shape[-1]
    k_aux = max(1, min(k_aux, d_sae))
    pre_NF = pre.reshape(-1, d_sae)
    e_ND = (x - recon).detach().reshape(-1, x.shape[-1])
    masked = torch.where(dead_mask_F, pre_NF, torch.full_like(pre_NF, -torch.inf))
    values, indices = torch.topk(masked, k_aux, dim=-1, sorted=False)
    # When fewer than k_aux latents are dead, the surplus picks are -inf: drop them.
    values = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
    aux_codes_NF = torch.zeros_like(pre_NF).scatter(-1, indices, values)
    e_hat_ND = aux_codes_NF @ W_dec_FD
    numerator = (e_ND - e_hat_ND).pow(2).sum(-1).mean()
    denominator = (e_ND - e_ND.mean(0, keepdim=True)).pow(2).sum(-1).mean().clamp_min(eps)
    return (numerator / denominator) * dead_mask_F.any().to(numerator.dtype)


def adjacent_cosine(codes_BTF: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Feature-separation loss: mean cosine similarity of codes at adjacent time steps.

    ::

        cos(u, v) = <u, v> / max(‖u‖·‖v‖, eps)
        L_sep     = 1 / (B·(T-1)) · Σ_b Σ_{t=0}^{T-2} cos(codes[b, t], codes[b, t+1])

    A zero code vector has cosine 0 with everything (and a finite gradient).
    ``T = 1`` (including ``[N, d]`` input, seen as N length-1 sequences) has no
    adjacent pair and returns 0. Codes are non-negative, so ``L_sep ∈ [0, 1]``;
    minimising it pushes consecutive tokens onto different features.
    """
    if codes_BTF.dim() != 3 or codes_BTF.shape[1] < 2:
        return codes_BTF.new_zeros(())
    u = codes_BTF[:, :-1]
    v = codes_BTF[:, 1:]
    dot = (u * v).sum(-1)
    norms = torch.linalg.vector_norm(u, dim=-1) * torch.linalg.vector_norm(v, dim=-1)
    return (dot / norms.clamp_min(eps)).mean()


def adjacent_change(codes_BTF: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Persistence loss: how much the codes change between adjacent time steps, relative to their size.

    ::

        L_persist = Σ_{b,t} ‖c[b,t+1] - c[b,t]‖² / max(Σ_{b,t} ‖c[b,t]‖² + ‖c[b,t+1]‖², eps)

    Codes are non-negative, so ``‖u - v‖² ≤ ‖u‖² + ‖v‖²`` and ``L_persist ∈ [0, 1]``:
    0 when every code holds its value from one step to the next, 1 when adjacent
    steps share no active feature. Minimising it favours features that persist
    (slow-feature analysis), the opposite of :func:`adjacent_cosine`. A ratio of
    sums, not a mean of ratios, so near-silent tokens do not dominate; it is
    invariant to the codes' overall scale. ``T = 1`` returns 0.
    """
    if codes_BTF.dim() != 3 or codes_BTF.shape[1] < 2:
        return codes_BTF.new_zeros(())
    u = codes_BTF[:, :-1]
    v = codes_BTF[:, 1:]
    change = (v - u).pow(2).sum()
    size = u.pow(2).sum() + v.pow(2).sum()
    return change / size.clamp_min(eps)


def input_variance(x: torch.Tensor) -> torch.Tensor:
    """``mean_tokens ‖x - x̄‖²`` (detached): the MSE of reconstructing every token by the batch mean.

    A scale-free loss term multiplied by it is in the MSE's units, so its
    coefficient reads as "a term of 1 costs as much as this fraction of the
    variance left unexplained".
    """
    x_ND = x.detach().reshape(-1, x.shape[-1])
    return (x_ND - x_ND.mean(0, keepdim=True)).pow(2).sum(-1).mean()
