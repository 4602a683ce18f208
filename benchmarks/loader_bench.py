"""Loader: training from the cache against training from an in-memory tensor; cold reads against the disk.

A random bfloat16 cache (``loader_tokens`` × ``loader_d_model``, raw chunks)
is written first. Then, in this order:

- cold: every file of the cache is fsynced and evicted from the page cache
  (``posix_fadvise(POSIX_FADV_DONTNEED)``; we cannot drop caches), the evicted
  fraction is checked with ``mincore``, and the loader alone (prefetch thread,
  no training) reads ``loader_steps`` batches: stored bytes/s. Then the files
  are evicted again and read sequentially in 4 MiB blocks: the disk's read rate.
- warm: the same ReLU training step (d_in = cache width) fed by
  ``WindowDataset.batches`` (prefetch 2) and by indexing the same windows, in
  the same order, out of a float32 tensor in memory (pinned on CUDA).

Cold and warm pairs are each timed in turn ``rounds`` times; the best round counts.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks.common import Report, best_of_rounds, release_memory, synchronize
from benchmarks.profiles import Profile
from mtsae.cache import CacheWriter
from mtsae.cache import format as fmt
from mtsae.train.config import Windowing
from mtsae.train.loader import WindowDataset
from mtsae.train.registry import create_sae

NAME = "loader"
LAYER = 0


def run(report: Report, profile: Profile, device: torch.device, work: Path) -> None:
    path = write_random_cache(work / "loader-cache", profile)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    window_bytes = 128 * profile.loader_d_model * 2
    windowing = Windowing(window=128)
    steps = min(profile.loader_steps, WindowDataset(str(path), LAYER, windowing).batches_per_epoch(profile.windows))

    cold, disk, resident = 0.0, 0.0, 1.0
    for _ in range(profile.rounds):  # cold first: a live memmap would keep its pages resident
        resident = min(resident, evict(files))
        dataset = WindowDataset(str(path), LAYER, windowing)
        cold = max(cold, loader_only_rate(dataset, profile.windows, steps, device) * window_bytes)
        del dataset
        gc.collect()
        evict(files)
        disk = max(disk, sequential_read_rate(files))
    report.add(NAME, "loader alone, cold (first read)", cold / 1e6, "MB/s",
               note=f"{resident:.0%} of the cache resident after eviction")
    report.add(NAME, "disk sequential read (cold)", disk / 1e6, "MB/s")
    report.measurements[-2].baseline, report.measurements[-2].ratio = "disk sequential read (cold)", cold / disk

    dataset = WindowDataset(str(path), LAYER, windowing)
    warm = loader_only_rate(dataset, profile.windows, steps, device) * window_bytes
    report.add(NAME, "loader alone, warm (page cache)", warm / 1e6, "MB/s")
    rates = best_of_rounds({
        "training from an in-memory tensor": train_rate_in_memory(dataset, profile, steps, device),
        "training from the cache (warm)": train_rate_from_cache(dataset, profile, steps, device),
    }, profile.rounds)
    memory, cached = rates["training from an in-memory tensor"], rates["training from the cache (warm)"]
    report.add(NAME, "training from an in-memory tensor", memory, "tokens/s",
               note=f"relu {profile.loader_d_model}→{profile.loader_d_sae}, {profile.windows}×128 tokens/step")
    report.add(NAME, "training from the cache (warm)", cached, "tokens/s", baseline="training from an in-memory tensor")
    release_memory(device)

    report.target("loader: cache / in-memory training, warm", cached / memory, 0.95,
                  reason="prefetch thread hides the reads" if cached / memory >= 0.95 else
                  "the prefetch thread's assembly (copy, bf16→f32 cast) competes with the step for the same cores")
    report.target("loader: cold loader / disk read rate", cold / disk, 0.9,
                  reason=(f"random 128-row windows ({window_bytes // 1024} KiB) from one prefetch thread "
                          "against one sequential stream" if cold / disk < 0.9 else "measured after eviction"))


def write_random_cache(path: Path, profile: Profile) -> Path:
    """A complete version-1 cache of random bfloat16 rows, 1024-token sequences, no special tokens."""
    d, n, seq_len = profile.loader_d_model, profile.loader_tokens, 1024
    content = {"benchmark": "random", "d_model": d, "tokens": n}
    path = path.with_name(f"{path.name}-{fmt.fingerprint(content)[:12]}")  # one folder per profile: never mixed up
    if (path / "zarr.json").is_file():
        return path
    header = {"fingerprint": fmt.fingerprint(content), "content": content,
              "description": "Random rows for the loader benchmark.", "model": {"id": "random", "revision": None},
              "dataset": {"id": "random", "split": "train", "text_column": None},
              "hook_names": [fmt.hook_name(LAYER)], "context_len": seq_len, "dtype": "bfloat16", "d_model": d,
              "config": {}}
    writer = CacheWriter.create(str(path), layers=[LAYER], d_model=d, dtype_name="bfloat16", capacity_tokens=n,
                                chunk_tokens=4096, header=header)
    generator = torch.Generator().manual_seed(0)
    tokens, special = np.zeros(seq_len, np.int32), np.zeros(seq_len, bool)
    for s in range(n // seq_len):
        rows = torch.randn(seq_len, d, generator=generator).bfloat16().view(torch.uint16).numpy()
        writer.add_sequence(s, tokens, special, {LAYER: rows})
    writer.finish({"counts": {"tokens": n, "sequences": n // seq_len, "documents": n // seq_len},
                   "special_tokens": {"special_ids": []}})
    return path


def evict(files: list[Path]) -> float:
    """Write back and drop ``files`` from the page cache; returns the fraction still resident."""
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    sizes = [p.stat().st_size for p in files]
    return sum(resident_fraction(p) * s for p, s in zip(files, sizes)) / max(1, sum(sizes))


def resident_fraction(path: Path) -> float:
    """Fraction of ``path``'s pages in the page cache (``mincore``)."""
    size = path.stat().st_size
    if size == 0:
        return 0.0
    libc = ctypes.CDLL(None, use_errno=True)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vector = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.uint8)
        if libc.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        del view
    return sum(v & 1 for v in vector) / pages


def sequential_read_rate(files: list[Path]) -> float:
    total, start = 0, time.perf_counter()
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while block := f.read(4 << 20):
                total += len(block)
    return total / (time.perf_counter() - start)


def loader_only_rate(dataset: WindowDataset, batch_windows: int, steps: int, device: torch.device) -> float:
    """Windows/s delivered to ``device`` by the loader alone."""
    start = time.perf_counter()
    n = 0
    for x in dataset.batches(batch_windows, limit=steps * batch_windows, drop_last=True, device=device):
        n += x.shape[0]
    synchronize(device)
    return n / (time.perf_counter() - start)


def _train_step(profile: Profile, device: torch.device):
    torch.manual_seed(0)
    sae = create_sae("relu", d_in=profile.loader_d_model, d_sae=profile.loader_d_sae).to(device).train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(x: torch.Tensor) -> None:
        with autocast:
            out = sae.loss(x.reshape(-1, x.shape[-1]))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.constrain_parameters_()

    return step


def _timed_training(batches, step, device: torch.device, tokens_per_batch: int) -> float:
    """Tokens/s over every batch but the first two (warm-up, not timed)."""
    n, start = 0, None
    for i, x in enumerate(batches):
        if i == 2:
            synchronize(device)
            start = time.perf_counter()
        step(x)
        n += tokens_per_batch if i >= 2 else 0
    synchronize(device)
    return n / (time.perf_counter() - start)


def train_rate_from_cache(dataset: WindowDataset, profile: Profile, steps: int,
                          device: torch.device) -> Callable[[], float]:
    step = _train_step(profile, device)

    def measure() -> float:
        batches = dataset.batches(profile.windows, limit=steps * profile.windows, drop_last=True, device=device)
        return _timed_training(batches, step, device, profile.windows * 128)

    return measure


def train_rate_in_memory(dataset: WindowDataset, profile: Profile, steps: int,
                         device: torch.device) -> Callable[[], float]:
    """The same windows in the same order, indexed out of one float32 tensor already in memory."""
    order = list(dataset.batch_indices(profile.windows, limit=steps * profile.windows, drop_last=True))
    used = np.unique(np.concatenate(order))
    memory, _ = dataset.assemble(used)
    position = {int(w): i for i, w in enumerate(used)}
    shape = (profile.windows, 128, profile.loader_d_model)
    buffers = [torch.empty(shape, pin_memory=device.type == "cuda") for _ in range(2)]
    copied = [None, None]  # CUDA events: a pinned buffer is refilled only after its copy has run

    def batches():
        for k, idx in enumerate(order):
            slot = k % 2
            if copied[slot] is not None:
                copied[slot].synchronize()
            rows = torch.tensor([position[int(w)] for w in idx])
            torch.index_select(memory, 0, rows, out=buffers[slot])
            if device.type == "cpu":
                yield buffers[slot]
                continue
            x = buffers[slot].to(device, non_blocking=True)
            copied[slot] = torch.cuda.Event()
            copied[slot].record()
            yield x

    step = _train_step(profile, device)
    return lambda: _timed_training(batches(), step, device, profile.windows * 128)
