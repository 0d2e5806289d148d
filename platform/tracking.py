"""MLflow tracking: the one module that talks to MLflow. `Store` is the facade; `RunLogger` logs from rank 0.

- The store defaults to `sqlite:///<workdir>/mlflow.db` with artifacts in `<workdir>/mlartifacts`;
  `MLFLOW_TRACKING_URI` (or `--tracking-uri`) points at a server instead.
- `Store` owns the `MlflowClient`: a new SQLite store is created under a file lock (concurrent first
  use races the schema migrations), and every call waits out SQLite's single-writer lock
  (`locked_retry`), so several studies can share one embedded store.
- SQLite allows one writer at a time, so experiments and runs are created once, in the driver, and
  workers only log into an existing run id.
- A tracking server that goes away mid-run must not kill training: `RunLogger` keeps every record it
  could not send in a local JSONL spool, warns once with the spool's path, and replays the spool the
  next time a call goes through (`hiir` also replays leftovers when the run ends).
- A finished run's weights become an MLflow model (`Store.log_model`), linked to the run, so the experiment's
  Models tab lists it; a study's best is registered as `hiir-<study>` (`Store.register`). When MLflow is
  down at the end of a run, the run is tagged (through the spool) that its model was not logged.
- Experiments are tagged as training experiments (`mlflow.experimentKind`).
- The tag names below are the MLflow layout the README documents; no other module spells them.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.entities import LoggedModelOutput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from PIL import Image

from hiir.data_prep.files import write_atomic
from hiir.platform.errors import HiirError

log = logging.getLogger("hiir.tracking")

# ---- tag names ------------------------------------------------------------------------------------
PARENT_TAG = "mlflow.parentRunId"  # a trial's study run: the UI nests trials under it
NOTE_TAG = "mlflow.note.content"  # the study's question, shown as the parent run's description
RUN_NAME_TAG = "hiir.run_name"  # the run a re-run of the same name continues
STUDY_TAG = "hiir.study"  # the study's name, on the parent run and every trial
KIND_TAG = "hiir.kind"  # "study" on a study's parent run
SCALE_TAG = "hiir.scale"  # the study's scale block (full, smoke, ...)
TRIAL_TAG = "hiir.trial_id"  # Tune's trial id
AXIS_TAG = "hiir.axis."  # prefix: one tag per search axis, hiir.axis.optim.lr = "0.002"
ERROR_TAG = "hiir.error"  # the last line of a failed trial's error
STOPPED_EARLY_TAG = "hiir.stopped_early"  # "true" on a trial the scheduler stopped (status KILLED)
STOPPED_AT_TAG = "hiir.stopped_at"  # where ASHA stopped it, in time_attr units (the step): "20"
COMPARED_WITH_TAG = "hiir.compared_with"  # the trial ids already in its rung, sorted, comma-separated
STOP_REASON_TAG = "hiir.stop_reason"  # its value against the rung's cutoff, one line
STOP_GROUP_TAG = "hiir.stop_group"  # its ASHA group: "params=119331 max_t=31", "params=... flops=1e+15 max_t=..."
SYNTHETIC_TAG = "hiir.synthetic_val"  # val sets that are synthetic stand-ins, comma-separated
RESUMED_TAG = "hiir.resumed_from_step"  # the checkpoint step a resumed run started from
SKIPPED_TAG = "hiir.skipped_checkpoints"  # checkpoints refused on resume, comma-separated
WORKER_NODES_TAG = "hiir.worker_nodes"  # where the ranks run: "rank0=<Ray node id>,rank1=<id>,..."
VAL_IMAGES = "val_images.json"  # artifact of a trial: its final headline PSNR per val image, per set
BASELINE_TAG = "hiir.baseline"  # on a study run: what its baseline_* metrics score (bicubic, or the input)
BASELINE_PREFIX = "baseline/"  # a study run's metrics of the baseline on the val sets: baseline/val/<set>/psnr_y
LAW_TAG = "hiir.scaling_law"  # on a study run: "no law: N sizes", or what each size law was fitted on
TRANSFER_FROM_TAG = "hiir.transfer_from"  # on a study run: the small study (and its run, trial) it took values from
TRANSFER_TAG = "hiir.transfer."  # prefix: one tag per value taken, hiir.transfer.optim.lr = "0.002"
TRANSFER_PARAMETRIZATION_TAG = "hiir.transfer_parametrization"  # on a study run: the values' parametrization
TRANSFER_BASE_DIM_TAG = "hiir.transfer_base_dim"  # the width they were found at (μP: the source's mup_base_dim)
MUP_RULES_TAG = "hiir.mup_rules"  # on a μP run (and a study run given μP values): models.mup.MUP_RULES_VERSION
MODEL_TAG = "hiir.model"  # on a run: "models:/<model id>" of its logged model, or "not logged: <why>; <weights>"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's experiment kind (3.17's UI follows its own switch)
TRAINING_KIND = "custom_model_development"  # the kind for model training
METRIC_TAG = "hiir.metric"  # on a registered version: the study's metric, its value and mode, "val_psnr=21.3 (max)"
STUDY_RUN_TAG = "hiir.study_run"  # on a registered version: the study run it is the best trial of
MODEL_NAME = "model"  # a run's logged model when its run name cannot name it


def registered_name(study: str) -> str:
    """The registered model that holds a study's best trial, one version per study run."""
    return f"hiir-{study}"


def trial_tags(study: str, trial_id: str, params: dict[str, Any]) -> dict[str, str]:
    """A study trial's tags: the study, the trial id and one tag per search axis."""
    return {STUDY_TAG: study, TRIAL_TAG: trial_id, **{f"{AXIS_TAG}{k}": str(v) for k, v in params.items()}}


def trial_axes(tags: dict[str, str]) -> dict[str, str]:
    """The search axes back from a trial run's tags: {"optim.lr": "0.002"}."""
    return {k[len(AXIS_TAG):]: v for k, v in tags.items() if k.startswith(AXIS_TAG)}


# ---- the store ------------------------------------------------------------------------------------
def default_tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(workdir: Path, tracking_uri: str | None) -> str:
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(workdir)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # relative SQLite paths break in Ray workers, which run in another cwd
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    if uri.startswith(("file:", "./", "/")) or "://" not in uri:
        raise HiirError(f"tracking URI {uri!r} is a file store, which MLflow has deprecated; "
                        "use sqlite:///path/mlflow.db or an http(s):// server")
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail before any worker starts if the tracking server cannot be reached."""
    if uri.startswith("sqlite:"):
        path = Path(uri[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise HiirError(f"MLflow store directory {path.parent} is not writable")
        return
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (user-given URI)
                if resp.status == 200:
                    return
        except OSError as exc:
            raise HiirError(f"MLflow tracking server {uri} is unreachable ({exc.__class__.__name__}: "
                            f"{getattr(exc, 'reason', exc)}); start it or unset MLFLOW_TRACKING_URI") from None
        raise HiirError(f"MLflow tracking server {uri} answered /health with an error")


def locked_retry(fn, *args, attempts: int = 40, **kwargs):
    """Call `fn`, waiting out SQLite's single-writer lock ("database is locked") with backoff.

    Several studies may share one embedded store; each call waits its turn instead of failing.
    """
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 (MLflow wraps SQLAlchemy's OperationalError)
            if "database is locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


class Store:
    """One tracking URI and the operations hiir needs on it; every call goes through `locked_retry`.

    Runs are MLflow `Run` entities and metric histories lists of MLflow `Metric`s; statuses are MLflow's
    strings (RUNNING, FINISHED, KILLED, FAILED).
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            db.parent.mkdir(parents=True, exist_ok=True)
            with open(db.with_name(db.name + ".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent first use would race the migrations
                locked_retry(lambda: MlflowClient(uri).search_experiments(max_results=1))
        self._client = MlflowClient(uri)

    # ---- experiments and runs
    def study_experiments(self) -> dict[str, str]:
        """Experiment name -> id, for every experiment that holds a study's run, newest study first."""
        runs = locked_retry(self._client.search_runs, [e.experiment_id for e in locked_retry(
            self._client.search_experiments)], filter_string=f"tags.`{KIND_TAG}` = 'study'",
            order_by=["attributes.start_time DESC"], max_results=1000)
        ids = list(dict.fromkeys(r.info.experiment_id for r in runs))
        return {locked_retry(self._client.get_experiment, i).name: i for i in ids}

    def experiment(self, name: str, workdir: Path) -> str:
        """The experiment's id, created if missing with an absolute artifact location (never ./mlruns), and
        tagged as a training experiment (one made before hiir tagged them is tagged when next used)."""
        exp = locked_retry(self._client.get_experiment_by_name, name)
        if exp is not None:
            if EXPERIMENT_KIND_TAG not in exp.tags:
                locked_retry(self._client.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
            return exp.experiment_id
        location = None if self.uri.startswith("http") else (Path(workdir).resolve() / "mlartifacts").as_uri()
        try:
            return locked_retry(self._client.create_experiment, name, artifact_location=location,
                                tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
        except Exception as exc:  # noqa: BLE001 (another process created it first)
            exp = locked_retry(self._client.get_experiment_by_name, name)
            if exp is None:
                raise HiirError(f"cannot create MLflow experiment {name!r}: {exc}") from None
            return exp.experiment_id

    def find_or_create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> tuple[str, bool]:
        """(run_id, resumed): a run with the same name is reused, as Ray Train resumes its checkpoint,
        so the resumed (or extended) run continues the same curves."""
        found = locked_retry(self._client.search_runs, [experiment_id],
                             filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
                             order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            locked_retry(self._client.update_run, found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id, True
        run = locked_retry(self._client.create_run, experiment_id, run_name=run_name,
                           tags={RUN_NAME_TAG: run_name, **tags})
        return run.info.run_id, False

    def create_study_run(self, experiment_id: str, study: str, *, scale: str, question: str,
                         params: dict[str, Any]) -> str:
        """The study's parent run, which every trial run names in PARENT_TAG."""
        run = locked_retry(self._client.create_run, experiment_id, run_name=study, tags={
            STUDY_TAG: study, KIND_TAG: "study", SCALE_TAG: scale, NOTE_TAG: question})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    # ---- writes
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Params in batches of 100; values are cut at MLflow's 6000-character limit instead of failing (with a
        warning naming them; the run's train_config.json artifact holds them whole)."""
        cut = [k for k, v in params.items() if len(str(v)) > 6000]
        if cut:
            log.warning("params %s are longer than MLflow's 6000 characters: logged cut", ", ".join(cut))
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            locked_retry(self._client.log_batch, run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, values: dict[str, float], step: int, timestamp_ms: int) -> None:
        metrics = [Metric(k, float(v), timestamp_ms, step) for k, v in values.items()]
        locked_retry(self._client.log_batch, run_id, metrics=metrics, synchronous=True)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        locked_retry(self._client.log_batch, run_id, tags=batch, synchronous=True)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        locked_retry(self._client.log_artifact, run_id, str(path), artifact_path)

    def log_model(self, run_id: str, arguments: dict[str, Any], *, step: int) -> str:
        """Log an MLflow pyfunc model (`arguments` are `mlflow.pyfunc.log_model`'s: the code file, artifacts,
        signature, pinned requirements) as the run's output at `step`, with the run's val metrics at that step
        (the Models tab shows them). Returns its model id; the run is tagged with its `models:/` URI.

        The logged model is created here, through this store's client, and then filled: what `log_model`
        would do from an active run, without touching the run's status or resolving git context tags.
        No input example is passed: MLflow would load and run the model to validate it, 1-2 s per trial.
        """
        run = self.get_run(run_id)
        name = re.sub(r"[/:.%\"']", "-", run.info.run_name or "") or MODEL_NAME  # what logged model names allow
        model = locked_retry(self._client.create_logged_model, run.info.experiment_id, name=name,
                             source_run_id=run_id)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per artifact is noise
        with _fluent_tracking_uri(self.uri), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            locked_retry(mlflow.pyfunc.log_model, name=name, model_id=model.model_id, **arguments)
        locked_retry(self._client.log_outputs, run_id, [LoggedModelOutput(model.model_id, step)])
        val = [key for key in run.data.metrics if key.startswith("val")]
        at_step = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model.model_id, run_id=run_id)
                   for key in val for m in self.history(run_id, key) if m.step == step]
        if at_step:  # the very records the run holds (same time and step), now also the model's
            locked_retry(self._client.log_batch, run_id, metrics=at_step, synchronous=True)
        self.set_tags(run_id, {MODEL_TAG: f"models:/{model.model_id}"})
        return model.model_id

    def register(self, name: str, run_id: str, tags: dict[str, str]) -> str:
        """A new version of registered model `name` from the run's logged model; returns its version."""
        model_id = self.model_id(self.get_run(run_id))
        if model_id is None:
            raise HiirError(f"run {run_id} has no logged model")
        model = locked_retry(self._client.get_logged_model, model_id)
        try:
            locked_retry(self._client.create_registered_model, name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        # The model's own storage location as the source: a `models:/<id>` source makes the registry
        # resolve it through the process's default tracking URI, not this store's.
        version = locked_retry(self._client.create_model_version, name, model.artifact_location, run_id=run_id,
                               tags=tags, model_id=model_id)
        return str(version.version)

    def close(self, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
        """Tag the run (why it ended), then end it with `status`."""
        if tags:
            self.set_tags(run_id, tags)
        locked_retry(self._client.set_terminated, run_id, status)

    def end_if_running(self, run_id: str, status: str) -> bool:
        """End the run with `status` unless something already closed it; True when this call ended it."""
        if self.get_run(run_id).info.status != "RUNNING":
            return False
        locked_retry(self._client.set_terminated, run_id, status)
        return True

    # ---- reads
    def get_run(self, run_id: str):
        return locked_retry(self._client.get_run, run_id)

    def children(self, parent_run_id: str, max_results: int = 5000) -> list:
        """The runs that name `parent_run_id` as their parent (a study's trials)."""
        parent = self.get_run(parent_run_id)
        return list(locked_retry(self._client.search_runs, [parent.info.experiment_id], max_results=max_results,
                                 filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'"))

    def json_artifact(self, run_id: str, path: str) -> Any:
        """A JSON artifact of a run, parsed; None when the run has none at `path` (or it cannot be read)."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per trial is noise
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = locked_retry(self._client.download_artifacts, run_id, path, tmp)
                return json.loads(Path(local).read_text())
            except Exception:  # noqa: BLE001 (a trial that never evaluated has no such artifact)
                return None

    def history(self, run_id: str, key: str) -> list:
        """Every logged value of one metric, in logging order."""
        return locked_retry(self._client.get_metric_history, run_id, key)

    @staticmethod
    def model_id(run) -> str | None:
        """The id of the run's logged model (its latest, if several); None for a run that has none: one whose
        end MLflow missed, or one logged before hiir logged models (its weights are plain `model/` files)."""
        outputs = run.outputs.model_outputs if run.outputs else []
        return max(outputs, key=lambda o: o.step).model_id if outputs else None


@contextlib.contextmanager
def _fluent_tracking_uri(uri: str):
    """`mlflow.pyfunc.log_model` writes where the fluent API's tracking URI points. Point it at `uri` for the
    call, then back: `set_tracking_uri` also exports MLFLOW_TRACKING_URI, which every later `hiir` call in
    this process (and its subprocesses) would read as the user's choice."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None unsets both


class RunLogger:
    """Logs into one existing run; never raises on tracking failures during training."""

    def __init__(self, tracking_uri: str, run_id: str, spool_dir: Path) -> None:
        # A dead server must cost a training step milliseconds, not MLflow's default minutes of retries.
        for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")):
            os.environ.setdefault(key, value)
        self.store = Store(tracking_uri)
        self.run_id, self.uri = run_id, tracking_uri
        self.spool = Path(spool_dir) / f"{run_id}.jsonl"
        self._warned = False

    # --------------------------------------------------------------- public
    def start_system_metrics(self, interval_s: float = 10.0) -> None:
        """CPU, memory, disk, network (and GPU) utilisation, sampled by MLflow's own monitor thread."""
        try:
            self._system = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s, resume_logging=True,
                                                tracking_uri=self.uri)
            self._system.start()
        except Exception as exc:  # noqa: BLE001 (psutil missing or server down: training goes on)
            self._system = None
            log.warning("MLflow system metrics are off: %s", exc)

    def stop_system_metrics(self) -> None:
        if getattr(self, "_system", None) is not None:
            try:
                self._system.finish()
            except Exception as exc:  # noqa: BLE001 (its thread talks to the server, which may be down: training ends)
                log.warning("could not stop MLflow system metrics: %s", exc)
            self._system = None

    def metrics(self, values: dict[str, float], step: int) -> None:
        self._send({"kind": "metrics", "values": values, "step": step, "ts": int(time.time() * 1000)})

    def tags(self, values: dict[str, str]) -> None:
        self._send({"kind": "tags", "values": values})

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._send({"kind": "artifact", "path": str(path), "artifact_path": artifact_path})

    def model(self, export_dir: Path, arguments: dict[str, Any], *, step: int) -> bool:
        """Log the exported weights as the run's MLflow model (`Store.log_model`). When MLflow cannot take it,
        the weights stay in `export_dir`, and the run is tagged, through the spool when MLflow is down, that
        its model was not logged. True when it was."""
        try:
            self.store.log_model(self.run_id, arguments, step=step)
            return True
        except Exception as exc:  # noqa: BLE001 (the weights are on disk; tracking may be down)
            first = str(exc).strip().splitlines()
            reason = f"{exc.__class__.__name__}: {first[0][:200]}" if first else exc.__class__.__name__
            log.warning("MLflow model of run %s not logged (%s); the weights stay in %s", self.run_id, reason,
                        export_dir)
            self.tags({MODEL_TAG: f"not logged: {reason}; the weights are in {export_dir}"})
            return False

    def image(self, array, artifact_file: str) -> None:
        self._file(artifact_file, lambda path: Image.fromarray(array).save(path))

    def json_artifact(self, data: Any, artifact_file: str) -> None:
        self._file(artifact_file, lambda path: path.write_text(json.dumps(data, indent=1)))

    def _file(self, artifact_file: str, write) -> None:
        """Write an artifact into the run's local folder (kept for the spool's replay), then log it."""
        local = self.spool.parent / self.run_id / artifact_file
        local.parent.mkdir(parents=True, exist_ok=True)
        write(local)
        self.artifact(local, str(Path(artifact_file).parent) if Path(artifact_file).parent != Path(".") else None)

    def flush(self) -> bool:
        """Replay the spool; True when nothing is left behind."""
        if not self.spool.exists():
            return True
        pending = [json.loads(line) for line in self.spool.read_text().splitlines() if line.strip()]
        left = []
        for i, record in enumerate(pending):
            try:
                self._apply(record)
            except Exception:  # noqa: BLE001 (still down: keep the rest in order)
                left = pending[i:]
                break
        write_atomic(self.spool, "".join(json.dumps(r) + "\n" for r in left))
        if not left:
            self.spool.unlink()
            if self._warned:
                log.warning("MLflow is back: replayed the records spooled while %s was unreachable", self.uri)
        return not left

    # --------------------------------------------------------------- internals
    def _send(self, record: dict[str, Any]) -> None:
        if self.spool.exists() and not self.flush():
            self._spool(record)
            return
        try:
            self._apply(record)
        except Exception as exc:  # noqa: BLE001 (training goes on whatever the tracking server does)
            self._spool(record, exc)

    def _apply(self, record: dict[str, Any]) -> None:
        if record["kind"] == "metrics":
            self.store.log_metrics(self.run_id, record["values"], record["step"], record["ts"])
        elif record["kind"] == "tags":
            self.store.set_tags(self.run_id, record["values"])
        else:
            self.store.log_artifact(self.run_id, record["path"], record["artifact_path"])

    def _spool(self, record: dict[str, Any], exc: Exception | None = None) -> None:
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool, "a") as f:
            f.write(json.dumps(record) + "\n")
        if not self._warned:
            self._warned = True
            reason = f" ({exc.__class__.__name__})" if exc else ""
            log.warning("MLflow at %s is unreachable%s; training goes on and records are kept in %s "
                        "to be replayed when it is back", self.uri, reason, self.spool)

