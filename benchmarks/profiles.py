"""Sizes of each benchmark profile; ``cpu`` must finish in about 3 minutes on 2 cores, ``smoke`` in seconds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    # harvest: model ("embedded", or "gemma-2-2b-random": the real shapes, random weights)
    model: str
    layers: tuple[int, ...]
    context_len: int
    batch_size: int
    harvest_tokens: int
    naive_micro_batch: int  # the full model's LM head over a whole batch would not fit on the GPU
    attn_implementation: str
    disk_test_bytes: int
    memory_tokens: int  # the memory benchmark harvests this and 10× this
    # train step (tokens per step = windows × window)
    d_in: int
    d_sae: int
    windows: int
    window: int
    train_steps: int
    # loader: a random bfloat16 cache of this width and size
    loader_d_model: int
    loader_tokens: int
    loader_d_sae: int
    loader_steps: int
    rounds: int  # competitors are timed in turn this many times; the best round counts


PROFILES = {
    "smoke": Profile(
        name="smoke", model="embedded", layers=(5, 19), context_len=64, batch_size=4, harvest_tokens=512,
        naive_micro_batch=4, attn_implementation="eager", disk_test_bytes=4 << 20, memory_tokens=300,
        d_in=16, d_sae=64, windows=4, window=16, train_steps=2,
        loader_d_model=16, loader_tokens=4096, loader_d_sae=64, loader_steps=4, rounds=1,
    ),
    "cpu": Profile(
        name="cpu", model="embedded", layers=(5, 19), context_len=256, batch_size=8, harvest_tokens=8192,
        naive_micro_batch=8, attn_implementation="eager", disk_test_bytes=256 << 20, memory_tokens=3000,
        d_in=64, d_sae=1024, windows=16, window=128, train_steps=3,
        loader_d_model=256, loader_tokens=131072, loader_d_sae=1024, loader_steps=10, rounds=2,
    ),
    "gpu": Profile(
        name="gpu", model="gemma-2-2b-random", layers=(5, 19), context_len=1024, batch_size=32,
        harvest_tokens=1 << 19, naive_micro_batch=8, attn_implementation="flex_attention",
        disk_test_bytes=4 << 30, memory_tokens=65536,
        d_in=2304, d_sae=16384, windows=32, window=128, train_steps=50,
        loader_d_model=2304, loader_tokens=524288, loader_d_sae=16384, loader_steps=100, rounds=2,
    ),
}
