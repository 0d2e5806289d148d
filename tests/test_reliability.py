"""Faults a cluster throws at a scaling study, provoked for real on loopback and local processes.

Covered elsewhere (not repeated here): a worker SIGKILLed mid-step and the run resumed, then its newest
checkpoint truncated on disk (tests/test_train.py);
a study driver killed mid-way (tests/test_study_run.py); corrupt, truncated and escaping shards, odd image
modes and interrupted builds (tests/test_data.py).
"""
from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hiir.platform.errors import HiirError
from hiir.platform.tracking import Store, default_tracking_uri
from hiir.platform.train.checkpoint import verify
from hiir.platform.train.fit import fit_run

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- checkpoints


def test_worker_killed_while_validating_then_while_saving_completes(workdir, train_config, tmp_path, monkeypatch,
                                                                    checkpoint_dirs):
    # One run, two faults: rank 0 dies validating at step 10 (no checkpoint yet: the retry starts over),
    # then rank 1 dies writing the step-20 checkpoint (the retry resumes from step 10). Under ZeRO-3 in bf16,
    # what `precision: auto` picks on a GPU (DeepSpeed runs it on the CPU too): each rank saves its own shards.
    cfg = train_config("kill-validate-save", max_failures=2, engine={"zero_stage": 3, "precision": "bf16"})
    markers = {phase: tmp_path / f"killed-{phase}" for phase in ("validate", "save")}
    monkeypatch.setenv("HIIR_FAULT", f"validate:0:10:{markers['validate']};save:1:20:{markers['save']}")
    result = fit_run(cfg, workdir=workdir)
    assert all(m.exists() for m in markers.values()) and result.metrics["step"] == 20
    assert (result.export_dir / "model.safetensors").is_file()
    # Whatever was half-written when the worker died is refused by its integrity record, never used.
    ckpts = checkpoint_dirs(workdir / "ray_results" / "kill-validate-save")
    assert ckpts, "the run left no checkpoint to check"
    refused = []
    for ckpt in ckpts:
        try:
            verify(ckpt)
        except HiirError:
            refused.append(ckpt.name)
    assert ckpts[-1].name not in refused, refused  # the one the run ended on, and exported from, is whole


# ---------------------------------------------------------------- storage


def test_unusable_storage_fails_before_any_worker_starts(workdir, train_config, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(HiirError, match="storage path .*a-file"):
        fit_run(train_config("bad-storage"), workdir=workdir, storage=str(blocker / "ray_results"))


def test_full_disk_fails_before_any_worker_starts(workdir, train_config, tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root and mount rights)")
    try:
        (mount / "filler").write_bytes(b"\0" * 12 * 1024)
        with pytest.raises(HiirError, match="storage path"):
            fit_run(train_config("full-disk"), workdir=workdir, storage=str(mount))
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# ---------------------------------------------------------------- tracking


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_fails_before_workers(workdir, train_config):
    with pytest.raises(HiirError, match="unreachable"):
        fit_run(train_config("no-server"), workdir=workdir, tracking_uri=f"http://127.0.0.1:{_free_port()}")


@pytest.mark.timeout(600)
def test_tracking_server_dies_mid_run_training_finishes_and_keeps_records(workdir, train_config, mlflow_server,
                                                                         caplog, checkpoint_dirs):
    proc, url = mlflow_server
    killed = {"done": False}

    def kill_server_at_first_checkpoint():
        deadline = time.time() + 240
        while time.time() < deadline and not checkpoint_dirs(workdir / "ray_results" / "server-dies"):
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        killed["done"] = True

    import threading

    watcher = threading.Thread(target=kill_server_at_first_checkpoint, daemon=True)
    watcher.start()
    try:
        result = fit_run(train_config("server-dies", optim={"max_steps": 30}, scaling={"num_workers": 1}),
                         workdir=workdir, tracking_uri=url)  # rank 0 alone logs: one worker shows it all
    finally:
        watcher.join(timeout=5)
    assert killed["done"]
    assert result.metrics["step"] == 30 and (result.export_dir / "model.safetensors").is_file()
    spool = workdir / "spool" / f"{result.run_id}.jsonl"
    assert spool.is_file() and spool.read_text().strip()  # what could not be logged is kept locally
    assert any(str(spool) in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_concurrent_writers_on_one_sqlite_store(tmp_path):
    """Two processes create runs and log into the same SQLite store at once: no 'database is locked'."""
    code = """
import sys
from pathlib import Path
from hiir.platform import tracking
wd = Path(sys.argv[1]); who = sys.argv[2]
store = tracking.Store(tracking.default_tracking_uri(wd))
exp = store.experiment("shared", wd)
for i in range(15):
    run_id, _ = store.find_or_create_run(exp, f"{who}-{i}", {"who": who})
    log = tracking.RunLogger(tracking.default_tracking_uri(wd), run_id, wd / "spool")
    for step in range(10):
        log.metrics({"loss": 1.0 / (step + 1), "lr": 0.1}, step)
    assert log.flush(), "records left in the spool"
print("OK", who)
"""
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), who], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "OK" in out, err[-3000:]
        assert "database is locked" not in err
    from mlflow.tracking import MlflowClient

    client = MlflowClient(default_tracking_uri(tmp_path))
    exp = client.get_experiment_by_name("shared")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 30
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 10 for r in runs)


MLFLOW_SQLITE_BUSY_S = 20  # MLflow's `PRAGMA busy_timeout` on SQLite: a statement gives up after this long
_HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def _closing_study(tmp_path: Path, name: str, trials: tuple[str, ...]):
    """A study's MLflow run with one open run per trial, and its state, as `_finish` finds them after Tune's run:
    (store, parent run id, trial -> run id, state)."""
    from hiir.platform import tracking
    from hiir.platform.study.state import StudyState

    uri = default_tracking_uri(tmp_path)
    store = Store(uri)
    exp = store.experiment(name, tmp_path)
    parent = store.create_study_run(exp, name, scale="full", question="", params={})
    runs = {trial: store.find_or_create_run(exp, f"{name}-{trial}", {
        **tracking.trial_tags(name, trial, {}), tracking.PARENT_TAG: parent})[0] for trial in trials}
    state = StudyState(name=name, base={}, raw={}, scale="full", overrides=[], workdir=str(tmp_path),
                       tracking_uri=uri, experiment=name, parent_run_id=parent,
                       trial_storage=str(tmp_path / "tune" / "trials"), tune_path=str(tmp_path / "tune"),
                       search="basic", spec_path=f"{name}.yaml")
    (tmp_path / "tune").mkdir()
    return store, parent, runs, state


def test_study_closing_while_another_process_locks_the_sqlite_store_ends_every_trial_run(tmp_path):
    """The study's closing step runs while another process holds SQLite's write lock for longer than MLflow
    waits: every trial run still ends as Tune saw it (finished, stopped early, failed), none stays RUNNING."""
    from types import SimpleNamespace

    from hiir.platform import tracking
    from hiir.platform.study.run import _finish
    from hiir.platform.study.schedulers import StopDecision, journal_path

    store, parent, runs, state = _closing_study(tmp_path, "locked", ("done", "stopped", "failed", "silent", "quiet"))
    store.close(runs["done"], "FINISHED")  # fit_run closes a trial that reached its last step
    results = [SimpleNamespace(error=None, metrics={"trial_id": "done"}),
               SimpleNamespace(error=None, metrics={"trial_id": "stopped"}),  # ASHA stopped it
               SimpleNamespace(error=RuntimeError("Traceback\nOOM on rank 0"), metrics={"trial_id": "failed"}),
               SimpleNamespace(error=RuntimeError("died"), metrics={}),  # "silent": died before its first report
               # "quiet": no scheduler, so no report reached Tune; its directory, named by its trial id, finds its run
               SimpleNamespace(error=RuntimeError("Traceback\nbad batch"), metrics={}, path=str(tmp_path / "quiet"))]
    # ASHA's journal holds its decision: without one the trial was interrupted
    stop = StopDecision(trial_id="stopped", group="all", time_attr="step", t=20, rung=20, metric="val_psnr",
                        mode="max", value=30.0, cutoff=31.0, compared_with=("done",))
    Path(journal_path(state.tune_path, parent)).write_bytes(pickle.dumps({"decisions": [stop]}))
    hold_s = MLFLOW_SQLITE_BUSY_S + 4
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(tmp_path / "mlflow.db"), str(hold_s)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        _finish("locked", tmp_path, state, results)
        waited = time.monotonic() - t0
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    assert waited > MLFLOW_SQLITE_BUSY_S  # the lock really held the closing step up

    closed = {trial: store.get_run(run_id) for trial, run_id in runs.items()}
    assert {trial: run.info.status for trial, run in closed.items()} == {
        "done": "FINISHED", "stopped": "KILLED", "failed": "FAILED", "silent": "FAILED", "quiet": "FAILED"}
    assert closed["stopped"].data.tags[tracking.STOPPED_EARLY_TAG] == "true"
    assert closed["failed"].data.tags[tracking.ERROR_TAG] == "OOM on rank 0"
    assert closed["silent"].data.tags[tracking.ERROR_TAG] == "the trial ended before its first report"
    assert closed["quiet"].data.tags[tracking.ERROR_TAG] == "bad batch"
    assert store.get_run(parent).info.status == "FINISHED"


def test_an_interrupted_study_leaves_its_unfinished_trials_open_not_stopped_early(tmp_path):
    """Ctrl-C ends Tune's run as if every trial had ended, and the study's closing used to call each unfinished
    trial "stopped early by the scheduler" and the study finished, so a folder run skipped it (seen 2026-12-05 on a
    study with no scheduler). Without the scheduler's stop decision a trial is unfinished: its run and the study's
    stay open for the resume."""
    from types import SimpleNamespace

    from hiir.platform import tracking
    from hiir.platform.study.run import _finish
    from hiir.platform.study.schedulers import journal_path

    store, parent, runs, state = _closing_study(tmp_path, "interrupted", ("done", "cut", "unreported"))
    store.close(runs["done"], "FINISHED")
    results = [SimpleNamespace(error=None, metrics={"trial_id": "done"}),
               SimpleNamespace(error=None, metrics={"trial_id": "cut"}),
               SimpleNamespace(error=None, metrics={})]  # interrupted before its first report

    done = _finish("interrupted", tmp_path, state, results)
    status = {trial: store.get_run(run_id).info.status for trial, run_id in runs.items()}
    assert done.unfinished == 2
    assert status == {"done": "FINISHED", "cut": "RUNNING", "unreported": "RUNNING"}
    assert store.get_run(parent).info.status == "RUNNING"  # so `_previous_run` resumes it
    assert tracking.STOPPED_EARLY_TAG not in store.get_run(runs["cut"]).data.tags

    Path(journal_path(state.tune_path, parent)).write_bytes(b"not a pickle")  # decisions unknown: as before
    done = _finish("interrupted", tmp_path, state, results[:2])
    assert done.unfinished == 0 and store.get_run(runs["cut"]).info.status == "KILLED"
    assert store.get_run(parent).info.status == "FINISHED"


# ---------------------------------------------------------------- security


class _Payload:
    """Unpickling this runs a shell command: what a malicious weights file carries."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_pickle_payload_in_a_weights_file_is_refused(tmp_path):
    from hiir.platform.evaluation.evaluate import load_exported

    target = tmp_path / "pwned"
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(pickle.dumps(_Payload(target)))
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(HiirError, match="not a valid safetensors"):
        load_exported(tmp_path)
    (tmp_path / "model.pt").write_bytes(pickle.dumps(_Payload(target)))
    with pytest.raises(HiirError, match="only from safetensors"):
        load_exported(tmp_path / "model.pt")
    assert not target.exists()


def test_ddp_optimizer_state_loads_with_weights_only(tmp_path):
    """The one torch.load in hiir (DDP optimizer state) refuses a pickle payload."""
    import torch

    target = tmp_path / "pwned"
    path = tmp_path / "optim.pt"
    path.write_bytes(pickle.dumps(_Payload(target)))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not target.exists()
    import re

    root = Path(__file__).resolve().parents[1]
    calls = [c for folder in ("platform", "models", "data_prep") for f in (root / folder).rglob("*.py")
             for c in re.findall(r"torch\.load\([^)]*\)", f.read_text())]
    assert calls and all("weights_only=True" in c for c in calls), calls


# ---------------------------------------------------------------- data build


def _build_cmd(source: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hiir.platform.cli", "data", "build", str(source), "--task", "sr", "--scale", "2",
            "--sub-size", "48", "--step", "24", "--out", str(out), *extra]


@pytest.mark.timeout(600)
def test_killed_data_build_is_refused_then_rebuilt_with_overwrite(tmp_path, stale_ray_tmp):
    """Also: a build starts a Ray of its own even where a dead `ray start --head` left its address in
    <ray tmp>/ray_current_cluster (the train path's case is tests/test_cluster.py's stale-file test)."""
    import shutil

    from hiir.data_prep import load_manifest
    from hiir.data_prep.demo import export_photos
    from hiir.data_prep.manifest import SHARD_NAME

    photos = sorted(export_photos(tmp_path / "demo_photos").glob("*.png"))
    source = tmp_path / "photos"
    source.mkdir()
    for copy in range(4):  # enough work that the build is still writing when it is killed
        for photo in photos:
            shutil.copy(photo, source / f"{copy}-{photo.name}")
    out = tmp_path / "ds"
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": str(stale_ray_tmp)}
    proc = subprocess.Popen(_build_cmd(source, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    # Kill once a whole shard is written. A kill that finds only a shard's temporary file may leave nothing: Ray's
    # worker (not in this process group) dies when the driver does and removes its temporary file, and a build into
    # an empty folder is rightly allowed (seen under load, 2026-12-05).
    while time.time() < deadline and proc.poll() is None and not (
            out.exists() and any(SHARD_NAME.match(p.name) for p in out.iterdir())):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # killed for real, mid-build
    proc.wait()
    assert out.exists() and not (out / "manifest.json").exists(), "the build finished before it could be killed"

    again = subprocess.run(_build_cmd(source, out), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "interrupted build" in again.stderr, again.stderr[-2000:]

    rebuilt = subprocess.run(_build_cmd(source, out, "--overwrite"), env=env, capture_output=True, text=True,
                             timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    manifest = load_manifest(out, verify=True)
    assert manifest.rows("train") > 0 and not any(p.name.startswith(".tmp-") for p in out.iterdir())
