"""`mtsae synth`: a ground-truth multi-scale temporal benchmark, written as an ordinary cache.

Sequences are sums of known sparse features::

    x[t] = sum_i  on_i(t) * m_i(t) * f_i  +  sigma * noise[t]

- ``f_i`` are random unit directions in ``d_model`` (more features than
  dimensions: superposition, as in a real residual stream);
- ``on_i(t)`` is a two-state Markov chain per feature whose mean "on" dwell
  time ``tau_i`` spans fast (1-2 tokens) to slow (>= 50 tokens), log-uniformly,
  with stationary firing probability ``p_i``;
- ``m_i(t)`` is a magnitude drawn once per "on" episode (|N(1, 0.25)|, kept
  away from 0), so a slow feature is a long, steady run; features whose mean
  dwell is at least ``slow_from`` tokens have it multiplied by ``slow_scale``
  (default 1: every feature equally visible from one token, per-token SNR ≈ 3.5
  at the defaults; 0.35 makes slow features weak per token, SNR ≈ 1.4, while
  an average over their run still sees them — the "weak-slow" regime);
- ``noise`` is isotropic Gaussian.

The store is a version-1 cache (one "layer" 0, float32, no special tokens)
that train and analysis read like any harvest, plus a ``ground_truth`` group
holding the features, their dwell times and firing probabilities.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mtsae.cache import format as fmt
from mtsae.errors import MtsaeError

GROUND_TRUTH = "ground_truth"
SYNTH_LAYER = 0


def _doc(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class SynthConfig:
    d_model: int = _doc("Width of the synthetic residual stream.", default=64)
    n_features: int = _doc("Number of true features (more than d_model: superposition).", default=256)
    n_sequences: int = _doc("Number of sequences.", default=800)
    seq_len: int = _doc("Tokens per sequence.", default=256)
    min_dwell: float = _doc("Shortest mean 'on' dwell time in tokens (fast features).", default=1.0)
    max_dwell: float = _doc("Longest mean 'on' dwell time in tokens (slow features).", default=100.0)
    p_active: float = _doc("Stationary probability that a feature is on at a token.", default=0.02)
    noise: float = _doc("Standard deviation of the isotropic noise per dimension.", default=0.05)
    slow_scale: float = _doc("Magnitude multiplier of slow features (mean dwell >= slow_from); < 1 makes them weak "
                             "per token (0.35: per-token SNR ≈ 1.4 at the defaults).", default=1.0)
    slow_from: float = _doc("Mean dwell (tokens) from which a feature counts as slow for slow_scale.", default=32.0)
    seed: int = _doc("Seed: the same seed gives the same bytes.", default=0)
    chunk_tokens: int = _doc("Tokens per Zarr chunk.", default=4096)

    def validate(self) -> None:
        checks = [
            (self.d_model >= 1 and self.n_features >= 1, "--d-model and --n-features must be positive"),
            (self.n_sequences >= 1 and self.seq_len >= 2, "--n-sequences must be >= 1 and --seq-len >= 2"),
            (1.0 <= self.min_dwell <= self.max_dwell < math.inf, "need 1 <= --min-dwell <= --max-dwell (finite)"),
            (0.0 < self.p_active < 0.5, "--p-active must be in (0, 0.5)"),
            (0 <= self.noise < math.inf, "--noise must be a finite number >= 0"),
            (0 < self.slow_scale < math.inf, "--slow-scale must be a positive finite number"),
            (1.0 <= self.slow_from < math.inf, "--slow-from must be a finite number >= 1"),
            (self.seed >= 0, f"--seed must be a non-negative integer, got {self.seed}"),
            (self.chunk_tokens >= 1, "--chunk-tokens must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise MtsaeError(message)


@dataclass(frozen=True)
class GroundTruth:
    features: np.ndarray  # [n_features, d_model] unit rows
    dwell: np.ndarray  # [n_features] mean on-dwell in tokens
    p_active: np.ndarray  # [n_features]
    scale: np.ndarray | None = None  # [n_features] magnitude multiplier (None: all 1)


def make_ground_truth(cfg: SynthConfig, rng: np.random.Generator) -> GroundTruth:
    features = rng.standard_normal((cfg.n_features, cfg.d_model))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    dwell = np.exp(np.linspace(np.log(cfg.min_dwell), np.log(cfg.max_dwell), cfg.n_features))
    dwell = rng.permutation(dwell)  # time scale independent of feature index
    scale = np.where(dwell >= cfg.slow_from, cfg.slow_scale, 1.0)
    return GroundTruth(features.astype(np.float32), dwell.astype(np.float32),
                       np.full(cfg.n_features, cfg.p_active, dtype=np.float32), scale.astype(np.float32))


def sample_codes(truth: GroundTruth, n_seq: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """True feature activations ``[n_seq, seq_len, n_features]`` from the per-feature Markov chains."""
    leave = 1.0 / truth.dwell  # P(on -> off)
    enter = truth.p_active * leave / (1.0 - truth.p_active)  # P(off -> on), stationary at p_active
    n_features = len(truth.dwell)
    codes = np.zeros((n_seq, seq_len, n_features), dtype=np.float32)
    on = rng.random((n_seq, n_features)) < truth.p_active
    magnitude = _magnitudes(rng, (n_seq, n_features))
    scale = np.ones(n_features, np.float32) if truth.scale is None else truth.scale
    for t in range(seq_len):
        codes[:, t] = on * magnitude * scale
        u = rng.random((n_seq, n_features))
        switch_on = ~on & (u < enter)
        magnitude = np.where(switch_on, _magnitudes(rng, (n_seq, n_features)), magnitude)
        on = np.where(on, u >= leave, switch_on)
    return codes


def _magnitudes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.clip(np.abs(rng.normal(1.0, 0.25, shape)), 0.25, None).astype(np.float32)


def synthesize(cfg: SynthConfig, out: str, *, block_sequences: int = 64, progress=None) -> dict[str, Any]:
    """Write the synthetic cache to ``out`` (a fresh path) and return its manifest."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    truth = make_ground_truth(cfg, rng)
    content = {"synthetic": asdict(cfg) | {"chunk_tokens": None}, "hook_names": [fmt.hook_name(SYNTH_LAYER)]}
    header = {
        "fingerprint": fmt.fingerprint(content),
        "content": content,
        "description": "Synthetic multi-scale temporal features (mtsae synth); ground truth in the ground_truth group.",
        "model": {"id": "synthetic", "revision": None},
        "dataset": {"id": f"synthetic:seed{cfg.seed}", "split": "train", "text_column": None},
        "hook_names": [fmt.hook_name(SYNTH_LAYER)],
        "context_len": cfg.seq_len,
        "dtype": "float32",
        "d_model": cfg.d_model,
        "config": asdict(cfg),
    }
    n_tokens = cfg.n_sequences * cfg.seq_len
    from mtsae.cache.writer import CacheWriter  # zarr: only when writing, not for the CLI's help

    writer = CacheWriter.create(out, layers=[SYNTH_LAYER], d_model=cfg.d_model, dtype_name="float32",
                                capacity_tokens=n_tokens, chunk_tokens=cfg.chunk_tokens, header=header)
    try:
        for first in range(0, cfg.n_sequences, block_sequences):
            n_seq = min(block_sequences, cfg.n_sequences - first)
            codes = sample_codes(truth, n_seq, cfg.seq_len, rng)
            x = codes @ truth.features + cfg.noise * rng.standard_normal((n_seq, cfg.seq_len, cfg.d_model))
            for b in range(n_seq):
                tokens = np.zeros(cfg.seq_len, dtype=np.int32)  # no vocabulary: every row is a plain position
                writer.add_sequence(first + b, tokens, np.zeros(cfg.seq_len, bool), {SYNTH_LAYER: x[b].astype(np.float32)})
            if progress is not None:
                progress(n_seq * cfg.seq_len)
        truth_group = writer.root.create_group(GROUND_TRUTH)
        truth_group.create_array("features", data=truth.features, compressors=None)
        truth_group.create_array("dwell_tokens", data=truth.dwell, compressors=None)
        truth_group.create_array("p_active", data=truth.p_active, compressors=None)
        truth_group.create_array("scale", data=truth.scale, compressors=None)
        return writer.finish({"counts": {"tokens": n_tokens, "sequences": cfg.n_sequences, "documents": cfg.n_sequences},
                              "special_tokens": {"special_ids": []}})
    except BaseException:
        writer.abort()
        raise


def load_ground_truth(path: str) -> GroundTruth:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    if GROUND_TRUTH not in group:
        raise MtsaeError(f"cache {path} has no ground truth (it was not written by `mtsae synth`)")
    g = group[GROUND_TRUTH]
    scale = g["scale"][:] if "scale" in g else None  # stores written before slow_scale existed
    return GroundTruth(g["features"][:], g["dwell_tokens"][:], g["p_active"][:], scale)
