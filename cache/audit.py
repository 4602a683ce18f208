"""`mtsae cache audit`: re-run the recorded model on stored sequences and compare with the stored rows.

Digests (cache/digests.py) prove that the bytes are the ones the writer
recorded; anyone who can write the store can recompute them. The audit is the
check that ties the bytes to the recipe: it loads the model the manifest names
(refusing one whose weights hash differently), runs it on N randomly chosen
stored sequences -- their tokens read from the cache -- and compares every
layer's activations with the stored rows. A sequence runs alone (no padding),
while the harvest ran it in a padded batch, possibly on another device: the
results agree up to floating-point order, which the per-dtype tolerance
absorbs. The measure is, per row, ``‖fresh − stored‖ / ‖stored‖``; the worst
row of each layer must stay within the tolerance.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from mtsae.cache import format as fmt
from mtsae.cache.reader import ActivationCache, as_torch, open_cache
from mtsae.errors import MtsaeError

TOLERANCES = {"float32": 1e-3, "float16": 3e-2, "bfloat16": 1e-1}
"""Worst per-row relative L2 error accepted, by stored dtype (docs/cache-format.md tells how they were chosen)."""
DEFAULT_SEQUENCES = 4


@dataclass
class AuditResult:
    path: str
    seed: int
    sequences: list[int]
    tokens: int
    dtype: str
    tolerance: float
    worst: dict[int, float] = field(default_factory=dict)  # layer -> worst row's relative error
    worst_sequence: dict[int, int] = field(default_factory=dict)  # layer -> the sequence it was in
    seconds: float = 0.0  # forward passes and comparisons, model load excluded

    @property
    def ok(self) -> bool:
        return all(error <= self.tolerance for error in self.worst.values())

    def summary(self) -> str:
        worst_layer = max(self.worst, key=self.worst.get)
        return (f"{len(self.sequences)} sequence(s), {self.tokens:,} tokens (seed {self.seed}); worst relative error "
                f"{self.worst[worst_layer]:.3g} at layer {worst_layer}, sequence {self.worst_sequence[worst_layer]} "
                f"({self.dtype} tolerance {self.tolerance:g}); {self.seconds / max(1, len(self.sequences)):.2f} s per sequence")


def audit_cache(path: str | os.PathLike, sequences: int = DEFAULT_SEQUENCES, *, seed: int | None = None,
                device: str = "auto", log: Callable[[str], None] = print) -> AuditResult:
    """Audit ``sequences`` random stored sequences of the cache at ``path`` (a path or URL)."""
    from mtsae.devices import resolve_device
    from mtsae.harvest.capture import ResidualCapture
    from mtsae.harvest.sources import load_truncated_model

    if sequences < 1:
        raise MtsaeError(f"--sequences must be at least 1, got {sequences}")
    if seed is not None and not 0 <= seed < 2**63:
        raise MtsaeError(f"--seed must be between 0 and 2**63 - 1, got {seed}")
    cache = open_cache(path)
    dtype = cache.manifest.get("dtype")
    if dtype not in TOLERANCES:
        raise MtsaeError(f"cache {path} records dtype {dtype!r}; an audit knows {', '.join(TOLERANCES)}")
    source = recorded_model(cache)
    seed = secrets.randbits(31) if seed is None else seed  # unpredictable unless asked: a forger cannot aim
    chosen = choose_sequences(cache.n_sequences, sequences, seed)
    result = AuditResult(str(path), seed, chosen, 0, dtype, TOLERANCES[dtype])
    torch_device = resolve_device(device)
    attn = (cache.manifest.get("config") or {}).get("attn_implementation", "eager")
    log(f"auditing {len(chosen)} of {cache.n_sequences:,} sequences of {path} with {source.identity['id']} on {torch_device}")
    model = load_truncated_model(source, max(cache.layers), getattr(torch, dtype), torch_device, attn)
    capture = ResidualCapture(model, cache.layers)
    started = time.perf_counter()
    try:
        for index in chosen:
            _audit_sequence(cache, capture, index, torch_device, result)
    finally:
        capture.remove()
    result.seconds = time.perf_counter() - started
    return result


def recorded_model(cache: ActivationCache):
    """The model the manifest names, resolved here; refused unless its weights and tokenizer hash as recorded."""
    from mtsae.harvest.sources import resolve_model

    config = cache.manifest.get("config") or {}
    spec = config.get("model")
    if not isinstance(spec, str) or not spec:
        raise MtsaeError(f"cache {cache.path} records no model to re-run (a synthetic cache?); only harvested caches "
                         "can be audited")
    source = resolve_model(spec, config.get("model_revision"))
    if source.identity != cache.manifest.get("model"):
        raise MtsaeError(f"the model {spec!r} found here is not the one cache {cache.path} records (its identity "
                         "differs: other weights, tokenizer or revision); an audit needs the recorded model")
    return source


def choose_sequences(n_sequences: int, wanted: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_sequences, size=min(wanted, n_sequences), replace=False))


def _audit_sequence(cache: ActivationCache, capture, index: int, device: torch.device, result: AuditResult) -> None:
    start, stop = (int(v) for v in cache.seq_offsets[index : index + 2])
    ids = np.asarray(cache.group[fmt.TOKENS][start:stop], dtype=np.int64)
    ids_t = torch.from_numpy(ids)[None].to(device)
    fresh = capture(ids_t, torch.ones_like(ids_t))
    result.tokens += stop - start
    for layer in cache.layers:
        stored = as_torch(np.array(cache.rows(layer, start, stop)), result.dtype).float()
        error = worst_row_error(fresh[layer][0].detach().float().cpu(), stored)
        if error > result.worst.get(layer, -1.0):
            result.worst[layer], result.worst_sequence[layer] = error, index


def worst_row_error(fresh: torch.Tensor, stored: torch.Tensor) -> float:
    """max over rows of ``‖fresh − stored‖ / ‖stored‖`` (a zero stored row counts against its absolute error)."""
    if fresh.shape != stored.shape:
        return float("inf")
    difference = torch.linalg.vector_norm(fresh - stored, dim=-1)
    scale = torch.linalg.vector_norm(stored, dim=-1).clamp_min(1e-6)
    errors = difference / scale
    return float("inf") if not torch.isfinite(errors).all() else float(errors.max())


def audit_or_refuse(path: str, sequences: int, *, device: str = "auto", log: Callable[[str], None] = print,
                    seed: int | None = None, what: str = "") -> AuditResult:
    """`audit_cache`, with a failed audit raised as one line."""
    result = audit_cache(path, sequences, seed=seed, device=device, log=log)
    if not result.ok:
        raise MtsaeError(f"cache {path} fails the audit: its stored activations are not what the recorded model "
                         f"computes on its stored tokens ({result.summary()}){what}")
    return result

