"""Documents -> model sequences -> batches. Pure functions, no model, no I/O.

Policy (docs/cache-format.md): every sequence is one model context holding
tokens of exactly one document, prefixed by BOS as Gemma and SAE-Bench do. A
document longer than the context continues in the next sequence (again after
a BOS); short documents give short sequences: unrelated documents are never
packed together, so nothing downstream can mix them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np


@dataclass(frozen=True)
class Sequence:
    doc_row: int  # row of the source document in the dataset
    tokens: np.ndarray  # int32, starts with BOS
    special: np.ndarray  # bool, True where tokens[i] is a special token


def split_document(doc_tokens: np.ndarray, context_len: int, bos_id: int) -> list[np.ndarray]:
    """Cut one document's token ids into BOS-prefixed pieces of at most ``context_len`` tokens."""
    body = context_len - 1
    return [
        np.concatenate(([bos_id], doc_tokens[start : start + body])).astype(np.int32)
        for start in range(0, len(doc_tokens), body)
    ]


def iter_sequences(
    documents: Iterable[tuple[int, np.ndarray]],
    *,
    context_len: int,
    bos_id: int,
    special_ids: set[int],
    max_tokens: int,
) -> Iterator[Sequence]:
    """Sequences of ``documents`` (``(row, token_ids)`` pairs) until ``max_tokens`` tokens are reached.

    The budget is never exceeded: a sequence that would cross it is cut to fit,
    which is the only way a document ends early (the caller records it).
    Documents with no tokens are skipped.
    """
    special_lookup = np.array(sorted(special_ids), dtype=np.int64)
    remaining = max_tokens
    for row, doc_tokens in documents:
        for piece in split_document(np.asarray(doc_tokens, dtype=np.int32), context_len, bos_id):
            if remaining <= 1:  # a BOS alone carries no document token
                return
            piece = piece[:remaining]
            remaining -= len(piece)
            yield Sequence(row, piece, np.isin(piece, special_lookup))


def batched(sequences: Iterable[Sequence], batch_size: int) -> Iterator[list[Sequence]]:
    batch: list[Sequence] = []
    for seq in sequences:
        batch.append(seq)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def pad_batch(batch: list[Sequence], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ``input_ids`` and ``attention_mask`` [B, max_len]; right padding leaves real positions untouched."""
    width = max(len(s.tokens) for s in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for i, seq in enumerate(batch):
        ids[i, : len(seq.tokens)] = seq.tokens
        mask[i, : len(seq.tokens)] = 1
    return ids, mask


class DocumentLedger:
    """Tells, after the run, whether the dataset ran out and whether the budget cut the last stored document."""

    def __init__(self):
        self.lengths: dict[int, int] = {}  # recent documents only: row -> token count
        self.stored: dict[int, int] = {}
        self.last_row: int | None = None
        self.exhausted = False

    def track(self, documents: Iterable[tuple[int, list[int]]]) -> Iterator[tuple[int, list[int]]]:
        for row, ids in documents:
            # Rows increase; keep the last counted document and those read ahead of the counts (a batch
            # reads up to batch-size documents before any is counted, and the budget check reads one more).
            self.lengths = {r: n for r, n in self.lengths.items() if self.last_row is None or r >= self.last_row}
            self.lengths[row] = len(ids)
            yield row, ids
        self.exhausted = True

    def count(self, doc_row: int, body_tokens: int) -> None:
        if doc_row != self.last_row:
            self.stored = {}
            self.last_row = doc_row
        self.stored[doc_row] = self.stored.get(doc_row, 0) + body_tokens

    @property
    def last_truncated(self) -> bool:
        return self.last_row is not None and self.stored[self.last_row] < self.lengths[self.last_row]
