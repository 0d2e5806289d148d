"""Wall time of each named part of a step, over many steps: the in-process profiles of the worker's step
(`step_parts.py`, `train_overhead.py`, `optimizer_step.py`) time their parts with it."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


class PartTimes:
    """`timed(key, fn)` runs fn, adds its seconds to `key` and returns what fn returned."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def __call__(self, key: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        self.add(key, time.perf_counter() - t)
        return out

    def add(self, key: str, seconds: float) -> None:
        self.times.setdefault(key, []).append(seconds)

    def medians_ms(self, skip: int) -> dict[str, float]:
        """Each part's median in ms, its first `skip` steps dropped (warm-up)."""
        return {k: 1000 * statistics.median(v[skip:]) for k, v in self.times.items()}
