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
from mtsae.harvest.capture import ResidualCapture
from mtsae.harvest.sequences import batched, iter_sequences
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


def harvest_in_parallel(cfg, out: str, force: bool, fingerprint: str, content: dict[str, Any], resolved, world: World,
                        log: Callable[[str], None], progress: bool) -> tuple[str, dict[str, Any], bool]:
    """This rank's part of a parallel harvest; returns ``(out, attrs, skipped)`` on every rank."""
    from mtsae.harvest.run import cache_header, harvest_compute_dtype

    model_source, text_source = resolved
    world.check_same("the harvest settings and inputs (fingerprint, options, --out)",
                     [fingerprint, cfg.batch_size, cfg.chunk_tokens, cfg.compression, out])
    target = None

    def decide() -> tuple[str, dict | None]:
        nonlocal target
        target = prepare_target(out, fingerprint, force, log)
        if target.action is Action.RESUME:  # progress marks of a one-process run; ranks cannot share them
            log(f"{out} holds an unfinished one-process harvest; a parallel harvest starts it over")
            target = _restart(target)
        return target.action.value, target.attrs

    try:
        action, attrs = world.on_main(decide)
        if action == Action.SKIP.value:
            return out, attrs, True
        device = world.device(resolve_device(cfg.device))
        tokenizer = sources.load_tokenizer(model_source)
        plan = plan_sequences(cfg, text_source, tokenizer)
        world.check_same("the tokenized input (sequence plan)", [plan.doc_rows, plan.lengths])
        _check_enough_chunks(plan, cfg, world)
        share = share_of(world.rank, world.size, plan, cfg.chunk_tokens, cfg.batch_size)
        model = sources.load_truncated_model(model_source, max(cfg.layers), getattr(torch, harvest_compute_dtype(cfg)),
                                             device, cfg.attn_implementation)
        header = cache_header(cfg, fingerprint, content, model_source, text_source)
        world.on_main(lambda: _create_store(out, cfg, header))
        started = time.perf_counter()
        checksums = _write_share(cfg, out, share, plan, model, tokenizer, text_source, device, world, progress)
        every_rank = world.all_gather(checksums)
        seconds = time.perf_counter() - started
        attrs = world.on_main(lambda: _commit(out, cfg, plan, every_rank, tokenizer, seconds, resolve_device(cfg.device)))
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


def plan_sequences(cfg, text_source, tokenizer) -> SequencePlan:
    """Tokenize the whole input (no model) into the one-process run's sequences."""
    from mtsae.harvest.run import _DocumentLedger

    ledger = _DocumentLedger()
    plan = SequencePlan()
    for seq in _sequences(cfg, text_source, tokenizer, ledger):
        plan.doc_rows.append(seq.doc_row)
        plan.lengths.append(len(seq.tokens))
        ledger.count(seq.doc_row, len(seq.tokens) - 1)
    if not plan.lengths:
        raise MtsaeError(f"dataset {text_source.identity['id']} yielded no tokens in column {cfg.text_column!r}")
    plan.exhausted, plan.last_truncated = ledger.exhausted, ledger.last_truncated
    return plan


def _sequences(cfg, text_source, tokenizer, ledger=None):
    documents = sources.iter_documents(text_source, tokenizer)
    return iter_sequences(
        ledger.track(documents) if ledger is not None else documents,
        context_len=cfg.context_len, bos_id=tokenizer.bos_token_id, special_ids=set(tokenizer.all_special_ids),
        max_tokens=cfg.max_tokens,
    )


def _check_enough_chunks(plan: SequencePlan, cfg, world: World) -> None:
    n_chunks = -(-plan.n_tokens // cfg.chunk_tokens)
    if world.size > n_chunks:
        raise MtsaeError(
            f"{world.size} processes but only {n_chunks} chunk(s) of {cfg.chunk_tokens} tokens to write "
            f"({plan.n_tokens:,} tokens); use at most {n_chunks} processes or a smaller --chunk-tokens"
        )


def _create_store(out: str, cfg, header: dict[str, Any]) -> None:
    CacheWriter.create(out, layers=cfg.layers, d_model=header["d_model"], dtype_name=cfg.dtype,
                       capacity_tokens=cfg.max_tokens, chunk_tokens=cfg.chunk_tokens, compression=cfg.compression,
                       header=header)


def _write_share(cfg, out, share: RankShare, plan: SequencePlan, model, tokenizer, text_source, device, world: World,
                 progress: bool) -> dict[str, dict[int, ChunkSums]]:
    """Run this rank's batches and write the rows of its chunks; returns their checksums."""
    from mtsae.harvest.run import batch_activations

    writer = CacheWriter.at_chunk(out, share.first_chunk)
    capture = ResidualCapture(model, cfg.layers)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.bos_token_id
    offsets = plan.seq_offsets
    first_seq = share.first_batch * cfg.batch_size
    sequences = itertools.islice(_sequences(cfg, text_source, tokenizer), first_seq, None)
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


def _commit(out: str, cfg, plan: SequencePlan, every_rank: list[dict[str, dict[int, ChunkSums]]], tokenizer, seconds: float,
            device: torch.device) -> dict[str, Any]:
    """Rank 0, after every rank flushed: the one-process writer's index, checksums and manifest."""
    from mtsae.harvest.run import completion_manifest

    writer = CacheWriter.resume(out)
    for doc_row, n in zip(plan.doc_rows, plan.lengths):
        writer.replay(doc_row, n)
    checksums: dict[str, dict[int, ChunkSums]] = {}
    for rank_checksums in every_rank:
        for name, chunks in rank_checksums.items():
            checksums.setdefault(name, {}).update(chunks)
    manifest = completion_manifest(cfg, writer, plan, tokenizer, seconds, 0, device)
    return writer.commit(manifest, checksums)
