"""Feature disentanglement statistics of a trained SAE (`mtsae analyze`).

- Temporal: per-feature activation autocorrelation over lags on held-out
  windows, and a time scale per feature: the lag at which it first falls below
  1/e (linearly interpolated; capped at the largest lag measured).
- Decoder geometry: max and mean off-diagonal cosine similarity of decoder
  rows, and near-duplicate pairs (cosine >= 0.95).
- The adjacent-step separation statistic the MTSAE loss targets:
  mean over windows and t of cos(codes[t], codes[t+1]), for every architecture.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

INV_E = 1.0 / math.e


def autocorrelation(codes_BTF: np.ndarray, max_lag: int) -> np.ndarray:
    """[max_lag + 1, F]: autocorrelation of each feature's activation, pooled over windows; NaN for constant features."""
    x = np.asarray(codes_BTF, dtype=np.float64)
    x = x - x.mean(axis=(0, 1), keepdims=True)
    var = (x * x).mean(axis=(0, 1))
    lags = min(max_lag, x.shape[1] - 1)
    acf = np.stack([(x[:, : x.shape[1] - k] * x[:, k:]).mean(axis=(0, 1)) for k in range(lags + 1)])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, acf / var, np.nan)


def time_scales(acf_LF: np.ndarray) -> np.ndarray:
    """[F]: first lag where the autocorrelation drops below 1/e (interpolated); NaN for dead features."""
    lags = acf_LF.shape[0] - 1
    out = np.full(acf_LF.shape[1], np.nan)
    for f in range(acf_LF.shape[1]):
        a = acf_LF[:, f]
        if np.isnan(a[0]):
            continue
        below = np.flatnonzero(a < INV_E)
        if len(below) == 0:
            out[f] = float(lags)  # slower than we can see: report the cap
            continue
        k = below[0]
        out[f] = k - 1 + (a[k - 1] - INV_E) / (a[k - 1] - a[k])  # a[0] == 1 > 1/e, so k >= 1
    return out


def adjacent_separation(codes_BTF: torch.Tensor, eps: float = 1e-8) -> float:
    """Mean cosine similarity of the code vectors at t and t+1 (the quantity the MTSAE loss penalises)."""
    a, b = codes_BTF[:, :-1], codes_BTF[:, 1:]
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)
    return float(cos.mean())


def decoder_geometry(W_dec_FD: torch.Tensor, duplicate_threshold: float = 0.95, block: int = 4096) -> dict[str, Any]:
    """Off-diagonal cosine statistics of decoder rows, computed in blocks (d_sae² may not fit at once)."""
    W = torch.nn.functional.normalize(W_dec_FD.detach().float(), dim=1)
    n = W.shape[0]
    max_cos, total, duplicates = -1.0, 0.0, 0
    for start in range(0, n, block):
        sims = W[start : start + block] @ W.T
        rows = torch.arange(start, min(start + block, n))
        sims[rows - start, rows] = float("nan")  # the diagonal
        valid = sims[~torch.isnan(sims)]
        max_cos = max(max_cos, float(valid.max())) if len(valid) else max_cos
        total += float(valid.sum())
        duplicates += int((valid >= duplicate_threshold).sum())
    pairs = n * (n - 1)
    return {
        "max_cosine": max_cos,
        "mean_cosine": total / pairs if pairs else float("nan"),
        "near_duplicate_pairs": duplicates // 2,
        "duplicate_threshold": duplicate_threshold,
    }


def summarize_time_scales(scales: np.ndarray, max_lag: int | None = None, window: int | None = None) -> dict[str, Any]:
    """Percentiles and histogram of the live features' time scales, and how many sit at the measurable limit.

    A feature still above 1/e at the largest lag measured gets that lag (``time_scales``): its time scale is
    *at least* the limit, which is ``max_lag`` or ``window - 1``, whichever is smaller (``limited_by`` says which).
    """
    alive = scales[~np.isnan(scales)]
    if len(alive) == 0:
        return {"alive_features": 0}
    q = np.percentile(alive, [10, 50, 90])
    limits = {}
    candidates = [(name, v) for name, v in (("max_lag", max_lag), ("window", window and window - 1)) if v is not None]
    if candidates:
        limited_by, limit = min(candidates, key=lambda item: item[1])  # max_lag on a tie
        limits = {"limit": limit, "limited_by": limited_by, "at_limit_fraction": float(np.mean(alive >= limit))}
    return {
        "alive_features": int(len(alive)),
        **limits,
        "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2]),
        "histogram": np.histogram(alive, bins=[0, 1, 2, 4, 8, 16, 32, 64, 128, np.inf])[0].tolist(),
        "histogram_edges": [0, 1, 2, 4, 8, 16, 32, 64, 128, "inf"],
    }


def analyze_run(run_dir: str, *, cache_path: str | None = None, max_windows: int = 256, max_lag: int = 32,
                batch_windows: int = 16) -> dict[str, Any]:
    """Every statistic above for a finished run, on held-out windows of its own cache and split."""
    import sys

    from mtsae.cache.shared import local_cache
    from mtsae.errors import MtsaeError
    from mtsae.train.checkpoint import load_checkpoint
    from mtsae.train.config import Windowing
    from mtsae.train.loader import WindowDataset
    from mtsae.train.rundir import RUN_FILENAME, RunDir

    run = RunDir(run_dir)
    if not run.is_finished:
        raise MtsaeError(f"{run.path} has no final checkpoint; train it to the end first")
    sae, metadata = load_checkpoint(run.final)
    info = run.read_info()
    if info is None:
        raise MtsaeError(f"{run.path} is not a training run (no valid {RUN_FILENAME}); "
                         "pass a directory written by `mtsae train`")
    cfg = info["config"]
    # A URL: a verified local copy, pulled once (stdout carries the JSON, so the pull talks on stderr).
    cache_path = local_cache(cache_path or cfg["cache"], log=lambda line: print(line, file=sys.stderr))
    windowing = Windowing(cfg["window"], cfg.get("stride"), cfg["holdout_fraction"], cfg["seed"])
    heldout = WindowDataset(cache_path, cfg["layer"], windowing, "heldout")
    if len(heldout) == 0:
        raise MtsaeError(f"the held-out split of {cache_path} has no window of {cfg['window']} tokens")
    if heldout.d_model != sae.cfg.d_in:
        raise MtsaeError(f"the checkpoint of {run.path} reads {sae.cfg.d_in}-wide activations, but layer {cfg['layer']} of "
                         f"{cache_path} is {heldout.d_model} wide; pass the cache it was trained on (--cache)")
    indices = np.arange(min(max_windows, len(heldout)))
    sae.eval()
    codes = []
    with torch.no_grad():
        for start in range(0, len(indices), batch_windows):
            x, _ = heldout.assemble(indices[start : start + batch_windows])
            codes.append(sae.encode(x).float())
    codes_BTF = torch.cat(codes)
    acf = autocorrelation(codes_BTF.numpy(), max_lag)
    scales = time_scales(acf)
    result = {
        "run": run.path.name,
        "architecture": metadata.get("architecture"),
        "heldout_windows": int(len(indices)),
        "window": cfg["window"],
        "adjacent_separation": adjacent_separation(codes_BTF),
        "time_scales": summarize_time_scales(scales, max_lag, cfg["window"]),
        "mean_autocorrelation": [float(v) for v in np.nanmean(acf, axis=1)] if not np.isnan(acf).all() else [],
        "decoder": decoder_geometry(sae.W_dec),
        "l0": float((codes_BTF > 0).float().sum(-1).mean()),
    }
    result["ground_truth"] = _ground_truth(cache_path, sae)
    return result


def _ground_truth(cache_path: str, sae) -> dict[str, Any] | None:
    import zarr

    from mtsae.evaluate.ground_truth import recovery_metrics
    from mtsae.harvest.synth import GROUND_TRUTH, load_ground_truth

    if GROUND_TRUTH not in zarr.open_group(str(cache_path), mode="r"):
        return None
    truth = load_ground_truth(cache_path)
    return recovery_metrics(sae.W_dec.detach().float().numpy(), truth.features, truth.dwell)
