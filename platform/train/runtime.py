"""Where a run executes: the Ray it joins or starts, what every worker's environment holds, what each
worker asks Ray for, and where checkpoints are stored.

Without an address hiir always starts its own embedded Ray; with one (`--address`, `RAY_ADDRESS`) it joins
that cluster. `HIIR_STORAGE` (s3://, gs://, or a shared `file://` mount) puts checkpoints and Tune state
where every node reaches them.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

import psutil
import ray

from hiir.platform.config import TrainConfig

# glibc hands blocks over its (dynamic, at most 32 MB) mmap threshold back to the OS on free, and trims
# the heaps of non-main threads (Ray Train runs the loop in one): every step then page-faults its
# activations back in, ~3,000 faults per step of tiny_x2 (bench/RESULTS.md, "training overhead").
# Fixed thresholds keep freed memory for the next step; a worker's RSS stays at its peak, as it would anyway.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**35), "MALLOC_TRIM_THRESHOLD_": str(2**36)}

# The embedded instance's Ray settings (why: `init_ray`). They are set in the environment before Ray starts,
# so every Ray process inherits them: the raylet's, and Ray Train's, which Ray Train hands on from whichever
# process creates a TorchTrainer (the CLI, or a study's trial) to its controller.
LOCAL_RAY_ENV = {"RAY_worker_niceness": "0", "RAY_prestart_worker_first_driver": "0",
                 "RAY_enable_worker_prestart": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
                 "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def worker_env() -> dict[str, str]:
    """Environment every Ray worker needs (DeepSpeed on CPU, its JIT cache, allocator settings): the driver's
    value where it has one, else the default; and PATH with the interpreter's bin first."""
    defaults = {"TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "hiir" / "torch_extensions"), **MALLOC_ENV}
    passed = ("DS_ACCELERATOR", "HIIR_FAULT", "MLFLOW_TRACKING_URI", *defaults)
    return {**defaults, **{k: os.environ[k] for k in passed if k in os.environ}, "PATH": interpreter_first_path()}


def interpreter_first_path(rest: str = "${PATH}") -> str:
    """The interpreter's own bin directory, then `rest`: by default the worker's node's own PATH (Ray expands
    `${PATH}` where the worker starts, so a cluster node keeps its tools), as an activated venv has it; a local
    child process passes its parent's PATH. DeepSpeed JIT-builds its CPU all-reduce op with the first `ninja`
    on PATH, and two ninja versions hash a command line differently: a process that found the system's ninja
    where `make venv` used the venv's found the op "changed" and rebuilt it (~35 s of both cores, in the first
    two trials of a study; bench/RESULTS.md), and the next process with the venv's ninja rebuilt it again."""
    return f"{Path(sys.executable).parent}{os.pathsep}{rest}"


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Connect to the cluster at `address` (the CLI's --address, RAY_ADDRESS), or start an embedded local
    instance: always a new one (`address="local"`), never the cluster that a past `ray start` left named in
    /tmp/ray/ray_current_cluster, which may be dead (Ray would hang retrying it) or not ours to fill.
    A no-op when Ray is up."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address:
        # Workers need their cluster's address for the State API (why: the embedded case below). A GCS
        # address is handed on as it is; `auto` and `ray://` name none here, and keep Ray's own lookup.
        env_vars = worker_env()
        if "://" not in address and address not in ("auto", "local"):
            env_vars["RAY_ADDRESS"] = address
        ray.init(address=address, runtime_env={"env_vars": env_vars})
    else:
        # On a small machine whose cores the training worker holds, every other Ray process that wakes
        # preempts a torch thread and stalls its parallel region (bench/RESULTS.md, "training overhead"):
        # run workers at normal priority (Ray nices them to 15) and start no idle workers ahead of need
        # (each wakes ~150 times a second; together they cost a bare loop 3-8% on 2 cores). Ray Train's
        # controller polls its workers every 0.5 s, not 2: a run's end is noticed ~1.7 s sooner (a tiny run's
        # teardown 3.0 -> 1.3 s, bench/RESULTS.md "study overhead"), for ~1% of a core per running trial.
        # No preemption watcher: a local instance has no preemptible nodes, and each trial's watcher process
        # takes ~1.6% of the two cores.
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
        # The dashboard hosts the State API, which Ray Train's PlacementGroupCleaner needs: without
        # it, a trial stopped by ASHA leaks its workers' placement group and starves later trials.
        # The cleaner finds the State API from RAY_ADDRESS, else by scanning the machine for Ray
        # instances; once a second one runs (two studies at once, a study beside `hiir train`, a test
        # cluster beside the embedded Ray) it raises or asks the newest, maybe the wrong one: a leaked
        # group, or every run's end waiting out the cleaner's 12 s stop timeout. So the GCS port is
        # chosen here and every worker is told its own instance's address.
        user_port = os.environ.get("RAY_GCS_SERVER_PORT")  # read when the head starts; not for children
        gcs_port = int(user_port) if user_port else _free_port()
        os.environ["RAY_GCS_SERVER_PORT"] = str(gcs_port)
        try:
            env_vars = {**worker_env(), "RAY_ADDRESS": f"{ray.util.get_node_ip_address()}:{gcs_port}"}
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                     runtime_env={"env_vars": env_vars}, logging_level=logging.WARNING,
                     log_to_driver=os.environ.get("HIIR_WORKER_LOGS", "0") == "1")
        finally:
            if user_port is None:
                del os.environ["RAY_GCS_SERVER_PORT"]
            else:
                os.environ["RAY_GCS_SERVER_PORT"] = user_port


def _free_port() -> int:
    """A TCP port free on this machine now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def process_started_at() -> float:
    """When this process started, in Unix seconds: to the clock tick on Linux (psutil's rounds the boot time
    to whole seconds), psutil's elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, AttributeError, ValueError, IndexError):
        return psutil.Process().create_time()


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """What one Ray Train worker of this run asks Ray for."""
    return {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if cfg.scaling.use_gpu else {})}


def storage_root(workdir: Path) -> str:
    """Where checkpoints and Tune state go: HIIR_STORAGE (s3://, gs://, NFS) on a cluster, else the workdir."""
    return os.environ.get("HIIR_STORAGE", "").rstrip("/") or str(Path(workdir).resolve())


def run_storage(workdir: Path) -> str:
    """Ray Train's storage path for single runs: `<HIIR_STORAGE>/runs`, or `<workdir>/ray_results` locally
    (`<workdir>/runs` holds the exported weights)."""
    shared = os.environ.get("HIIR_STORAGE", "").rstrip("/")
    return f"{shared}/runs" if shared else str(Path(workdir).resolve() / "ray_results")
