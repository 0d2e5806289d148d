"""Wall time of each named part of a step, over many steps: the in-process profiles of the worker's step
(`step_parts.py`, `train_overhead.py`, `optimizer_step.py`) time their parts with it, and those that run the
engine start their child process with `one_rank_env`."""
from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

from hiir.platform.train.runtime import MALLOC_ENV, interpreter_first_path


def one_rank_env() -> dict[str, str]:
    """The environment of a child process that runs the engine as a trial's one worker does: a one-rank
    torch.distributed group on a free port, the workers' glibc settings (where the caller sets none), and the
    interpreter's bin first on PATH (so that DeepSpeed's JIT op is found built, not rebuilt, when the script
    was run as `.venv/bin/python` from a shell without the venv)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {**MALLOC_ENV, **os.environ, "PATH": interpreter_first_path(os.environ.get("PATH", "")),
            "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


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
