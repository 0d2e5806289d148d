"""Learning-rate schedule: linear warmup, then cosine or multistep (the paper's scaling knob)."""
from __future__ import annotations

import bisect
import math

from hiir.platform.config import OptimConfig


def lr_factor(step: int, optim: OptimConfig) -> float:
    """Multiplier of `optim.lr` at `step` (0-based), as torch's LambdaLR expects."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "multistep":
        passed = bisect.bisect_right([m * optim.max_steps for m in optim.milestones], step)
        return optim.gamma**passed
    span = max(1, optim.max_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    floor = optim.min_lr_ratio
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
