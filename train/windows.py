"""Training windows over a cache: pure index math on ``seq_offsets``, no I/O.

Its arguments are checked once, above it: a :class:`mtsae.train.config.Windowing`
(window >= 1, stride >= 1, 0 < holdout fraction < 1) is valid by construction,
and nothing here checks them again.

A *window* is ``T`` contiguous cache rows ``[start, start + T)`` lying entirely
inside one sequence (hence inside one document: a harvested sequence never
mixes documents). Windows never cross a sequence boundary; in a sequence of
``L`` rows starting at row ``o`` the eligible starts for stride ``S`` are::

    o, o + S, o + 2S, …   while start + T <= o + L

so a sequence shorter than ``T`` contributes no window and the tail of a
sequence that does not fill a last window is skipped (with ``S = T``, the
default, windows tile each sequence without overlap).

Held-out split: **by sequence**. ``split_sequences`` draws a seeded,
deterministic ``round(fraction · n_sequences)`` sequences (at least one when the
fraction is positive, never all of them) for evaluation; the rest are for
training. The split depends only on ``(n_sequences, fraction, seed)``, not on
the window length, so runs with different ``T`` hold out the same sequences.

Epoch order: ``epoch_order(n, seed, epoch)`` is a permutation of the windows
that depends only on ``(n, seed, epoch)``: every epoch visits each window
exactly once, and a resumed run replays the same order.

Special-token policy: a window may include its sequence's BOS row (the first
window of every sequence starts with it). Rows flagged in the cache's
``special_mask`` (BOS, EOS, PAD, …) are **zeroed** before the SAE sees them
(:mod:`mtsae.train.loader` does it). That is exactly what SAE-Bench does in
sparse probing (``mask_bos_pad_eos_tokens=True`` zeroes BOS/PAD/EOS positions
before ``encode``), so training and evaluation inputs match, and the windows
keep their length and time alignment (a temporal SAE sees a zero vector at
the BOS step instead of the BOS's outlier activation).
"""

from __future__ import annotations

import numpy as np

_ORDER_STREAM = 1
_SPLIT_STREAM = 2
_SAMPLE_STREAM = 3


def windows_per_sequence(seq_offsets: np.ndarray, window: int, stride: int) -> np.ndarray:
    """``[n_seq]`` int64: how many windows each sequence holds."""
    lengths = np.diff(np.asarray(seq_offsets, dtype=np.int64))
    return np.where(lengths >= window, (lengths - window) // stride + 1, 0).astype(np.int64)


def too_short(seq_offsets: np.ndarray, window: int, sequences: np.ndarray | None = None) -> tuple[int, int]:
    """``(sequences, tokens)`` of the sequences shorter than ``window``: they hold no window, so no
    training step ever sees them. ``sequences`` restricts the count to those sequence indices."""
    lengths = np.diff(np.asarray(seq_offsets, dtype=np.int64))
    if sequences is not None:
        lengths = lengths[np.asarray(sequences, dtype=np.int64)]
    short = lengths < window
    return int(short.sum()), int(lengths[short].sum())


def window_starts(
    seq_offsets: np.ndarray,
    window: int,
    stride: int,
    sequences: np.ndarray | None = None,
) -> np.ndarray:
    """Start rows of every window of ``window`` rows inside one sequence, in row order.

    ``sequences`` (sorted sequence indices) restricts the windows to those
    sequences; default all. Returns int64 ``[n_windows]``.
    """
    offsets = np.asarray(seq_offsets, dtype=np.int64)
    counts = windows_per_sequence(offsets, window, stride)
    firsts = offsets[:-1]
    if sequences is not None:
        sequences = np.asarray(sequences, dtype=np.int64)
        counts, firsts = counts[sequences], firsts[sequences]
    total = int(counts.sum())
    # Position of each window within its sequence: 0, 1, …, count-1.
    begin = np.repeat(np.cumsum(counts) - counts, counts)
    rank = np.arange(total, dtype=np.int64) - begin
    return np.repeat(firsts, counts) + rank * stride


def window_sequences(seq_offsets: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Index of the sequence holding each window start (``searchsorted`` on the offsets)."""
    return np.searchsorted(np.asarray(seq_offsets, dtype=np.int64), starts, side="right") - 1


def split_sequences(n_sequences: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, heldout)`` sorted sequence indices; disjoint, together ``0..n_sequences-1``.

    ``round(holdout_fraction · n)`` sequences are held out, at least one when
    the fraction is positive and at most ``n - 1``; the choice is a seeded
    permutation, deterministic in ``(n_sequences, holdout_fraction, seed)``.
    ``0 <= holdout_fraction < 1``.
    """
    n = int(n_sequences)
    n_held = int(round(holdout_fraction * n))
    if holdout_fraction > 0:
        n_held = max(n_held, 1)
    n_held = min(n_held, max(n - 1, 0))
    perm = _rng(seed, _SPLIT_STREAM).permutation(n)
    return np.sort(perm[n_held:]).astype(np.int64), np.sort(perm[:n_held]).astype(np.int64)


def epoch_order(n_windows: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order in which epoch ``epoch`` visits windows ``0..n_windows-1`` (a permutation).

    Deterministic in ``(n_windows, seed, epoch)``; ``shuffle=False`` gives ``arange``.
    """
    if not shuffle:
        return np.arange(n_windows, dtype=np.int64)
    return _rng(seed, _ORDER_STREAM, epoch).permutation(n_windows).astype(np.int64)


def sample_windows(n_windows: int, count: int, seed: int) -> np.ndarray:
    """``min(count, n_windows)`` distinct window indices, seeded, sorted (e.g. to estimate statistics)."""
    count = min(int(count), int(n_windows))
    return np.sort(_rng(seed, _SAMPLE_STREAM).choice(n_windows, size=count, replace=False)).astype(np.int64)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """A generator for one purpose: independent streams per (seed, purpose, epoch)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *stream]))
