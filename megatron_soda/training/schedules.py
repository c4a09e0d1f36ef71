"""Learning-rate schedules: warmup-stable-decay (SODA's), cosine, linear, constant.

Step semantics: ``lr_at(s)`` is the learning rate of update ``s``, counted from 0 (``s`` updates
already done), for a run of ``total_steps`` updates. Warmup rises linearly and reaches the peak on
its last step, ``lr_at(0) = lr / W`` and ``lr_at(W - 1) = lr``; the decay ends on the last update,
``lr_at(total_steps - 1) = min_lr``. This is Levanter's/optax's schedule evaluated after the update
rather than before it (optax counts from 0 and gives update 0 lr 0 and the last update lr / D):
neither end wastes a step, and the one-step shift is immaterial at SODA's 238,419 steps.

Phase lengths from fractions are floored, as Levanter does (``int(fraction * total_steps)``): SODA's
run has W = 23,841 warmup and D = 47,683 decay updates. ``warmup_iters`` / ``decay_iters`` give them
exactly instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

STYLES = ("wsd", "cosine", "linear", "constant")


def _steps(fraction: float, iters: Optional[int], total: int, what: str) -> int:
    if iters is not None:
        if fraction:
            raise ValueError(f"give {what}_fraction or {what}_iters, not both")
        if not 0 <= iters <= total:
            raise ValueError(f"{what}_iters must be in [0, total_steps={total}], got {iters}")
        return int(iters)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{what}_fraction must be in [0, 1], got {fraction}")
    return int(math.floor(fraction * total + 1e-9))  # the epsilon only absorbs float error (0.29 * 100)


@dataclass
class LRSchedule:
    """A learning-rate schedule over ``total_steps`` updates; see the module docstring for step semantics."""

    total_steps: int
    """Number of optimizer updates in the run (SODA: 238,419)."""
    lr: float
    """Peak learning rate, reached at the end of warmup."""
    min_lr: float = 0.0
    """Learning rate of the last update (not used by "constant")."""
    style: str = "wsd"
    """"wsd" (warmup, constant, linear decay), "cosine" or "linear" (warmup, then decay over the rest), "constant"."""
    warmup_fraction: float = 0.0
    """Fraction of ``total_steps`` spent in linear warmup (SODA: 0.1)."""
    warmup_iters: Optional[int] = None
    """Warmup length in updates; replaces ``warmup_fraction``."""
    decay_fraction: float = 0.0
    """"wsd" only: fraction of ``total_steps`` at the end spent decaying linearly to ``min_lr`` (SODA: 0.2)."""
    decay_iters: Optional[int] = None
    """"wsd" only: decay length in updates; replaces ``decay_fraction``."""
    decay_end: Optional[int] = None
    """Updates after which the decay is over and ``min_lr`` holds (Megatron-LM's ``--lr-decay-iters``);
    default ``total_steps``."""

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"lr schedule style must be one of {STYLES}, got {self.style!r}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.decay_end is None:
            self.decay_end = self.total_steps
        if not 1 <= self.decay_end <= self.total_steps:
            raise ValueError(f"decay_end must be in [1, total_steps={self.total_steps}], got {self.decay_end}")
        self.warmup_steps = _steps(self.warmup_fraction, self.warmup_iters, self.total_steps, "warmup")
        self.decay_steps = _steps(self.decay_fraction, self.decay_iters, self.total_steps, "decay")
        if self.style != "wsd" and self.decay_steps:
            raise ValueError(
                f"decay_fraction / decay_iters apply to style 'wsd' only; '{self.style}' "
                f"decays over everything after warmup"
            )
        if self.style == "wsd":
            if self.decay_steps < 1:
                raise ValueError("style 'wsd' needs a decay phase: set decay_fraction or decay_iters")
            if self.warmup_steps + self.decay_steps > self.decay_end:
                raise ValueError(
                    f"warmup ({self.warmup_steps}) + decay ({self.decay_steps}) updates exceed "
                    f"the {self.decay_end} updates before the decay ends: lower warmup_fraction or decay_fraction"
                )
        elif self.style != "constant":
            self.decay_steps = self.decay_end - self.warmup_steps
            if self.decay_steps < 1:
                raise ValueError(f"style '{self.style}' needs at least one update after warmup")

    def lr_at(self, step: int) -> float:
        """Learning rate of update ``step`` (0-based); ``min_lr`` past the end (``lr`` for "constant")."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        done = step + 1  # updates completed once this one is applied
        if done <= self.warmup_steps:
            return self.lr * (done / self.warmup_steps)
        if self.style == "constant":
            return self.lr
        decay_start = self.decay_end - self.decay_steps  # updates completed when decay begins
        if done <= decay_start:
            return self.lr
        progress = min(1.0, (done - decay_start) / self.decay_steps)
        if self.style == "cosine":
            return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + (self.lr - self.min_lr) * (1.0 - progress)


def apply_lr(optimizer, lr: float) -> None:
    """Sets ``lr`` on every param group of a torch or megatron optimizer.

    ``max_lr`` (AdamC's reference, megatron's per-group peak) is left as it is.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
