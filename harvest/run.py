"""`mtsae harvest`: model + text -> a complete, fingerprinted activation cache.

The settings are resolved once into a frozen plan (harvest/plan.py); this module
decides what to do with it (reuse a shared copy, skip, resume, run) and runs the
one-process harvest. Under torchrun the ranks share it (harvest/parallel.py,
which imports only downward: plan, capture, sequences, target).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

from mtsae.cache import CacheWriter
from mtsae.cache import format as fmt
from mtsae.cache import read_attrs
from mtsae.cache.shared import check_shared as check_shared_cache
from mtsae.cache.shared import find_shared
from mtsae.devices import resolve_device
from mtsae.distributed import SINGLE_PROCESS, World
from mtsae.errors import MtsaeError
from mtsae.harvest import sources
from mtsae.harvest.capture import ResidualCapture, batch_activations
from mtsae.harvest.config import HarvestConfig
from mtsae.harvest.parallel import harvest_in_parallel
from mtsae.harvest.plan import HarvestPlan, SpecialTokens, resolve_plan
from mtsae.harvest.sequences import DocumentLedger, batched
from mtsae.harvest.target import Action, prepare_target
from mtsae.prefetch import Prefetcher


@dataclass
class HarvestOutcome:
    path: str
    attrs: dict[str, Any]
    skipped: bool  # True when an identical complete cache was already there


def harvest(cfg: HarvestConfig, out: str | None = None, *, force: bool = False, log: Callable[[str], None] = print,
            progress: bool = True, world: World = SINGLE_PROCESS, shared_root: str | None = None,
            check_shared: bool = True) -> HarvestOutcome:
    """One harvest; under torchrun (``world.size > 1``) the ranks share it (harvest/parallel.py).

    ``shared_root``: a folder or URL of caches by fingerprint (cache/shared.py); a complete cache of
    this fingerprint there is reused instead of recomputed, once its digests and a small audit pass
    (``check_shared=False`` skips them). ``cfg`` is read, never changed.
    """
    plan = resolve_plan(cfg)
    out = out or str(Path("caches") / plan.fingerprint[:12])
    shared = find_shared(shared_root, plan.fingerprint) if shared_root and not force else None
    at_out = (read_attrs(out) or {}) if shared else {}
    if shared and (at_out.get("fingerprint"), at_out.get("status")) != (plan.fingerprint, fmt.STATUS_COMPLETE):
        # --out's own complete copy wins over the shared one
        log(f"the shared root already holds this harvest (fingerprint {plan.fingerprint[:12]}): reusing {shared[0]}")
        if check_shared and world.is_main:
            check_shared_cache(shared[0], log, device=cfg.device)
        return HarvestOutcome(shared[0], shared[1], skipped=True)
    if world.size > 1:
        return HarvestOutcome(*harvest_in_parallel(plan, out, force, world, log, progress))
    target = prepare_target(out, plan.fingerprint, force, log)
    try:
        if target.action is Action.SKIP:
            return HarvestOutcome(out, target.attrs, skipped=True)
        if target.action is Action.RESUME:  # the same batches give the same bytes
            plan = plan.with_batch_size(target.attrs["config"]["batch_size"])
        attrs = _load_and_run(plan, out, target.action is Action.RESUME, log, progress)
        return HarvestOutcome(out, attrs, skipped=False)
    finally:
        target.release()


def _load_and_run(plan: HarvestPlan, out: str, resume: bool, log, progress: bool) -> dict[str, Any]:
    device = resolve_device(plan.config.device)
    tokenizer = sources.load_tokenizer(plan.model_source)
    return _run(plan, out, resume, plan.load_model(device), tokenizer, device, log, progress)


def _run(plan: HarvestPlan, out: str, resume: bool, model, tokenizer, device, log, progress: bool) -> dict[str, Any]:
    cfg = plan.config
    capture = ResidualCapture(model, cfg.layers)
    specials = SpecialTokens.of(tokenizer)
    ledger = DocumentLedger()
    sequences = plan.sequences(tokenizer, ledger)
    writer = _resume(out, sequences, ledger, log) if resume else None
    resumed_tokens = writer.n_tokens if writer else 0
    started = time.perf_counter()
    bar = tqdm(total=cfg.max_tokens, initial=resumed_tokens, unit="tok", unit_scale=True, desc="harvest",
               disable=not progress)
    try:
        # Tokenizing and packing the next batches in a thread overlaps them with this batch's forward pass.
        for batch in Prefetcher(lambda: batched(sequences, cfg.batch_size), depth=2):
            if writer is None:  # created only once there is something to write
                writer = plan.create_store(out)
            stored, n_real = batch_activations(capture, batch, specials.padding_id, device, writer.n_sequences, cfg.dtype)
            for b, seq in enumerate(batch):
                n = len(seq.tokens)
                writer.add_sequence(seq.doc_row, seq.tokens, seq.special, {layer: a[b, :n] for layer, a in stored.items()})
                ledger.count(seq.doc_row, n - 1)  # all but the BOS
            writer.mark()  # a batch boundary: a resumed run restarts with the very same batches
            bar.update(n_real)
        if writer is None:
            raise plan.no_tokens_error()
        seconds = time.perf_counter() - started
        attrs = writer.finish(plan.completion_manifest(writer, ledger, specials, seconds, resumed_tokens, device))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
        capture.remove()
    log(f"harvested {attrs['counts']['tokens']:,} tokens ({attrs['counts']['sequences']:,} sequences, "
        f"{attrs['counts']['documents']:,} documents) at {attrs['harvest']['tokens_per_second']:,.0f} tokens/s into {out}")
    return attrs


def _resume(out: str, sequences: Iterator, ledger: DocumentLedger, log: Callable[[str], None]) -> CacheWriter:
    """Reopen an unfinished store and fast-forward the sequence stream past what it holds."""
    writer = CacheWriter.resume(out)
    done = writer.progress["sequences"]
    for seq in itertools.islice(sequences, done):
        writer.replay(seq.doc_row, len(seq.tokens))
        ledger.count(seq.doc_row, len(seq.tokens) - 1)
    if writer.n_sequences != done or writer.n_tokens != writer.progress["tokens"]:
        raise MtsaeError(f"cannot resume {out}: its recorded progress does not match the input; pass --force to start over")
    writer.resume_staging()
    log(f"resuming the unfinished harvest in {out}: {writer.n_tokens:,} tokens already on disk")
    return writer

