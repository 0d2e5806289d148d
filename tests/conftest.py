"""Shared fixtures: one real local Ray for the session, one workdir with the demo data built, and a real
MLflow server on loopback."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    """`make test` runs two pytest processes (pytest-xdist, `--dist loadgroup`). The tests that use the session's
    embedded Ray all go to one of them, in file order: one such Ray serves them all (a second would add ~10
    processes contending for the two cores), and the other process takes the rest on the CPU they leave idle.
    Tests that start a Ray of their own in a subprocess (a data build, a test cluster) run beside it, as two
    studies on one machine would."""
    for item in items:
        if "ray_session" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("ray"))


def pytest_collection_finish(session):
    """Say so when xdist did not take the group (it marks it in the node id; pytest 9.2's ids undo that):
    the suite still passes, with two Rays at once, slower."""
    grouped = [item for item in session.items if item.get_closest_marker("xdist_group")]
    if getattr(session.config.option, "loadgroup", False) and grouped and not grouped[0].nodeid.endswith("@ray"):
        warnings.warn(f"pytest-xdist did not group the Ray tests under pytest {pytest.__version__} "
                      "(pytest-dev/pytest-xdist#1386): they run in both processes", stacklevel=1)


@pytest.fixture(scope="session")
def ray_session():
    """A real embedded Ray; 3 logical CPUs so two 1-CPU workers leave room for Tune's trial actors."""
    import ray

    started = not ray.is_initialized()
    if started:
        from hiir.platform.train.runtime import init_ray

        init_ray(num_cpus=3)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def workdir(ray_session, tmp_path_factory) -> Path:
    """A workdir whose demo datasets are built (on Ray Data) once for the whole session."""
    from hiir.data_prep import build_demo

    wd = tmp_path_factory.mktemp("workdir")
    build_demo(wd / "data", progress=False)
    return wd


@pytest.fixture(scope="session")
def train_config():
    return tiny_train_config


@pytest.fixture(scope="session")
def checkpoint_dirs():
    """A run's checkpoint directories under its storage folder (`<storage>/<run name>`), oldest first."""
    def dirs(run_dir: Path) -> list[Path]:
        return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    return dirs


def tiny_train_config(name: str, **sections):
    """A 2-worker, tiny-model config on the demo data; `sections` override whole keys."""
    from hiir.platform.config import load_config

    raw = {
        "name": name,
        "model": {"preset": "tiny_x2"},
        "data": {"train": "demo:sr_x2", "val": ["demo:sr_x2"], "batch_size": 4, "lq_patch": 16},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "max_steps": 20},
        "engine": {"kind": "deepspeed", "zero_stage": 2},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1},
        "eval": {"every": 10, "max_images": 3},  # the 3 demo val images: both ranks score a share
        "max_failures": 0,
        "tracking": {"experiment": "tests", "log_every": 5, "sample_images": 1, "system_metrics_s": 1.0},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return load_config(raw)


# One process as a world of one: what DeepSpeed's engines need to run outside Ray Train (gloo, a free port).
ONE_PROCESS_WORLD = """
import os, socket
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    os.environ["MASTER_PORT"] = str(s.getsockname()[1])
import deepspeed
deepspeed.init_distributed("gloo")
"""


@pytest.fixture(scope="session")
def run_in_one_process_world():
    """Run a Python script in a fresh interpreter that is a distributed world of one (DeepSpeed on the CPU)."""
    def run(script: str, *, timeout: float, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", ONE_PROCESS_WORLD + script],
                              env={**os.environ, "DS_ACCELERATOR": "cpu", **env}, capture_output=True, text=True,
                              timeout=timeout)
    return run


@pytest.fixture
def stale_ray_tmp() -> Path:
    """A RAY_TMPDIR where a `ray start --head` that died uncleanly left its address (ray/ray_current_cluster):
    a bare `ray.init()` would try to join it and hang on the dead GCS. Under /tmp: Ray's socket paths must stay
    short."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")  # nothing listens on port 1
    yield ray_tmp
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on loopback over a SQLite store in tmp_path: (its process, its URL). A test may
    kill its process group; it is killed at teardown otherwise."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", (tmp_path / "server-artifacts").as_uri(), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],  # one process: 4 (the default) are 4 imports of MLflow on 2 cores
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240  # 120 s ran out twice beside a running study (load ~6 on 2 cores, 2026-12-05)
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited with code {proc.returncode} before answering") from None
                if time.time() > deadline:
                    raise RuntimeError(f"mlflow server did not answer {url}/health within 240 s") from None
                time.sleep(0.5)
        yield proc, url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _group_members(group: int) -> list[int]:
    """Pids whose process group is `group`, read from /proc (field 5 of stat, after the parenthesised name)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we read
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.fixture
def stop_verb():
    """SIGTERM to a `hiir ui`/`hiir serve` process alone, as a service manager sends it: returns its output and
    asserts that no process of the server it started (MLflow's uvicorn and job consumers included) is left."""
    def stop(proc: subprocess.Popen, timeout: float = 60) -> str:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        groups = {os.getpgid(int(pid)) for pid in children}
        assert groups and proc.pid not in groups, "the server should lead a process group of its own"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, out
        left = [pid for group in groups for pid in _group_members(group)]
        for pid in left:  # don't leave them to the next test
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left behind by {proc.args}: {left}"
        return out
    return stop
