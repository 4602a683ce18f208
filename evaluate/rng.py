"""Seed the global random generators for a block, and give the caller's streams back afterwards."""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's global generators seeded with ``seed`` inside the block, restored on exit.

    Seeding makes what runs inside repeatable (SAE-Bench draws from all three and seeds only some of its
    draws); restoring keeps whatever runs around it (a training loop, a test, another eval) on the stream it
    was on. CUDA generators are saved and restored when CUDA is already initialised (saving them would
    otherwise initialise it).
    """
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
