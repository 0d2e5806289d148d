"""The driver: one `fit_run` serves `hiir train` and every trial of a study.

It validates everything it can before a worker starts (datasets, storage, tracking), creates the
MLflow run (SQLite has one writer: runs are created here, workers only log into them), then builds
and fits a Ray Train `TorchTrainer`. A re-run with the same name auto-restores from its latest
checkpoint (Train V2 semantics), and the MLflow run with that name is continued.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiir.platform.config import TrainConfig, flatten
from hiir.platform.errors import HiirError

log = logging.getLogger("hiir.driver")

DEMO_PREFIX = "demo:"
SYNTHETIC_TAG = "hiir.synthetic_val"  # val sets that are synthetic stand-ins, comma-separated


@dataclass
class RunResult:
    name: str
    run_id: str | None
    metrics: dict[str, Any]
    export_dir: Path | None
    storage: str


# glibc hands blocks over its (dynamic, at most 32 MB) mmap threshold back to the OS on free, and trims
# the heaps of non-main threads (Ray Train runs the loop in one): every step then page-faults its
# activations back in, ~3,000 faults per step of tiny_x2 (bench/RESULTS.md, "training overhead").
# Fixed thresholds keep freed memory for the next step; a worker's RSS stays at its peak, as it would anyway.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**35), "MALLOC_TRIM_THRESHOLD_": str(2**36)}
LOCAL_RAY_ENV = {"RAY_worker_niceness": "0", "RAY_prestart_worker_first_driver": "0",
                 "RAY_enable_worker_prestart": "0"}


def worker_env() -> dict[str, str]:
    """Environment every Ray worker needs (DeepSpeed on CPU, its JIT cache, allocator settings):
    the driver's value where it has one, else the default."""
    defaults = {"TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "hiir" / "torch_extensions"), **MALLOC_ENV}
    passed = ("DS_ACCELERATOR", "HIIR_FAULT", "MLFLOW_TRACKING_URI", *defaults)
    return {**defaults, **{k: os.environ[k] for k in passed if k in os.environ}}


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Connect to RAY_ADDRESS/`address`, or start an embedded local instance (no-op when up)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address:
        ray.init(address=address, runtime_env={"env_vars": worker_env()})
    else:
        # On a small machine whose cores the training worker holds, every other Ray process that wakes
        # preempts a torch thread and stalls its parallel region (bench/RESULTS.md, "training overhead"):
        # run workers at normal priority (Ray nices them to 15) and start no idle workers ahead of need
        # (each wakes ~150 times a second; together they cost a bare loop 3-8% on 2 cores).
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
        # The dashboard hosts the State API, which Ray Train's PlacementGroupCleaner needs: without
        # it, a trial stopped by ASHA leaks its workers' placement group and starves later trials.
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 runtime_env={"env_vars": worker_env()}, logging_level=logging.WARNING,
                 log_to_driver=os.environ.get("HIIR_WORKER_LOGS", "0") == "1")


def resolve_datasets(cfg: TrainConfig, workdir: Path, *, verify: bool = True) -> TrainConfig:
    """`demo:<name>` -> the built-in demo dataset (built on first use); every set verified up front,
    mixture entries included (an online set without a pipeline, or tasks of different scales, fail here).
    `verify=False` reads the manifests only, not every shard's sha256 (a study's trials: the study has
    verified them once, and the workers check each shard they read)."""
    from hiir.data_prep import build_demo, load_manifest
    from hiir.data_prep.demo import DEGRADATION_SETS, DEMO_SETS

    refs = [cfg.data.train] * (not cfg.data.mixture) + list(cfg.data.val) + \
        [r for e in cfg.data.mixture for r in (e["dataset"], *e.get("val", []))]
    keys = list(dict.fromkeys(r[len(DEMO_PREFIX):] for r in refs if r.startswith(DEMO_PREFIX)))
    known = [*DEMO_SETS, *DEGRADATION_SETS]
    for key in keys:
        if key not in known:
            raise HiirError(f"unknown demo dataset {DEMO_PREFIX + key!r}; available: "
                            + ", ".join(DEMO_PREFIX + k for k in known))
    demos = build_demo(workdir / "data", keys=keys) if keys else {}

    def resolve(ref: str) -> str:
        if ref.startswith(DEMO_PREFIX):
            return str(demos[ref[len(DEMO_PREFIX):]])
        if "://" not in ref:
            ref = str(Path(ref).expanduser().resolve())
        load_manifest(ref, verify=verify)  # a missing shard or bad checksum fails here, not in a worker
        return ref

    mixture = [{**e, "dataset": resolve(e["dataset"]), "val": [resolve(v) for v in e.get("val", [])]}
               for e in cfg.data.mixture]
    for i, e in enumerate(mixture):
        _check_online(e["dataset"], e.get("degrade"), f"data.mixture[{i}]")
    train = cfg.data.train if mixture else resolve(cfg.data.train)
    if not mixture:
        _check_online(train, cfg.data.degrade, "data")
    scales = {e["task"]: _train_scale(e["dataset"], e.get("degrade")) for e in mixture}
    if len(set(scales.values())) > 1:
        raise HiirError(f"the tasks of data.mixture must share one scale (one model), got {scales}")
    data = dataclasses.replace(cfg.data, train=train, val=[resolve(v) for v in cfg.data.val], mixture=mixture)
    return dataclasses.replace(cfg, data=data)


def _check_online(dataset: str, steps, where: str) -> None:
    from hiir.data_prep import load_manifest

    deg = load_manifest(dataset, verify=False).degradation
    if deg.get("online") and not steps and not deg.get("pipeline"):
        raise HiirError(f"{dataset} is an HR-only (online) dataset without a pipeline in its manifest; "
                        f"give {where}.degrade, e.g. [{{kind: noise, sigma: [15, 75]}}]")


def _train_scale(dataset: str, steps) -> int:
    from hiir.data_prep import load_manifest
    from hiir.data_prep.online import pipeline_scale

    m = load_manifest(dataset, verify=False)
    steps = steps or (m.degradation.get("pipeline") if m.degradation.get("online") else None)
    return pipeline_scale(steps) if steps else m.scale


def synthetic_val_sets(cfg: TrainConfig) -> list[str]:
    """Names of the val sets that are synthetic stand-ins (tagged on the run; studies' reports say so)."""
    from hiir.data_prep import load_manifest
    from hiir.platform.evaluate import dataset_name

    return [dataset_name(v) for v in cfg.data.val
            if load_manifest(v, verify=False).degradation.get("synthetic_stand_in")]


def check_storage(storage: str, need_bytes: int = 0) -> None:
    """An unwritable or full storage path fails now, with its name, not in a worker's first save."""
    if "://" in storage:
        return  # remote storage is checked by Ray's own filesystem layer at start
    path = Path(storage)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".hiir-write-check-") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise HiirError(f"storage path {path} is not usable: {exc.strerror or exc}") from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise HiirError(f"storage path {path} has {free / 2**20:.1f} MiB free; the checkpoints this run keeps "
                        f"need about {need_bytes / 2**20:.1f} MiB")


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """What one Ray Train worker of this run asks Ray for."""
    return {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if cfg.scaling.use_gpu else {})}


def workers_leave_this_node(cfg: TrainConfig, nodes: list[dict], here: str) -> bool:
    """Whether Ray may place this run's workers off the driver's node: the cluster has other nodes, or
    this one cannot hold them (an autoscaling head with `--num-cpus=0`, or no GPU when they need one)."""
    alive = [n for n in nodes if n.get("Alive")]
    if any(n["NodeID"] != here for n in alive):
        return True
    local = next((n.get("Resources", {}) for n in alive if n["NodeID"] == here), {})
    return any(local.get(k, 0) < v * cfg.scaling.num_workers for k, v in worker_resources(cfg).items())


def check_fits_locally(cfg: TrainConfig, address: str | None, *, extra_cpu: float = 0.0,
                       total: dict[str, float] | None = None) -> None:
    """The embedded Ray cannot grow: a run it cannot hold would wait for resources forever. Say so now.
    (A cluster may autoscale, so there a run waits for its nodes.)"""
    if address:
        return
    if total is None:
        import ray

        total = ray.cluster_resources()
    sc = cfg.scaling
    need = {k: v * sc.num_workers for k, v in worker_resources(cfg).items()}
    need["CPU"] += extra_cpu
    short = [f"{v:g} {k} (has {total.get(k, 0):g})" for k, v in need.items() if v > total.get(k, 0) + 1e-9]
    if short:
        fix = ("set scaling.use_gpu=false, or run on a machine with GPUs" if need.get("GPU", 0) > total.get("GPU", 0)
               else "lower scaling.num_workers or scaling.cpus_per_worker")
        raise HiirError(f"scaling.num_workers={sc.num_workers} x scaling.cpus_per_worker={sc.cpus_per_worker:g}"
                        f"{' with a GPU each' if sc.use_gpu else ''} needs {', '.join(short)} of the local Ray; {fix}")


def check_cluster_paths(cfg: TrainConfig, address: str | None, storage: list[str], tracking_uri: str, *,
                        nodes: list[dict] | None = None, here: str | None = None) -> None:
    """On a cluster whose workers run on other nodes, a path local to this node would scatter a run's
    checkpoints and MLflow records over the nodes' disks, and Ray Train would fail only at the first
    checkpoint a remote worker uploads, hours in. Refuse that now. The embedded Ray is one node."""
    if not address:
        return
    if nodes is None:
        import ray

        nodes, here = ray.nodes(), ray.get_runtime_context().get_node_id()
    if not workers_leave_this_node(cfg, nodes, here or ""):
        return
    for path in storage:
        if "://" not in path:
            raise HiirError(f"storage {path} is a directory on this node, but the Ray cluster at {address} runs "
                            "the workers on other nodes; set HIIR_STORAGE to storage every node reaches "
                            "(s3://bucket/hiir, gs://bucket/hiir, or file:///mnt/shared/hiir on a shared mount)")
    if tracking_uri.startswith(("sqlite:", "file:", "/", ".", "~")):  # not a server (nor `databricks`)
        raise HiirError(f"MLflow store {tracking_uri} is a file on this node, but the Ray cluster at {address} "
                        "logs from workers on other nodes; run an MLflow server and pass --tracking-uri "
                        "http://HOST:5000 (or set MLFLOW_TRACKING_URI)")


def checkpoint_bytes(cfg: TrainConfig, num_params: int) -> int:
    """Disk the kept checkpoints need: fp32 weights, two Adam moments, EMA and export (~5 copies)
    per checkpoint, `keep` of them plus the one being written."""
    return 5 * 4 * num_params * (cfg.checkpoint.keep + 1)


def fit_run(cfg: TrainConfig, *, workdir: Path, tracking_uri: str | None = None, storage: str | None = None,
            parent_run_id: str | None = None, tags: dict[str, str] | None = None,
            in_tune: bool = False, address: str | None = None) -> RunResult:
    """Validate, track, train. Returns the final metrics and where the exported weights are."""
    from hiir.platform import tracking

    workdir = Path(workdir).resolve()
    storage = storage or (os.environ.get("HIIR_STORAGE", "").rstrip("/") + "/runs" if os.environ.get("HIIR_STORAGE")
                          else str(workdir / "ray_results"))
    stats = model_stats(cfg)
    check_storage(storage, checkpoint_bytes(cfg, int(stats["model.num_params"])))
    cfg = resolve_datasets(cfg, workdir, verify=not in_tune)
    uri = tracking.resolve_tracking_uri(workdir, tracking_uri)
    tracking.check_reachable(uri)
    synthetic = synthetic_val_sets(cfg)
    if synthetic:
        tags = {**(tags or {}), SYNTHETIC_TAG: ",".join(synthetic)}

    init_ray(address)
    if not in_tune:  # a study checks its base config once, before its first trial
        check_fits_locally(cfg, address)
        check_cluster_paths(cfg, address, [storage], uri)
    run_id = _start_mlflow_run(cfg, uri, workdir, parent_run_id, tags or {}, stats)
    trainer = _trainer(cfg, storage, run_id, uri, workdir, in_tune)
    try:
        with _progress(uri, run_id, cfg.optim.max_steps, enabled=not in_tune):
            result = trainer.fit()
    except Exception as exc:
        if not in_tune:  # in a study, Tune's verdict (failed, or stopped by the scheduler) closes the run
            _end_mlflow_run(uri, run_id, "FAILED")
        raise HiirError(f"run {cfg.name!r} failed: {_root_cause(exc)}") from exc
    metrics = dict(result.return_value or result.metrics or {})
    export = _export(result, workdir / "runs" / cfg.name)
    _finish_mlflow_run(uri, run_id, workdir, export)
    return RunResult(cfg.name, run_id, metrics, export, storage)


# ---------------------------------------------------------------- pieces


def _trainer(cfg: TrainConfig, storage: str, run_id: str | None, uri: str, workdir: Path, in_tune: bool):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hiir.platform.worker import train_loop_per_worker

    callbacks = []
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())  # propagates worker reports to Tune (ASHA needs them)
    resources = worker_resources(cfg)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "run_id": run_id, "tracking_uri": uri,
                           "spool_dir": str(workdir / "spool")},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.name, storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            worker_runtime_env={"env_vars": worker_env()}, callbacks=callbacks),
    )


def _start_mlflow_run(cfg: TrainConfig, uri: str, workdir: Path, parent_run_id: str | None,
                      tags: dict[str, str], stats: dict[str, float]) -> str:
    from hiir.platform import tracking

    client = tracking.client(uri)
    exp_id = tracking.ensure_experiment(client, cfg.tracking.experiment, workdir)
    if parent_run_id:
        tags = {**tags, tracking.PARENT_TAG: parent_run_id}
    run_id, resumed = tracking.find_or_create_run(client, exp_id, cfg.name, tags)
    if not resumed:
        model = dataclasses.asdict(cfg.model_config())
        params = {**flatten(cfg.to_dict()), **{f"resolved_model.{k}": v for k, v in model.items()}, **stats}
        for chunk in _chunks(list(params.items()), 100):
            tracking.locked_retry(client.log_batch, run_id, params=[tracking.param(k, v) for k, v in chunk])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "train_config.json"
            path.write_text(json.dumps(cfg.to_dict(), indent=1))
            tracking.locked_retry(client.log_artifact, run_id, str(path))
    return run_id


def model_stats(cfg: TrainConfig) -> dict[str, float]:
    """Parameter count and training FLOPs per step (forward + backward ~ 3x forward, all workers)."""
    import torch

    from hiir.models import build
    from hiir.models.summary import model_flops

    model_cfg = cfg.model_config()
    with torch.device("meta"):  # counts without allocating, so the 110M preset costs nothing here
        model = build(model_cfg)
        p = cfg.data.lq_patch
        forward = model_flops(model, (1, model_cfg.in_channels, p, p))
    return {"model.num_params": model.num_params(),
            "flops_per_step": 3 * forward * cfg.data.batch_size * cfg.scaling.num_workers}


def _finish_mlflow_run(uri: str, run_id: str, workdir: Path, export: Path | None) -> None:
    from mlflow.tracking import MlflowClient

    from hiir.platform.tracking import RunLogger, locked_retry

    spool = RunLogger(uri, run_id, workdir / "spool")
    try:
        if export:
            for name in ("model.safetensors", "model.json"):
                spool.artifact(export / name, "model")
        left_clean = spool.flush()
        locked_retry(MlflowClient(uri).set_terminated, run_id, "FINISHED")
    except Exception as exc:  # noqa: BLE001 (the weights are on disk; tracking may be down)
        log.warning("could not finish MLflow run %s (%s); records stay in %s", run_id, exc, spool.spool)
        return
    if not left_clean:
        log.warning("MLflow records of run %s could not all be sent; they are kept in %s", run_id, spool.spool)


def _end_mlflow_run(uri: str, run_id: str, status: str) -> None:
    """Mark a run ended unless something already closed it."""
    from mlflow.tracking import MlflowClient

    from hiir.platform.tracking import locked_retry

    try:
        client = MlflowClient(uri)
        if locked_retry(client.get_run, run_id).info.status == "RUNNING":
            locked_retry(client.set_terminated, run_id, status)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, exc)


@contextlib.contextmanager
def _progress(uri: str, run_id: str, total: int, *, enabled: bool, every_s: float = 3.0):
    """A progress bar for `hiir train`, fed by the `step` metric rank 0 logs (workers may be remote)."""
    if not enabled:
        yield
        return
    import threading

    from tqdm import tqdm

    from hiir.platform.tracking import client as mlflow_client

    stop = threading.Event()

    def poll() -> None:
        tracker = mlflow_client(uri)
        with tqdm(total=total, desc="train", unit="step", dynamic_ncols=True) as bar:
            while not stop.wait(every_s):
                try:
                    metrics = tracker.get_run(run_id).data.metrics
                except Exception:  # noqa: BLE001 (tracking down: the bar just pauses)
                    continue
                bar.update(int(metrics.get("step", bar.n)) - bar.n)
                if "loss" in metrics:
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 5)


def _export(result, target: Path) -> Path | None:
    """Copy the final weights out of the last checkpoint, atomically, into <workdir>/runs/<name>/.
    Only these files are read, not the whole checkpoint (whose ZeRO shards may be GBs on S3)."""
    import pyarrow.fs as pafs

    if result.checkpoint is None:
        return None
    fs, root = result.checkpoint.filesystem, result.checkpoint.path
    names = [n for n in ("model.safetensors", "model.json", "train_config.json", "meta.json")
             if fs.get_file_info(f"{root}/{n}").type == pafs.FileType.File]
    if "model.safetensors" not in names:
        return None
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in names:
        with fs.open_input_stream(f"{root}/{name}") as src, open(tmp / name, "wb") as dst:
            shutil.copyfileobj(src, dst, 2**22)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def _root_cause(exc: BaseException) -> str:
    """The innermost user-facing message of a Ray failure chain."""
    seen = exc
    while seen.__cause__ is not None or getattr(seen, "cause", None) is not None:
        seen = seen.__cause__ or seen.cause
    text = str(seen).strip().splitlines()
    return text[-1] if text else seen.__class__.__name__


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]
