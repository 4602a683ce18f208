"""`mtsae harvest`: model + text -> a complete, fingerprinted activation cache."""

from __future__ import annotations

import dataclasses
import itertools
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

import mtsae
from mtsae.cache import CacheWriter
from mtsae.cache import format as fmt
from mtsae.cache import read_attrs
from mtsae.cache.shared import check_shared as check_shared_cache
from mtsae.cache.shared import find_shared
from mtsae.devices import compute_dtype, resolve_device
from mtsae.distributed import SINGLE_PROCESS, World
from mtsae.errors import MtsaeError
from mtsae.harvest import sources
from mtsae.harvest.capture import ResidualCapture, check_finite, to_storage
from mtsae.harvest.config import HarvestConfig, default_context_len
from mtsae.harvest.sequences import batched, iter_sequences, pad_batch
from mtsae.harvest.target import Action, prepare_target
from mtsae.prefetch import Prefetcher

SEQUENCE_POLICY = "one document per sequence; BOS prefixed to every sequence; long documents continue after a new BOS"


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
    (``check_shared=False`` skips them).
    """
    cfg.validate()
    model_source = sources.resolve_model(cfg.model, cfg.model_revision)
    sources.check_layers(model_source.config, cfg.layers, cfg.model)
    max_positions = getattr(sources.text_config(model_source.config), "max_position_embeddings", None)
    if cfg.context_len is None:
        cfg.context_len = default_context_len(max_positions)
    elif max_positions and cfg.context_len > max_positions:
        raise MtsaeError(f"--context-len {cfg.context_len} exceeds the model's {max_positions} positions; lower it")
    text_source = sources.resolve_dataset(
        cfg.dataset, config_name=cfg.dataset_config, split=cfg.split, text_column=cfg.text_column, revision=cfg.dataset_revision
    )
    content = content_spec(cfg, model_source, text_source)
    fingerprint = fmt.fingerprint(content)
    out = out or str(Path("caches") / fingerprint[:12])
    shared = find_shared(shared_root, fingerprint) if shared_root and not force else None
    at_out = (read_attrs(out) or {}) if shared else {}
    if shared and (at_out.get("fingerprint"), at_out.get("status")) != (fingerprint, fmt.STATUS_COMPLETE):  # --out's copy wins
        log(f"the shared root already holds this harvest (fingerprint {fingerprint[:12]}): reusing {shared[0]}")
        if check_shared and world.is_main:
            check_shared_cache(shared[0], log, device=cfg.device)
        return HarvestOutcome(shared[0], shared[1], skipped=True)
    if world.size > 1:
        from mtsae.harvest.parallel import harvest_in_parallel

        sources_ = (model_source, text_source)
        return HarvestOutcome(*harvest_in_parallel(cfg, out, force, fingerprint, content, sources_, world, log, progress))
    target = prepare_target(out, fingerprint, force, log)
    try:
        if target.action is Action.SKIP:
            return HarvestOutcome(out, target.attrs, skipped=True)
        if target.action is Action.RESUME:
            cfg.batch_size = target.attrs["config"]["batch_size"]  # the same batches give the same bytes
        attrs = _load_and_run(cfg, out, target.action is Action.RESUME, fingerprint, content, model_source, text_source,
                              log, progress)
        return HarvestOutcome(out, attrs, skipped=False)
    finally:
        target.release()


def _load_and_run(cfg, out, resume, fingerprint, content, model_source, text_source, log, progress) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    tokenizer = sources.load_tokenizer(model_source)
    model = sources.load_truncated_model(model_source, max(cfg.layers), getattr(torch, harvest_compute_dtype(cfg)),
                                         device, cfg.attn_implementation)
    header = cache_header(cfg, fingerprint, content, model_source, text_source)
    return _run(cfg, out, resume, header, model, tokenizer, text_source, device, log, progress)


def cache_header(cfg, fingerprint, content, model_source, text_source) -> dict[str, Any]:
    """The attributes a store gets at creation (status incomplete)."""
    return {
        "fingerprint": fingerprint,
        "content": content,
        "description": "Residual-stream activations harvested by mtsae; see docs/cache-format.md of the mtsae project.",
        "model": model_source.identity,
        "dataset": text_source.identity,
        "layers": cfg.layers,
        "hook_names": [fmt.hook_name(layer) for layer in cfg.layers],
        "context_len": cfg.context_len,
        "dtype": cfg.dtype,
        "compute_dtype": harvest_compute_dtype(cfg),
        "d_model": sources.text_config(model_source.config).hidden_size,
        "mtsae_version": mtsae.__version__,
        "config": dataclasses.asdict(cfg),
    }


def _run(cfg, out, resume, header, model, tokenizer, text_source, device, log, progress) -> dict[str, Any]:
    capture = ResidualCapture(model, cfg.layers)
    special_ids = set(tokenizer.all_special_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.bos_token_id
    ledger = _DocumentLedger()
    sequences = iter_sequences(
        ledger.track(sources.iter_documents(text_source, tokenizer)),
        context_len=cfg.context_len, bos_id=tokenizer.bos_token_id, special_ids=special_ids, max_tokens=cfg.max_tokens,
    )
    writer = _resume(out, sequences, ledger, log) if resume else None
    resumed_tokens = writer.n_tokens if writer else 0
    started = time.perf_counter()
    bar = tqdm(total=cfg.max_tokens, initial=writer.n_tokens if writer else 0, unit="tok", unit_scale=True,
               desc="harvest", disable=not progress)
    try:
        # Tokenizing and packing the next batches in a thread overlaps them with this batch's forward pass.
        for batch in Prefetcher(lambda: batched(sequences, cfg.batch_size), depth=2):
            if writer is None:  # created only once there is something to write
                writer = CacheWriter.create(out, layers=cfg.layers, d_model=header["d_model"], dtype_name=cfg.dtype,
                                            capacity_tokens=cfg.max_tokens, chunk_tokens=cfg.chunk_tokens,
                                            compression=cfg.compression, header=header)
            stored, n_real = batch_activations(capture, batch, pad_id, device, writer.n_sequences, cfg.dtype)
            for b, seq in enumerate(batch):
                n = len(seq.tokens)
                writer.add_sequence(seq.doc_row, seq.tokens, seq.special, {layer: a[b, :n] for layer, a in stored.items()})
                ledger.count(seq.doc_row, n - 1)  # all but the BOS
            writer.mark()  # a batch boundary: a resumed run restarts with the very same batches
            bar.update(n_real)
        if writer is None:
            raise MtsaeError(f"dataset {text_source.identity['id']} yielded no tokens in column {cfg.text_column!r}")
        seconds = time.perf_counter() - started
        manifest = completion_manifest(cfg, writer, ledger, tokenizer, seconds, resumed_tokens, device)
        attrs = writer.finish(manifest)
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


def batch_activations(capture, batch, pad_id, device, first_sequence: int,
                      storage_dtype: str) -> tuple[dict[int, Any], int]:
    """Run one padded batch: ``({layer: [B, width, d] stored-dtype array}, real tokens)``; NaN/Inf is an error."""
    ids, mask = pad_batch(batch, pad_id)
    ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
    # Computed in harvest_compute_dtype(cfg), rounded once here to the stored dtype (a no-op when they agree).
    acts = {layer: tensor.to(getattr(torch, storage_dtype)) for layer, tensor in capture(ids_t, mask_t).items()}
    for layer, tensor in acts.items():
        check_finite(tensor, mask_t, layer, first_sequence)
    return {layer: to_storage(tensor) for layer, tensor in acts.items()}, int(mask.sum())


def completion_manifest(cfg, counts, ledger, tokenizer, seconds, resumed_tokens, device) -> dict[str, Any]:
    """What `CacheWriter.finish` adds to the header; ``counts`` has n_tokens, n_sequences, n_documents."""
    special_ids = set(tokenizer.all_special_ids)
    return {
        "counts": {"tokens": counts.n_tokens, "sequences": counts.n_sequences, "documents": counts.n_documents},
        "dataset_exhausted": ledger.exhausted,
        "last_document_truncated": ledger.last_truncated,
        "sequence_policy": SEQUENCE_POLICY,
        "special_tokens": {"bos_id": tokenizer.bos_token_id, "pad_id": tokenizer.pad_token_id,
                           "eos_id": tokenizer.eos_token_id, "special_ids": sorted(special_ids)},
        "harvest": {
            "seconds": round(seconds, 3),
            "tokens_per_second": round((counts.n_tokens - resumed_tokens) / seconds, 1),
            "resumed_at_tokens": resumed_tokens,
            "batch_size": cfg.batch_size,
            "device": str(device),
            "attn_implementation": cfg.attn_implementation,
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "zarr": _version("zarr"),
            "python": platform.python_version(),
        },
    }


class _DocumentLedger:
    """Tells, after the run, whether the dataset ran out and whether the budget cut the last stored document."""

    def __init__(self):
        self.lengths: dict[int, int] = {}  # recent documents only: row -> token count
        self.stored: dict[int, int] = {}
        self.last_row: int | None = None
        self.exhausted = False

    def track(self, documents: Iterator[tuple[int, list[int]]]) -> Iterator[tuple[int, list[int]]]:
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


def _resume(out: str, sequences: Iterator, ledger: "_DocumentLedger", log: Callable[[str], None]) -> CacheWriter:
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


def content_spec(cfg: HarvestConfig, model_source, text_source) -> dict[str, Any]:
    """Everything that determines the cache's bytes up to floating-point order (not layout, device or batch size)."""
    return {
        "model": sources.content_identity(model_source.identity),
        "dataset": sources.content_identity(text_source.identity),
        "text_tokenization": sources.TEXT_TOKENIZATION,
        "hook_names": [fmt.hook_name(layer) for layer in cfg.layers],
        "context_len": cfg.context_len,
        "max_tokens": cfg.max_tokens,
        "dtype": cfg.dtype,
        "sequence_policy": SEQUENCE_POLICY,
        # Only when it differs, so caches computed in their stored dtype keep their fingerprints.
        **({"compute_dtype": compute} if (compute := harvest_compute_dtype(cfg)) != cfg.dtype else {}),
    }


def harvest_compute_dtype(cfg: HarvestConfig) -> str:
    """The dtype the model runs in: float32 on a CPU without native half precision (mtsae.devices)."""
    return compute_dtype(cfg.dtype, resolve_device(cfg.device))


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
