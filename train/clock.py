"""Throughput of the training loop: wall time minus evaluation and checkpoint pauses."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


class LoopClock:
    """Wall time of the training loop minus what ``paused()`` blocks took (evaluation, checkpoints)."""

    def __init__(self, start_tokens: int) -> None:
        self.start_tokens = start_tokens
        self.started = time.perf_counter()
        self.stopped: float | None = None
        self.excluded = 0.0

    def stop(self) -> None:
        self.stopped = time.perf_counter()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t

    def rate(self, tokens: int) -> float:
        seconds = (self.stopped or time.perf_counter()) - self.started - self.excluded
        return (tokens - self.start_tokens) / max(seconds, 1e-9)
