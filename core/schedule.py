"""Learning-rate schedule shared by both trainers: linear warmup, then cosine decay to zero."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_steps_from(warmup: float, total_steps: int) -> int:
    """``warmup`` < 1 is a fraction of ``total_steps``; >= 1 is a number of steps (must be a whole number)."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if warmup < 1:
        return int(round(warmup * total_steps))
    if warmup != int(warmup):
        raise ValueError(f"warmup >= 1 is a number of steps and must be whole, got {warmup}")
    return int(warmup)


def cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base lr for optimizer step ``step`` (0-based).

    Warmup: ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (the first step already moves, the last
    warmup step reaches the base lr). Then ``0.5 * (1 + cos(pi * t))`` with
    ``t = (step - warmup_steps) / (total_steps - warmup_steps)``, so it starts at 1 and would reach 0 at
    ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(optimizer: Optimizer, total_steps: int, warmup_steps: int) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`cosine_factor`; call ``.step()`` once after each optimizer step."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, {total_steps}], got {warmup_steps}")

    def factor(step: int) -> float:
        return cosine_factor(step, total_steps, warmup_steps)

    return LambdaLR(optimizer, factor)
