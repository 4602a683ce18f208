"""Recovery of known features (from `mtsae synth`) by a trained SAE's decoder.

- MMCS (mean max cosine similarity): for each true feature, the best |cos| with
  any decoder row, averaged over true features.
- Recovered fraction: true features whose best cosine is >= ``threshold`` (0.9).
Both are reported overall and per time-scale bucket of the features' dwell times.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# (name, lower bound inclusive, upper bound exclusive) on the mean "on" dwell time in tokens
TIME_SCALE_BUCKETS = (("fast (<=2 tokens)", 0.0, 2.0 + 1e-6), ("medium (2-50)", 2.0 + 1e-6, 50.0), ("slow (>=50)", 50.0, np.inf))


def best_cosines(decoder_FD: np.ndarray, features_GD: np.ndarray) -> np.ndarray:
    """[G]: for each true feature, the highest cosine with any decoder row (sign kept: SAEs are non-negative)."""
    dec = decoder_FD / np.linalg.norm(decoder_FD, axis=1, keepdims=True).clip(1e-12)
    true = features_GD / np.linalg.norm(features_GD, axis=1, keepdims=True).clip(1e-12)
    return (true @ dec.T).max(axis=1)


def recovery_metrics(decoder_FD: np.ndarray, features_GD: np.ndarray, dwell_G: np.ndarray,
                     threshold: float = 0.9) -> dict[str, Any]:
    best = best_cosines(np.asarray(decoder_FD, np.float64), np.asarray(features_GD, np.float64))
    result: dict[str, Any] = {
        "mmcs": float(best.mean()),
        "recovered_fraction": float((best >= threshold).mean()),
        "threshold": threshold,
        "n_true_features": int(len(best)),
        "by_time_scale": {},
    }
    for name, lo, hi in TIME_SCALE_BUCKETS:
        in_bucket = (dwell_G >= lo) & (dwell_G < hi)
        if in_bucket.any():
            result["by_time_scale"][name] = {
                "n": int(in_bucket.sum()),
                "mmcs": float(best[in_bucket].mean()),
                "recovered_fraction": float((best[in_bucket] >= threshold).mean()),
            }
    return result
