"""`fit_run`: one Ray Train run, the same for `hiir train` and for every trial of a study.

It runs the pre-start checks (`checks`), creates the MLflow run (SQLite has one writer: runs are created
here, workers only log into them), then builds and fits a `TorchTrainer` whose workers run
`worker.train_loop_per_worker`. A re-run with the same name auto-restores from its latest checkpoint (Train
V2 semantics), and the MLflow run with that name is continued. At the end the final weights are copied out
of the last checkpoint into `<workdir>/runs/<name>/` and logged as the run's MLflow model
(`evaluation.mlflow_model`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from tqdm import tqdm

from hiir.data_prep.files import atomic_path
from hiir.models.mup import MUP_RULES_VERSION
from hiir.platform import tracking
from hiir.platform.config import TrainConfig, flatten
from hiir.platform.errors import HiirError
from hiir.platform.evaluation.mlflow_model import log_arguments
from hiir.platform.train.checks import (
    apply_budget,
    check_cluster_paths,
    check_fits_locally,
    check_patch,
    check_storage,
    checkpoint_bytes,
    model_stats,
    resolve_datasets,
    synthetic_val_sets,
)
from hiir.platform.train.runtime import init_ray, process_started_at, run_storage, worker_env, worker_resources
from hiir.platform.train.worker import train_loop_per_worker

log = logging.getLogger("hiir.train")
_returned_at = [0.0]  # when this process's last fit_run returned: Tune may run the next trial in the same process


@dataclass
class RunResult:
    name: str
    run_id: str | None
    metrics: dict[str, Any]
    export_dir: Path | None


def fit_run(cfg: TrainConfig, *, workdir: Path, tracking_uri: str | None = None, storage: str | None = None,
            parent_run_id: str | None = None, tags: dict[str, str] | None = None,
            in_tune: bool = False, stream_reports: bool = False, address: str | None = None) -> RunResult:
    """Validate, track, train. Returns the final metrics and where the exported weights are.

    In a study (`in_tune`), `stream_reports` hands each worker report to Tune as it happens, which a scheduler
    needs; without it the trial's return value is its one result, and Tune polls no report queue for it."""
    entered = time.time()
    workdir = Path(workdir).resolve()
    storage = storage or run_storage(workdir)
    check_patch(cfg)
    stats = model_stats(cfg)
    cfg = apply_budget(cfg, stats["flops_per_step"])  # a FLOP budget becomes this size's step count
    check_storage(storage, checkpoint_bytes(cfg, int(stats["model.num_params"])))
    cfg = resolve_datasets(cfg, workdir, verify=not in_tune)
    uri = tracking.resolve_tracking_uri(workdir, tracking_uri)
    tracking.check_reachable(uri)
    synthetic = synthetic_val_sets(cfg)
    if synthetic:
        tags = {**(tags or {}), tracking.SYNTHETIC_TAG: ",".join(synthetic)}

    init_ray(address)
    if not in_tune:  # a study checks its base config once, before its first trial
        check_fits_locally(cfg, address)
        check_cluster_paths(cfg, address, [storage], uri)
    run_id = _start_mlflow_run(cfg, uri, workdir, parent_run_id, tags or {}, stats)
    trainer = _trainer(cfg, storage, run_id, uri, workdir, stream_reports)
    fit_called = time.time()
    try:
        with _progress(uri, run_id, cfg.optim.max_steps, enabled=not in_tune):
            result = trainer.fit()
    except Exception as exc:
        if not in_tune:  # in a study, Tune's verdict (failed, or stopped by the scheduler) closes the run
            _end_mlflow_run(uri, run_id, "FAILED")
        raise HiirError(f"run {cfg.name!r} failed: {_root_cause(exc)}") from exc
    fit_done = time.time()
    returned = result.return_value or {}  # rank 0's: {"metrics": ..., "timeline": ...}
    metrics = dict(returned.get("metrics") or result.metrics or {})
    export = _export(result, workdir / "runs" / cfg.name)
    _log_timeline(uri, run_id, int(metrics.get("step", cfg.optim.max_steps)),
                  _timeline(entered, fit_called, fit_done, returned.get("timeline"), in_tune))
    _finish_mlflow_run(uri, run_id, workdir, export, step=int(metrics.get("step", cfg.optim.max_steps)))
    _returned_at[0] = time.time()
    return RunResult(cfg.name, run_id, metrics, export)


def _trainer(cfg: TrainConfig, storage: str, run_id: str | None, uri: str, workdir: Path, stream_reports: bool):
    # TuneReportCallback hands worker reports to Tune through a queue actor, which Tune's session polls every 0.2 s
    # while the trial runs: ~1.6% of a 2-core machine for two trials (bench/RESULTS.md, "study overhead").
    callbacks = [TuneReportCallback()] if stream_reports else []
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
    store = tracking.Store(uri)
    exp_id = store.experiment(cfg.tracking.experiment, workdir)
    if parent_run_id:
        tags = {**tags, tracking.PARENT_TAG: parent_run_id}
    if cfg.resolved_model.parametrization == "mup":  # which μP rules its LRs mean (--transfer-from checks them)
        tags = {**tags, tracking.MUP_RULES_TAG: str(MUP_RULES_VERSION)}
    run_id, resumed = store.find_or_create_run(exp_id, cfg.name, tags)
    if not resumed:
        model_cfg = cfg.resolved_model
        model = {**dataclasses.asdict(model_cfg), "crosses_patches": model_cfg.crosses_patches}
        store.log_params(run_id, {**flatten(cfg.to_dict()), **{f"resolved_model.{k}": v for k, v in model.items()},
                                  **stats})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "train_config.json"
            path.write_text(json.dumps(cfg.to_dict(), indent=1))
            store.log_artifact(run_id, path)
    return run_id


def _finish_mlflow_run(uri: str, run_id: str, workdir: Path, export: Path | None, *, step: int) -> None:
    """Replay what the workers spooled, log the exported weights as the run's MLflow model (or tag the run
    that it was not logged), and end the run."""
    spool = tracking.RunLogger(uri, run_id, workdir / "spool")
    try:
        left_clean = spool.flush()
        if export:
            spool.model(export, log_arguments(export), step=step)
        spool.store.close(run_id, "FINISHED")
    except Exception as exc:  # noqa: BLE001 (the weights are on disk; tracking may be down)
        log.warning("could not finish MLflow run %s (%s); records stay in %s", run_id, exc, spool.spool)
        return
    if not left_clean:
        log.warning("MLflow records of run %s could not all be sent; they are kept in %s", run_id, spool.spool)


def _timeline(entered: float, fit_called: float, fit_done: float, worker: dict[str, float] | None,
              in_tune: bool) -> dict[str, float]:
    """Where the run's wall time went, in seconds: the `time/*` metrics (bench/study_overhead.py reads them).
    `worker` holds rank 0's stamps (`worker.train_loop_per_worker`); on a cluster, ray_start and teardown
    also hold the clock difference between the driver's node and rank 0's."""
    out = {"time/prestart_s": fit_called - entered}  # checks, datasets, the MLflow run
    if in_tune:  # from the trial's process start (its imports), or from its previous trial's end
        out["time/trial_setup_s"] = entered - max(process_started_at(), _returned_at[0])
    if worker:
        out.update({
            "time/ray_start_s": worker["started"] - fit_called,  # Train controller, placement, worker process
            "time/worker_setup_s": worker["loop"] - worker["started"],  # imports, torch.distributed
            "time/engine_init_s": worker["engine"] - worker["loop"],  # model, engine, EMA
            "time/data_open_s": worker["data"] - worker["engine"],
            "time/tracking_init_s": worker["tracking"] - worker["data"],  # MLflow logger, tags, node ids
            "time/steps_s": worker["ended"] - worker["tracking"] - worker["validation_s"] - worker["checkpoint_s"],
            "time/validation_s": worker["validation_s"],
            "time/checkpoint_s": worker["checkpoint_s"],  # engine save, weights files, integrity, Ray report
            "time/teardown_s": fit_done - worker["ended"],  # Ray Train noticing the end, stopping the workers
        })
    out["time/export_s"] = time.time() - fit_done
    return out


def _log_timeline(uri: str, run_id: str, step: int, values: dict[str, float]) -> None:
    try:
        tracking.Store(uri).log_metrics(run_id, values, step, int(time.time() * 1000))
    except Exception as exc:  # noqa: BLE001 (timings are a diagnostic; tracking may be down)
        log.warning("could not log the timeline of MLflow run %s: %s", run_id, exc)


def _end_mlflow_run(uri: str, run_id: str, status: str) -> None:
    """Mark a run ended unless something already closed it."""
    try:
        tracking.Store(uri).end_if_running(run_id, status)
    except Exception as exc:  # noqa: BLE001 (the run's own failure is the error to raise; tracking may be down)
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, exc)


@contextlib.contextmanager
def _progress(uri: str, run_id: str, total: int, *, enabled: bool, every_s: float = 3.0):
    """A progress bar for `hiir train`, fed by the `step` metric rank 0 logs (workers may be remote)."""
    if not enabled:
        yield
        return
    stop = threading.Event()

    def poll() -> None:
        store = tracking.Store(uri)
        with tqdm(total=total, desc="train", unit="step", dynamic_ncols=True) as bar:
            while not stop.wait(every_s):
                try:
                    metrics = store.get_run(run_id).data.metrics
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
    if result.checkpoint is None:
        return None
    fs, root = result.checkpoint.filesystem, result.checkpoint.path
    names = [n for n in ("model.safetensors", "model.json", "train_config.json", "meta.json")
             if fs.get_file_info(f"{root}/{n}").type == pafs.FileType.File]
    if "model.safetensors" not in names:
        return None
    with atomic_path(target) as tmp:
        tmp.mkdir()
        for name in names:
            with fs.open_input_stream(f"{root}/{name}") as src, open(tmp / name, "wb") as dst:
                shutil.copyfileobj(src, dst, 2**22)
    return target


def _root_cause(exc: BaseException) -> str:
    """The innermost user-facing message of a Ray failure chain."""
    seen = exc
    while seen.__cause__ is not None or getattr(seen, "cause", None) is not None:
        seen = seen.__cause__ or seen.cause
    text = str(seen).strip().splitlines()
    return text[-1] if text else seen.__class__.__name__
