"""A server run in the foreground of a `hiir` verb, stopped with everything it started.

`mlflow server` starts uvicorn and about seven job consumers, and `mlflow models serve` starts uvicorn; none of
them stop when their parent is told to. So the server gets a process group of its own, and whatever stops `hiir`
(Ctrl-C, SIGTERM from a service manager, SIGHUP from a closed terminal) stops that whole group.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_S = 10.0  # a server closing its SQLite store and job queue; then SIGKILL


class _Stopped(Exception):
    pass


def run_in_foreground(cmd: list[str], env: dict[str, str]) -> int:
    """Run `cmd` until it exits or `hiir` is told to stop; either way no process it started is left. Returns
    the server's exit status, or 0 when it was stopped on request."""
    def stop(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return proc.wait()
    except _Stopped:
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the group `proc` leads, then SIGKILL to whatever is left of it after GRACE_S."""
    group = proc.pid  # start_new_session: the leader's pid is the group's id
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, or the group never empties
        if not _signal_group(group, 0):
            return
        time.sleep(0.1)
    _signal_group(group, signal.SIGKILL)
    proc.wait()


def _signal_group(group: int, sig: int) -> bool:
    """Send `sig` to the group; False when no process of it is left."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    return True
