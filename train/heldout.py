"""Held-out metrics of an SAE: a pure function of the SAE and the batches it is shown.

Special (zeroed) rows are excluded. ``mse`` is in the units of the inputs
(the trainer passes normalised ones); ``fve`` = 1 − Σ‖x − x̂‖² / Σ‖x − mean‖²;
``l0`` active features per token; ``dead_fraction`` from the SAE's training
tracker; ``silent_fraction`` features that never fire on these windows; ``sep``
the mean cosine of the codes of adjacent tokens (t, t+1) within windows;
``tokens`` how many tokens were measured.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable

import torch

from mtsae.errors import MtsaeError
from mtsae.train.base import SparseAutoencoder


class _Sums:
    """Running float64 sums over the measured (non-special) tokens."""

    def __init__(self, d_in: int, d_sae: int, device: torch.device) -> None:
        self.sse = self.sum_sq = self.l0 = self.sep = 0.0
        self.n = self.n_pairs = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.fired = torch.zeros(d_sae, dtype=torch.bool, device=device)

    def add(self, x: torch.Tensor, codes: torch.Tensor, recon: torch.Tensor, keep: torch.Tensor) -> None:
        """One batch: ``x``/``recon`` ``[B, T, d]``, ``codes`` ``[B, T, d_sae]``, ``keep`` ``[B, T]``."""
        xs, active = x[keep].double(), codes[keep] != 0
        self.sse += float((recon[keep].double() - xs).pow(2).sum())
        self.sum_x += xs.sum(0)
        self.sum_sq += float(xs.pow(2).sum())
        self.l0 += float(active.sum())
        self.fired |= active.any(0)
        self.n += xs.shape[0]
        pair = keep[:, :-1] & keep[:, 1:]
        if x.shape[1] > 1 and bool(pair.any()):
            u, v = codes[:, :-1][pair], codes[:, 1:][pair]
            cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp_min(1e-8)
            self.sep += float(cos.double().sum())
            self.n_pairs += int(pair.sum())

    def metrics(self, dead_fraction: float) -> dict[str, float]:
        n = self.n
        if n == 0:
            raise MtsaeError("the held-out windows hold only special tokens; raise --holdout-fraction")
        total_var = self.sum_sq - float(self.sum_x.pow(2).sum()) / n
        return {
            "mse": self.sse / n,
            "fve": 1.0 - self.sse / total_var if total_var > 0 else float("nan"),
            "l0": self.l0 / n,
            "dead_fraction": dead_fraction,
            "silent_fraction": 1.0 - float(self.fired.float().mean()),
            "sep": self.sep / self.n_pairs if self.n_pairs else 0.0,
            "tokens": n,
        }


@torch.no_grad()
def heldout_metrics(sae: SparseAutoencoder, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                    scale: float | None = None,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                    ) -> dict[str, float]:
    """The metrics above for ``sae`` (used as it is: the caller sets eval mode) on ``(x, special)`` batches
    of raw ``[B, T, d]`` activations with ``[B, T]`` special-row flags; ``x`` is multiplied by ``scale``."""
    d = sae.cfg.d_in
    sums = _Sums(d, sae.cfg.d_sae, sae.W_dec.device)
    for x, special in batches:
        B, T, _ = x.shape
        x = x * scale if scale not in (None, 1.0) else x
        with autocast():
            codes = sae.encode(x if sae.is_temporal else x.reshape(-1, d))
            recon = sae.decode(codes)
        sums.add(x, codes.float().reshape(B, T, -1), recon.float().reshape(B, T, d), ~special)
    return sums.metrics(float(sae.dead_mask().float().mean()))


def check_finite(metrics: dict[str, float]) -> None:
    """Refuse to publish a run whose held-out metrics are NaN or infinite."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise MtsaeError(f"held-out metrics are not finite after training ({bad}); lower --lr or set --grad-clip")
