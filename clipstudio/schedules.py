"""Learning-rate schedules: one function for the guidance loop and the trainers alike."""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0, floor: float = 0.1) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up over ``warmup`` steps, then constant, or cosine
    (Loshchilov & Hutter 2017) or linear decay to ``floor`` at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    if schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - (1 - floor) * progress
    return 1.0


def ema_decay(decay: float, updates: int) -> float:
    """Decay of a parameter EMA at its ``updates``-th update, warmed up as TensorFlow's ExponentialMovingAverage
    with ``num_updates``: ``min(decay, (1 + n) / (10 + n))``, so a short run's average is not held at its start."""
    return min(decay, (1 + updates) / (10 + updates))
