"""Harvest: `mtsae harvest` end to end against the naive way, TransformerLens, and the two ceilings.

Every competitor runs over the same token batches (built by harvest's own
sequence code from the same corpus) with the same model weights and dtype, and
counts the same real (non-padding) tokens:

- ``mtsae harvest (end to end)``: the real command into a local store; its
  manifest's loop rate (model loading excluded, as for the others). A first,
  one-batch harvest warms the process up (kernels, flex-attention compilation).
- ``forward only``: the truncated model with the capture hooks, no copy, no
  storage: the compute ceiling.
- ``naive``: the full model (all layers, LM head) with ``output_hidden_states=True``,
  the chosen layers copied to the host and ``np.save``d per batch.
- ``TransformerLens``: ``run_with_cache(names_filter=…, stop_at_layer=…)`` and a
  host copy, as SAELens's activation caching does.
- ``disk write``: the disk's own sequential write rate (4 MiB writes, fsync),
  in tokens/s at the cache's bytes per token: the I/O ceiling.

Models are loaded first; then the competitors are timed in turn, ``rounds``
times, and each keeps its best round (see ``best_of_rounds``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks.common import Report, best_of_rounds, release_memory, synchronize
from benchmarks.inputs import long_document_corpus, model_dir
from benchmarks.profiles import Profile
from mtsae.cache import format as fmt
from mtsae.harvest import sources
from mtsae.harvest.capture import ResidualCapture
from mtsae.harvest.config import HarvestConfig
from mtsae.harvest.run import harvest
from mtsae.harvest.sequences import batched, iter_sequences, pad_batch

NAME = "harvest"
UNIT = "tokens/s"


E2E = "mtsae harvest (end to end)"


def run(report: Report, profile: Profile, device: torch.device, work: Path) -> None:
    model_path = model_dir(profile.model, work, device)
    corpus = long_document_corpus(work / "long-documents.jsonl", profile.harvest_tokens)
    layers = list(profile.layers)
    batches = token_batches(model_path, corpus, profile)
    n_tokens = int(sum(mask.sum() for _, mask in batches))
    d_model = sources.text_config(sources.resolve_model(str(model_path)).config).hidden_size
    bytes_per_token = len(layers) * d_model * 2  # bfloat16

    competitors = {
        E2E: end_to_end(model_path, corpus, profile, device, work),
        "forward only (compute ceiling)": forward_only(model_path, batches, layers, profile, device, compiled=False),
        "naive: full model, output_hidden_states, np.save": naive_full_model(model_path, batches, layers, profile,
                                                                             device, work),
        "TransformerLens run_with_cache (SAELens)": transformer_lens_path(model_path, batches, layers, device),
    }
    if device.type == "cuda":  # torch.compile is what would lift the forward to the TransformerLens target
        competitors["forward only, torch.compile"] = forward_only(model_path, batches, layers, profile, device,
                                                                  compiled=True)
    rates = best_of_rounds(competitors, profile.rounds)
    competitors.clear()
    release_memory(device)
    for name, rate in rates.items():
        note = f"{n_tokens:,} tokens, ctx {profile.context_len}, best of {profile.rounds}" if name == E2E else ""
        report.add(NAME, name, rate, UNIT, baseline=None if name == E2E else E2E, note=note)
    disk = disk_write_rate(work, profile.disk_test_bytes)
    report.add(NAME, "disk sequential write (I/O ceiling)", disk / bytes_per_token, UNIT, baseline=E2E,
               note=f"{disk / 1e6:,.0f} MB/s at {bytes_per_token} B/token")

    e2e, forward, tl = rates[E2E], rates["forward only (compute ceiling)"], rates["TransformerLens run_with_cache (SAELens)"]
    on_gpu = device.type == "cuda"
    ceiling = min(forward, disk / bytes_per_token)
    report.target("harvest: end to end / min(forward only, disk write)", e2e / ceiling, 0.9,
                  reason="measured side by side" if e2e / ceiling >= 0.9 else _e2e_reason(e2e, forward, disk / bytes_per_token))
    report.target("harvest: forward / TransformerLens at ctx 1024", forward / tl, 2.3, measurable=on_gpu,
                  reason=(f"CPU ratio at ctx {profile.context_len}; the target is for a GPU at ctx 1024"
                          if not on_gpu else "eager forward; see the torch.compile row for the compiled one"))


def _e2e_reason(e2e: float, forward: float, disk: float) -> str:
    bound = "forward" if forward <= disk else "disk"
    return (f"end to end reaches {e2e / min(forward, disk):.0%} of the {bound} ceiling: tokenization, the "
            "per-batch host copy, finite check and writer hand-off run in series with the forward pass")


def token_batches(model_path: Path, corpus: Path, profile: Profile) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``(input_ids, attention_mask)`` batches a harvest of this profile runs, built by harvest's code."""
    source = sources.resolve_model(str(model_path))
    tokenizer = sources.load_tokenizer(source)
    text = sources.resolve_dataset(str(corpus), config_name=None, split="train", text_column="text")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.bos_token_id
    sequences = iter_sequences(sources.iter_documents(text, tokenizer), context_len=profile.context_len,
                               bos_id=tokenizer.bos_token_id, special_ids=set(tokenizer.all_special_ids),
                               max_tokens=profile.harvest_tokens)
    return [pad_batch(batch, pad_id) for batch in batched(sequences, profile.batch_size)]


def _harvest_config(model_path: Path, corpus: Path, profile: Profile, device: torch.device, max_tokens: int):
    return HarvestConfig(model=str(model_path), dataset=str(corpus), layers=list(profile.layers),
                         context_len=profile.context_len, max_tokens=max_tokens, batch_size=profile.batch_size,
                         device=str(device), attn_implementation=profile.attn_implementation)


def end_to_end(model_path: Path, corpus: Path, profile: Profile, device: torch.device, work: Path) -> Callable[[], float]:
    """A measurement: tokens/s of one harvest's loop (its manifest); a one-batch harvest warms the process first."""
    warm = _harvest_config(model_path, corpus, profile, device, profile.batch_size * profile.context_len)
    harvest(warm, str(work / "store-warmup"), force=True, log=lambda _: None, progress=False)
    shutil.rmtree(work / "store-warmup", ignore_errors=True)

    def measure() -> float:
        cfg = _harvest_config(model_path, corpus, profile, device, profile.harvest_tokens)
        outcome = harvest(cfg, str(work / "store"), force=True, log=lambda _: None, progress=False)
        shutil.rmtree(work / "store", ignore_errors=True)  # GPU-sized stores are gigabytes
        return float(outcome.attrs["harvest"]["tokens_per_second"])

    return measure


def _load_body(model_path: Path, profile: Profile, device: torch.device):
    source = sources.resolve_model(str(model_path))
    return sources.load_truncated_model(source, max(profile.layers), torch.bfloat16, str(device),
                                        profile.attn_implementation)


def _timed_loop(step, batches, device: torch.device) -> Callable[[], float]:
    """A measurement: tokens/s of ``step(ids, mask)`` over every batch.

    One untimed batch of every distinct shape runs first, so a compiled model
    never recompiles (a last, smaller batch) inside the timed loop.
    """
    to_device = [(torch.from_numpy(i).to(device), torch.from_numpy(m).to(device)) for i, m in batches]
    n_tokens = sum(int(m.sum()) for _, m in batches)
    for ids, mask in {tuple(ids.shape): (ids, mask) for ids, mask in to_device}.values():
        step(ids, mask)

    def measure() -> float:
        synchronize(device)
        start = time.perf_counter()
        for ids, mask in to_device:
            step(ids, mask)
        synchronize(device)
        return n_tokens / (time.perf_counter() - start)

    return measure


def forward_only(model_path, batches, layers, profile, device, *, compiled: bool) -> Callable[[], float]:
    model = _load_body(model_path, profile, device)
    if compiled:
        model = torch.compile(model, dynamic=False)
    return _timed_loop(ResidualCapture(model, layers), batches, device)


def naive_full_model(model_path, batches, layers, profile, device, work: Path) -> Callable[[], float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16,
                                                 attn_implementation=profile.attn_implementation).to(device).eval()
    out = work / "naive"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    counter = iter(range(1 << 30))
    step = profile.naive_micro_batch

    @torch.inference_mode()
    def forward_and_save(ids, mask):
        for lo in range(0, ids.shape[0], step):  # micro-batches only bound the LM head's memory
            hidden = model(input_ids=ids[lo:lo + step], attention_mask=mask[lo:lo + step],
                           output_hidden_states=True, use_cache=False).hidden_states
            np.save(out / f"{next(counter)}.npy",
                    torch.stack([hidden[layer + 1] for layer in layers]).cpu().view(torch.uint16).numpy())

    measure = _timed_loop(forward_and_save, batches, device)

    def measure_and_clean() -> float:
        rate = measure()
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        return rate

    return measure_and_clean


def transformer_lens_path(model_path, batches, layers, device) -> Callable[[], float]:
    from mtsae.evaluate.models import load_hooked_transformer

    model = load_hooked_transformer(model_path, "benchmark", device=str(device), dtype=torch.bfloat16)
    names = [fmt.hook_name(layer) for layer in layers]

    @torch.inference_mode()
    def run_with_cache(ids, mask):
        _, cache = model.run_with_cache(ids, attention_mask=mask, names_filter=names, stop_at_layer=max(layers) + 1)
        return [cache[name].to("cpu", non_blocking=True) for name in names]

    return _timed_loop(run_with_cache, batches, device)


def disk_write_rate(work: Path, n_bytes: int) -> float:
    """Bytes/s of sequential 4 MiB writes of ``n_bytes`` to a file in ``work``, fsync included."""
    path = work / "disk-write-test.bin"
    block = os.urandom(4 << 20)
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for _ in range(max(1, n_bytes // len(block))):
            f.write(block)
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    written = max(1, n_bytes // len(block)) * len(block)
    path.unlink()
    return written / seconds
