"""``--target-l0``: hold an L1/L0-penalised SAE at a chosen L0 so architectures compare at equal sparsity.

Comparing a ReLU SAE, an MTSAE and a JumpReLU SAE at their presets' own
coefficients compares them at different L0s, which decides most of the
outcome (sparser codes reconstruct worse and recover features differently).
TopK-style SAEs fix L0 through ``k``; for the others this controller adapts a
multiplier ``m`` of the sparsity coefficient from the training batches' L0::

    log m  +=  gain · clip(log(L0_batch / target), -1, 1)        every step while adapting

It adapts during the first ``ADAPT_FRACTION`` of the steps (after any
sparsity warm-up), then freezes ``m``, so the end of training — where the
learning rate decays — optimises one fixed objective. The frozen coefficient
(``coefficient · m``) is what the run reports. The state is one float, saved
in ``trainer_state.pt`` so a resumed run is bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ADAPT_FRACTION = 0.8
GAIN = 0.05
"""Per-step change of log m at most 5 %: a factor of 20 in 60 steps, yet small steps near the target."""


@dataclass
class L0Controller:
    target: float
    adapt_from: int
    """First step that adapts (the end of the sparsity warm-up)."""
    adapt_until: int
    """First step that no longer adapts."""
    log_multiplier: float = 0.0

    @classmethod
    def for_run(cls, target: float, warmup_steps: int, total_steps: int) -> "L0Controller":
        return cls(target=target, adapt_from=warmup_steps, adapt_until=max(warmup_steps, int(ADAPT_FRACTION * total_steps)))

    @property
    def multiplier(self) -> float:
        return math.exp(self.log_multiplier)

    def update(self, step: int, batch_l0: float) -> None:
        """Adapt after (0-based) step ``step`` whose training batch had L0 ``batch_l0``."""
        if not self.adapt_from <= step < self.adapt_until or not math.isfinite(batch_l0):
            return
        error = math.log(max(batch_l0, 1e-3) / self.target)
        self.log_multiplier += GAIN * max(-1.0, min(1.0, error))
