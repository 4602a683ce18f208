"""torchrun support shared by every stage: who am I, and the few collectives the stages need.

`torchrun` (or `srun` + `torchrun`) sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`process_group` reads them and provides the default
``torch.distributed`` process group for the length of one command. Without
them everything runs as one process and every collective here is a no-op, so
the single-process code paths stay exactly what they were.

The group is opened lazily, at the first collective: until then the ranks are
plain independent processes. That matters because libraries change behaviour
under an initialised group (transformers' ``save_pretrained`` writes only on
rank 0, which would leave other ranks materialising the embedded model with
half a directory).

A failure on one rank stops that process; torchrun then stops the others,
which would otherwise wait forever at their next collective.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch

from mtsae import env
from mtsae.errors import MtsaeError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def connect(self) -> None:
        """Open the process group now (collectives do it themselves)."""
        if self.size > 1 and not torch.distributed.is_initialized():
            if _pending_backend is None:
                raise RuntimeError("no process group: call this inside mtsae.distributed.process_group()")
            timeout = datetime.timedelta(seconds=float(env.get(env.DIST_TIMEOUT)))
            torch.distributed.init_process_group(_pending_backend, timeout=timeout)

    def barrier(self) -> None:
        if self.size > 1:
            self.connect()
            torch.distributed.barrier()

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order."""
        if self.size == 1:
            return [value]
        self.connect()
        gathered: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def check_same(self, what: str, value: Any) -> None:
        """Refuse to go on unless every rank has the same ``value`` (e.g. its options); raises on every rank."""
        digests = self.all_gather(_digest(value))
        differing = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
        if differing:
            raise MtsaeError(
                f"the {self.size} processes disagree on {what} (rank {differing[0]} differs from rank 0); "
                "launch every rank with the same options and inputs"
            )

    def on_main(self, action: Callable[[], T]) -> T:
        """Run ``action`` on rank 0 only and hand its result (or its user error) to every rank."""
        if self.size == 1:
            return action()
        self.connect()
        outcome: list[Any] = [None]
        if self.is_main:
            try:
                outcome = [("ok", action())]
            except MtsaeError as exc:
                outcome = [("error", str(exc))]
            except BaseException as exc:
                torch.distributed.broadcast_object_list([("crash", f"rank 0 failed: {exc!r}")], src=0)
                raise
        torch.distributed.broadcast_object_list(outcome, src=0)
        kind, payload = outcome[0]
        if kind == "error":
            raise MtsaeError(payload)
        if kind == "crash":
            raise RuntimeError(payload)
        return payload

    def device(self, device: torch.device) -> torch.device:
        """Each local rank gets its own GPU when the device names none (``auto`` / ``cuda``)."""
        if self.size > 1 and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank % max(torch.cuda.device_count(), 1))
            torch.cuda.set_device(device)
        return device


SINGLE_PROCESS = World()
_pending_backend: str | None = None  # set by process_group(); the group opens at the first collective


def world_from_env() -> World:
    """The rank and world size torchrun set, or one process."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise MtsaeError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None
    if size < 1 or not 0 <= rank < size:
        raise MtsaeError(f"RANK={rank} does not fit WORLD_SIZE={size}; launch with torchrun")
    return World(rank, size, local_rank)


@contextlib.contextmanager
def process_group(backend: str = "gloo") -> Iterator[World]:
    """The process group of one command (``gloo``, or ``nccl`` for CUDA training); a no-op outside torchrun."""
    global _pending_backend
    world = world_from_env()
    if world.size == 1 or torch.distributed.is_initialized():
        yield world
        return
    _pending_backend = backend
    try:
        yield world
    finally:
        _pending_backend = None
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
