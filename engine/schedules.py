"""Learning-rate schedules of the paper, as plain functions of the global batch index.

A schedule is a pure function of the step, so resuming needs no scheduler state, and each formula
can be checked by hand against docs/paper.md sections 2 and 4: linear warmup from 0 (i * lr / m), then step,
cosine or poly decay over the batches after warmup.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import BotError


def scaled_lr(base_lr: float, batch_size: int, base_batch: int = 256) -> float:
    """Linear scaling rule: lr = base_lr * b / base_batch (0.1 * b / 256 in the paper)."""
    return base_lr * batch_size / base_batch


@dataclass
class Schedule:
    lr: float                  # peak learning rate, reached at the end of warmup
    total_steps: int           # all batches of the run, warmup included
    warmup_steps: int = 0
    kind: str = "cosine"       # "cosine" | "step" | "poly" | "constant"
    milestones: list[int] = field(default_factory=list)  # for "step": batch indices where lr is multiplied by gamma
    gamma: float = 0.1
    power: float = 0.9         # for "poly"

    def __post_init__(self):
        if self.kind not in ("cosine", "step", "poly", "constant"):
            raise ValueError(f"unknown lr schedule {self.kind!r} (cosine, step, poly, constant)")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step * self.lr / self.warmup_steps
        if self.kind == "step":
            return self.lr * self.gamma ** sum(step >= m for m in self.milestones)
        if self.kind == "constant":
            return self.lr
        t = step - self.warmup_steps
        horizon = max(1, self.total_steps - self.warmup_steps)
        frac = min(1.0, t / horizon)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac)) * self.lr
        return self.lr * (1.0 - frac) ** self.power


def milestone_steps(milestones, epochs: int, steps_per_epoch: int, key: str = "schedule.milestones") -> list[int]:
    """Step-decay milestones, fractions of the schedule, as batch indices, so that they follow --epochs;
    BotError for epoch numbers (> 1)."""
    bad = [m for m in milestones if not 0 < float(m) <= 1]
    if bad:
        raise BotError(f"{key} {list(milestones)}: give fractions of train.epochs in (0, 1] "
                       f"(e.g. [0.25, 0.5, 0.75] for 30/60/90 of 120), not {bad[0]}")
    return [round(float(m) * epochs * steps_per_epoch) for m in milestones]


def set_lr(optimizer, lr: float) -> None:
    """Write lr into every param group, honouring a group's optional `lr_mult` (e.g. a backbone multiplier)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
