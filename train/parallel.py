"""Data-parallel training under torchrun: DistributedDataParallel plus the SAE state DDP does not know about.

**Same windows.** Every rank draws the one-process batch (``batch_windows``
windows of the seeded epoch order) and keeps its own contiguous slice of
``batch_windows / world_size`` windows (``WindowDataset.batches(shard=…)``). The slices are disjoint
and together are the one-process batch.

**Same update.** Every loss term is a mean over the tokens of the batch; with
equal slices the mean of the per-rank means is the global mean, and DDP
averages the gradients, so each rank applies the one-process gradient up to
floating-point reduction order. Parameters, Adam state and the learning-rate
schedule then stay identical on every rank.

**Batch-level state** (kept equal on every rank by :meth:`DataParallel.loss`,
DDP's own buffer broadcast is off because it would copy rank 0's values; each
architecture declares how its buffers reduce in ``buffer_reductions``):

* dead-latent counters: exact — a latent fired if it fired on any rank, and
  the counters advance by the tokens of the whole batch;
* BatchTopK's inference threshold: the minimum over ranks, which is exactly
  the one-process update (the update is increasing in the batch minimum);
* BatchNorm running statistics (MTSAE): averaged over ranks. The running mean
  is exact; the running variance misses the spread between rank means.

**Not identical to one process** (documented in docs/scaling.md): what is
computed *across* a batch in the forward pass sees only the rank's slice —
MTSAE's BatchNorm batch statistics (as with DDP without SyncBatchNorm),
BatchTopK's top ``k·tokens`` selection, and the AuxK loss normaliser (the
residual variance of the slice). Per-token architectures without AuxK
(relu, jumprelu, topk before any latent is dead) match to rounding.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from mtsae.distributed import World
from mtsae.errors import MtsaeError
from mtsae.train.base import LossOutput, SparseAutoencoder

REDUCTIONS = ("min", "mean")  # what an architecture's buffer_reductions may say
# Buffers are synced by DataParallel, not copied from rank 0 before each forward (the kwarg was renamed in torch 2.13).
_NO_BUFFER_BROADCAST = ({"forward_sync_buffers": False}
                        if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                        else {"broadcast_buffers": False})


def check_batch_divides(batch_windows: int, world: World) -> None:
    if batch_windows % world.size:
        raise MtsaeError(
            f"--batch-windows {batch_windows} does not split evenly over {world.size} processes; "
            f"use a multiple of {world.size} (each process trains on batch_windows / processes windows)"
        )


class _Loss(nn.Module):
    """What DDP wraps: its forward is the SAE's training loss, so DDP sees every parameter the loss uses."""

    def __init__(self, sae: SparseAutoencoder) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, x: torch.Tensor, sparsity_scale: float) -> LossOutput:
        return self.sae.loss(x, sparsity_scale=sparsity_scale)


class DataParallel:
    """``loss(x, s)``: the SAE's training loss on this rank's slice, gradients averaged over ranks by DDP."""

    def __init__(self, sae: SparseAutoencoder, world: World, device: torch.device) -> None:
        self.sae, self.world = sae, world
        self.reductions = buffer_reductions(sae)  # checked in one process too: a missing one fails early
        self.ddp = None
        if world.size > 1:
            world.connect()
            self.ddp = nn.parallel.DistributedDataParallel(
                _Loss(sae), device_ids=[device.index] if device.type == "cuda" else None, **_NO_BUFFER_BROADCAST)

    def loss(self, x: torch.Tensor, sparsity_scale: float) -> LossOutput:
        if self.ddp is None:
            return self.sae.loss(x, sparsity_scale=sparsity_scale)
        counters_before = self.sae.tokens_since_fired.clone()
        out = self.ddp(x, sparsity_scale)
        self._sync_buffers(counters_before, tokens=token_count(x))
        return out._replace(components=self._average(out.components))

    @torch.no_grad()
    def _sync_buffers(self, counters_before: torch.Tensor, tokens: int) -> None:
        reduce = torch.distributed.all_reduce
        fired = (self.sae.tokens_since_fired == 0).to(torch.int32)
        reduce(fired, op=torch.distributed.ReduceOp.MAX)
        self.sae.tokens_since_fired.copy_(torch.where(fired.bool(), 0, counters_before + tokens * self.world.size))
        buffers = dict(self.sae.named_buffers())
        for name, reduction in self.reductions.items():
            buffer = buffers[name]
            synced = buffer.clone()
            if reduction == "min":
                reduce(synced, op=torch.distributed.ReduceOp.MIN)
            else:
                reduce(synced)
                synced.div_(self.world.size)
            # Through .data: batch_norm's graph holds the running statistics (unused by its training-mode
            # backward), and an ordinary in-place write would make autograd refuse the backward pass.
            buffer.data.copy_(synced)

    def _average(self, components: dict[str, float]) -> dict[str, float]:
        """The logged loss terms of the whole batch (each is a mean over equal slices)."""
        values = torch.tensor(list(components.values()), dtype=torch.float64, device=self.sae.W_dec.device)
        torch.distributed.all_reduce(values)
        return dict(zip(components, (values / self.world.size).tolist()))


def buffer_reductions(sae: SparseAutoencoder) -> dict[str, str]:
    """``{buffer name: "min" | "mean"}`` for every buffer but the dead-feature counters, as the architecture
    declares it; an undeclared buffer or an unknown reduction is refused (it would be silently wrong across ranks)."""
    declared = type(sae).buffer_reductions
    found = {name: buffer for name, buffer in sae.named_buffers() if name != "tokens_since_fired"}
    wrong = sorted(name for name, buffer in found.items() if declared.get(name) not in REDUCTIONS
                   or (declared[name] == "mean" and not buffer.is_floating_point()))
    if wrong:
        raise MtsaeError(
            f"the {sae.architecture} SAE does not say how its buffer(s) {wrong} are made equal across processes; "
            f"declare each in the class's buffer_reductions as one of {REDUCTIONS} (mean: floating-point only)"
        )
    return {name: declared[name] for name in found}


def token_count(x: torch.Tensor) -> int:
    """Tokens in a batch: ``[B, T, d]`` windows or ``[N, d]`` rows."""
    return x.shape[0] * (x.shape[1] if x.dim() == 3 else 1)
