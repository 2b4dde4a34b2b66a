"""Learning-rate schedules as functions of training progress t in epochs (fractional, updated every step)."""

from __future__ import annotations

import math

from ramptool.errors import RamptoolError

SCHEDULES = ("piecewise-ft", "static", "cyclic", "cosine", "constant")


def learning_rate(schedule: str, base_lr: float, t: float, epochs: int, drop_epoch: float | None = None) -> float:
    """``piecewise-ft``: /10 at 1/3 and 2/3 of training (paper's fine-tuning). ``static``: /10 at
    ``drop_epoch`` (paper's from-scratch: 70 of 80). ``cyclic``: 0 -> base at 2/5 -> 0. ``cosine``: base -> 0."""
    if schedule == "piecewise-ft":
        return base_lr * (1.0 if t <= epochs / 3 else 0.1 if t <= 2 * epochs / 3 else 0.01)
    if schedule == "static":
        drop = drop_epoch if drop_epoch is not None else 0.875 * epochs
        return base_lr * (1.0 if t <= drop else 0.1)
    if schedule == "cyclic":
        peak = 0.4 * epochs
        return base_lr * (t / peak if t <= peak else max(0.0, (epochs - t) / (epochs - peak)))
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * min(t, epochs) / epochs))
    if schedule == "constant":
        return base_lr
    raise RamptoolError(f"unknown lr schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
