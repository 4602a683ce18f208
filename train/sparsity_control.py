"""``--target-l0``: hold an L1/L0-penalised SAE at a chosen L0 so architectures compare at equal sparsity.

Comparing a ReLU SAE, an MTSAE and a JumpReLU SAE at their presets' own
coefficients compares them at different L0s, which decides most of the
outcome (sparser codes reconstruct worse and recover features differently).
TopK-style SAEs fix L0 through ``k``; for the others this controller adapts a
multiplier ``m`` of the sparsity coefficient from the training batches' L0, a
PI controller on the log error with anti-windup::

    e      = clip(log(L0_batch / target), -1, 1)
    ē     ←  SMOOTHING · ē + (1 - SMOOTHING) · e                 (batch L0 is noisy)
    I     ←  clamp(I + GAIN · ē, -MAX_LOG, MAX_LOG)                 (integral, clamped: anti-windup)
           unless ē is already closing: |ē| falls by more than |ē|/CLOSING_STEPS in one step
    log m  = I + PROPORTIONAL · ē

every step while adapting. The integral finds the coefficient that holds the
target; the proportional term backs off as soon as L0 passes the target, which
an integral alone does too late on a slow plant — a JumpReLU threshold moves
at most ``lr`` per Adam step whatever the coefficient, so L0 lags ``m`` and a
pure integral overshoots. The clamp stops ``m`` growing without bound while
the plant cannot follow (Adam steps do not grow with the gradient). Skipping
the integral while L0 is already heading for the target fast enough (conditional
integration) stops the same wind-up on the way there: a JumpReLU run on LM
activations starts at L0 ≈ 2× the target, and integrating all the way down wound
``m`` up ~100× past the coefficient that holds the target, so L0 overshot to
0.6× the target and — a penalty can only sparsify — never came back
(docs/architectures.md).

It adapts during the first ``ADAPT_FRACTION`` of the steps (after any
sparsity warm-up), then freezes ``m``, so the end of training — where the
learning rate decays — optimises one fixed objective. The frozen coefficient
(``coefficient · m``) is what the run reports. The state is three floats,
saved in ``trainer_state.pt`` so a resumed run is bit-identical.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

ADAPT_FRACTION = 0.8
GAIN = 0.05
"""Integral gain: per-step change of the integral at most 5 %: a factor of 20 in 60 steps, yet small steps near the target."""
PROPORTIONAL = 4.0
"""Proportional gain on the smoothed log error: L0 10 % over the target raises m by ~50 % at once."""
SMOOTHING = 0.9
"""EMA factor of the log error (about 10 batches)."""
CLOSING_STEPS = 50
"""Conditional integration: no integral step while the smoothed error would reach 0 within this many steps."""
MAX_LOG = math.log(1e4)
"""Anti-windup: the integral stays within a factor 10^4 of the configured coefficient."""


@dataclass
class L0Controller:
    target: float
    adapt_from: int
    """First step that adapts (the end of the sparsity warm-up)."""
    adapt_until: int
    """First step that no longer adapts."""
    log_multiplier: float = 0.0
    integral: float = 0.0
    smoothed_error: float = 0.0

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
        error = max(-1.0, min(1.0, math.log(max(batch_l0, 1e-3) / self.target)))
        previous = self.smoothed_error
        self.smoothed_error = SMOOTHING * previous + (1 - SMOOTHING) * error
        closing = abs(previous) - abs(self.smoothed_error) > abs(self.smoothed_error) / CLOSING_STEPS
        if not closing:
            self.integral = max(-MAX_LOG, min(MAX_LOG, self.integral + GAIN * self.smoothed_error))
        self.log_multiplier = self.integral + PROPORTIONAL * self.smoothed_error

    def state(self) -> dict[str, Any]:
        """What ``trainer_state.pt`` stores (restore with :meth:`restore`)."""
        return dataclasses.asdict(self)

    def restore(self, state: dict[str, Any] | float | None) -> None:
        """Inverse of :meth:`state`; a bare float is a checkpoint from before the PI law (log m only)."""
        if isinstance(state, dict):
            self.log_multiplier, self.integral = state["log_multiplier"], state["integral"]
            self.smoothed_error = state["smoothed_error"]
        elif state is not None:
            self.log_multiplier = self.integral = float(state)
