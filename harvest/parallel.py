"""`torchrun … -m mtsae harvest`: the ranks share one harvest, byte-identical to a one-process run.

**Plan.** Every rank tokenizes the input up to the budget without running the
model and gets the same sequences as a one-process harvest, hence the same row
offsets, document index and chunk boundaries. Batches stay the one-process
batches (batch i = sequences ``[i·B, (i+1)·B)``, padded to its own longest
sequence): a sequence's activations depend on the batch it is run in (padding
width, kernel shapes), so keeping the batches is what makes the bytes equal.

**Work.** The chunks ``[0, n_chunks)`` are cut into one contiguous range per
rank. A rank runs every batch whose rows touch its range (a batch straddling
two ranges is run by both neighbours, the only duplicated work) and writes only
the rows of its own chunks into the one store: chunk files are disjoint, so no
two processes ever write the same file. Each rank checksums (crc32 + sha256) what it wrote.

**Commit.** Rank 0 creates the store (status ``incomplete``, no progress mark)
before anyone writes. When every rank has flushed, it receives their
checksums, writes the index and then, last, the manifest with status
``complete`` exactly as the one-process writer does. If any rank dies first the
store stays incomplete without a progress mark, so every reader refuses it and
the next harvest of the same settings (any number of processes) starts it over.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mtsae.cache import CacheWriter
from mtsae.cache.writer import ChunkSums
from mtsae.devices import resolve_device
from mtsae.distributed import World
from mtsae.errors import MtsaeError
from mtsae.harvest import sources
from mtsae.harvest.capture import ResidualCapture, batch_activations
from mtsae.harvest.plan import HarvestPlan, SpecialTokens
from mtsae.harvest.sequences import DocumentLedger, batched
from mtsae.harvest.target import Action, prepare_target


@dataclass
class SequencePlan:
    """Where every sequence of the harvest lands: the same on every rank and in a one-process run."""

    doc_rows: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    exhausted: bool = False
    last_truncated: bool = False

    @property
    def seq_offsets(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.lengths, dtype=np.int64)))

    @property
    def n_tokens(self) -> int:
        return int(sum(self.lengths))

    def batch_row_starts(self, batch_size: int) -> np.ndarray:
        """First row of each batch, plus the end row: batch b covers rows ``[starts[b], starts[b+1])``."""
        offsets = self.seq_offsets
        return np.append(offsets[:-1:batch_size], offsets[-1])


@dataclass(frozen=True)
class RankShare:
    """One rank's part: chunks ``[first_chunk, end_chunk)``, i.e. rows ``[first_row, end_row)``, and the batches touching them."""

    first_chunk: int
    end_chunk: int
    first_row: int
    end_row: int
    first_batch: int
    end_batch: int


def share_of(rank: int, world_size: int, plan: SequencePlan, chunk_tokens: int, batch_size: int) -> RankShare:
    """Contiguous, balanced chunk ranges by rank; deterministic in (plan, world size, chunking, batch size)."""
    n_tokens = plan.n_tokens
    n_chunks = -(-n_tokens // chunk_tokens)
    first_chunk, end_chunk = rank * n_chunks // world_size, (rank + 1) * n_chunks // world_size
    first_row, end_row = first_chunk * chunk_tokens, min(end_chunk * chunk_tokens, n_tokens)
    starts = plan.batch_row_starts(batch_size)
    first_batch = int(np.searchsorted(starts, first_row, side="right")) - 1
    end_batch = int(np.searchsorted(starts, end_row, side="left"))
    return RankShare(first_chunk, end_chunk, first_row, end_row, first_batch, end_batch)


def harvest_in_parallel(plan: HarvestPlan, out: str, force: bool, world: World, log: Callable[[str], None],
                        progress: bool) -> tuple[str, dict[str, Any], bool]:
    """This rank's part of a parallel harvest; returns ``(out, attrs, skipped)`` on every rank."""
    cfg = plan.config
    world.check_same("the harvest settings and inputs (fingerprint, options, --out)",
                     [plan.fingerprint, cfg.batch_size, cfg.chunk_tokens, cfg.compression, out])
    target = None

    def decide() -> tuple[str, dict | None]:
        nonlocal target
        target = prepare_target(out, plan.fingerprint, force, log)
        if target.action is Action.RESUME:  # progress marks of a one-process run; ranks cannot share them
            log(f"{out} holds an unfinished one-process harvest; a parallel harvest starts it over")
            target = _restart(target)
        return target.action.value, target.attrs

    try:
        action, attrs = world.on_main(decide)
        if action == Action.SKIP.value:
            return out, attrs, True
        device = world.device(resolve_device(cfg.device))
        tokenizer = sources.load_tokenizer(plan.model_source)
        layout = plan_sequences(plan, tokenizer)
        world.check_same("the tokenized input (sequence plan)", [layout.doc_rows, layout.lengths])
        _check_enough_chunks(layout, cfg, world)
        share = share_of(world.rank, world.size, layout, cfg.chunk_tokens, cfg.batch_size)
        model = plan.load_model(device)
        world.on_main(lambda: _create_store(plan, out))
        started = time.perf_counter()
        checksums = _write_share(plan, out, share, layout, model, tokenizer, device, world, progress)
        every_rank = world.all_gather(checksums)
        seconds = time.perf_counter() - started
        attrs = world.on_main(lambda: _commit(out, plan, layout, every_rank, tokenizer, seconds, resolve_device(cfg.device)))
    finally:
        if target is not None:
            target.release()
    if world.is_main:
        log(f"harvested {attrs['counts']['tokens']:,} tokens ({attrs['counts']['sequences']:,} sequences) with "
            f"{world.size} processes at {attrs['harvest']['tokens_per_second']:,.0f} tokens/s into {out}")
    return out, attrs, False


def _restart(target):
    """Drop a one-process harvest's partial store (under the lock we hold, for a local path) and start fresh."""
    from mtsae.cache import remote

    remote.clear_cache(target.path)
    target.action, target.attrs = Action.CREATE, None
    return target


def plan_sequences(plan: HarvestPlan, tokenizer) -> SequencePlan:
    """Tokenize the whole input (no model) into the one-process run's sequences."""
    ledger = DocumentLedger()
    layout = SequencePlan()
    for seq in plan.sequences(tokenizer, ledger):
        layout.doc_rows.append(seq.doc_row)
        layout.lengths.append(len(seq.tokens))
        ledger.count(seq.doc_row, len(seq.tokens) - 1)
    if not layout.lengths:
        raise plan.no_tokens_error()
    layout.exhausted, layout.last_truncated = ledger.exhausted, ledger.last_truncated
    return layout


def _check_enough_chunks(plan: SequencePlan, cfg, world: World) -> None:
    n_chunks = -(-plan.n_tokens // cfg.chunk_tokens)
    if world.size > n_chunks:
        raise MtsaeError(
            f"{world.size} processes but only {n_chunks} chunk(s) of {cfg.chunk_tokens} tokens to write "
            f"({plan.n_tokens:,} tokens); use at most {n_chunks} processes or a smaller --chunk-tokens"
        )


def _create_store(plan: HarvestPlan, out: str) -> None:
    """Rank 0 creates the store; its writer is dropped (every rank reopens the store at its own chunk), and
    returning None keeps on_main from sending a writer to the other ranks."""
    plan.create_store(out)


def _write_share(plan: HarvestPlan, out, share: RankShare, layout: SequencePlan, model, tokenizer, device, world: World,
                 progress: bool) -> dict[str, dict[int, ChunkSums]]:
    """Run this rank's batches and write the rows of its chunks; returns their checksums."""
    cfg = plan.config
    writer = CacheWriter.at_chunk(out, share.first_chunk)
    capture = ResidualCapture(model, cfg.layers)
    pad_id = SpecialTokens.of(tokenizer).padding_id
    offsets = layout.seq_offsets
    first_seq = share.first_batch * cfg.batch_size
    sequences = itertools.islice(plan.sequences(tokenizer), first_seq, None)
    batches = itertools.islice(batched(sequences, cfg.batch_size), share.end_batch - share.first_batch)
    bar = tqdm(total=share.end_row - share.first_row, unit="tok", unit_scale=True,
               desc=f"harvest rank {world.rank}/{world.size}", disable=not (progress and world.is_main))
    try:
        index = first_seq
        for batch in batches:
            stored, _ = batch_activations(capture, batch, pad_id, device, index, cfg.dtype)
            for b, seq in enumerate(batch):
                written = _write_rows_in_share(writer, seq, {layer: a[b] for layer, a in stored.items()},
                                               int(offsets[index]), share)
                bar.update(written)
                index += 1
        return writer.flush()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
        capture.remove()


def _write_rows_in_share(writer: CacheWriter, seq, activations: dict[int, Any], first_row: int, share: RankShare) -> int:
    """Write the part of one sequence that lies in this rank's rows; returns how many rows that was."""
    lo = max(first_row, share.first_row) - first_row
    hi = min(first_row + len(seq.tokens), share.end_row) - first_row
    if lo >= hi:
        return 0
    columns = writer.sequence_columns(seq.tokens, seq.special, activations)
    writer.add_rows({name: values[lo:hi] for name, values in columns.items()})
    return hi - lo


def _commit(out: str, plan: HarvestPlan, layout: SequencePlan, every_rank: list[dict[str, dict[int, ChunkSums]]],
            tokenizer, seconds: float, device: torch.device) -> dict[str, Any]:
    """Rank 0, after every rank flushed: the one-process writer's index, checksums and manifest."""
    writer = CacheWriter.resume(out)
    for doc_row, n in zip(layout.doc_rows, layout.lengths):
        writer.replay(doc_row, n)
    checksums: dict[str, dict[int, ChunkSums]] = {}
    for rank_checksums in every_rank:
        for name, chunks in rank_checksums.items():
            checksums.setdefault(name, {}).update(chunks)
    manifest = plan.completion_manifest(writer, layout, SpecialTokens.of(tokenizer), seconds, 0, device)
    return writer.commit(manifest, checksums)
