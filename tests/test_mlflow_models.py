"""Trained models as MLflow models, on a real SQLite store and a real model server on loopback.

A tiny model is built and exported with the workers' own export code, then logged through the end of
`fit_run` (`_finish_mlflow_run`) into two trial runs of a study, without Ray; a third trial is a run from
before models were logged (plain `model/` files). The study's end registers the best trial; the pyfunc and
`hiir serve` restore an image exactly as `hiir restore` does.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from PIL import Image

from hiir.models import build
from hiir.platform import tracking
from hiir.platform.cli import cli
from hiir.platform.results.finish import finish_study, register_best, study_model_uri
from hiir.platform.study.spec import parse_spec
from hiir.platform.study.state import StudyState, study_dir, write_state
from hiir.platform.train.ema import EMA
from hiir.platform.train.fit import _finish_mlflow_run
from hiir.platform.train.worker import _write_rank0_files

STUDY = "models-test"
SPEC = {"name": STUDY, "base": {"model": {"preset": "tiny_x2"}, "optim": {"max_steps": 20}},
        "datasets": {"train": "demo:sr_x2", "val": ["demo:sr_x2"]}, "search": {"seed": [0, 1, 2]}}
PSNR = {0: 20.0, 1: 22.5}  # trial 1 is the best; the old-style trial 2 scores 21.0


def _export(directory: Path, cfg, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build("tiny_x2").eval()
    directory.mkdir(parents=True)
    _write_rank0_files(directory, cfg, model.config, model, EMA(model, 0.0, keep=False), step=20)
    return directory


def _trial(store: tracking.Store, exp: str, parent: str, i: int, psnr: float) -> str:
    trial_id = f"{STUDY}_{i:05d}"
    run_id, _ = store.find_or_create_run(exp, f"{STUDY}-{trial_id}", {
        **tracking.trial_tags(STUDY, trial_id, {"seed": i}), tracking.PARENT_TAG: parent})
    store.log_params(run_id, {"model.num_params": 119331, "flops_per_step": 1e9, "resolved_model.scale": 2,
                              "resolved_model.in_channels": 3})
    store.log_metrics(run_id, {"val_psnr": psnr, "val/demo_sr_x2/psnr_y": psnr, "loss": 0.1, "step": 20}, 20,
                      int(time.time() * 1000))
    return run_id


@pytest.fixture(scope="module")
def study(tmp_path_factory, train_config):
    wd = tmp_path_factory.mktemp("models")
    uri = tracking.default_tracking_uri(wd)
    store = tracking.Store(uri)
    exp = store.experiment("models-test", wd)
    parent = store.create_study_run(exp, STUDY, scale="full", question="?", params={})
    write_state(study_dir(wd, STUDY), StudyState(
        name=STUDY, base=SPEC["base"], raw=SPEC, scale="full", overrides=[], workdir=str(wd), tracking_uri=uri,
        experiment="models-test", parent_run_id=parent, trial_storage="", tune_path="", search="basic",
        spec_path=""))
    runs = {}
    for i, psnr in PSNR.items():
        run_id = _trial(store, exp, parent, i, psnr)
        export = _export(wd / "runs" / f"{STUDY}-{i}", train_config(f"{STUDY}-{i}"), seed=i)
        _finish_mlflow_run(uri, run_id, wd, export, step=20)  # what every run's end does
        runs[i] = run_id
    old = _trial(store, exp, parent, 2, 21.0)  # logged before models were: its weights are plain files
    old_export = _export(wd / "runs" / f"{STUDY}-2", train_config(f"{STUDY}-2"), seed=2)
    for name in ("model.safetensors", "model.json"):
        store.log_artifact(old, old_export / name, "model")
    store.close(old, "FINISHED")
    finished = finish_study(SimpleNamespace(directory=study_dir(wd, STUDY), parent_run_id=parent), report=False)
    return SimpleNamespace(wd=wd, uri=uri, store=store, exp=exp, parent=parent, runs=runs, old=old,
                           old_export=old_export, finished=finished)


def _image(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (17, 21, 3), dtype=np.uint8)).save(path)
    return path


def _hiir_restore(export: Path, image: Path, out: Path, *args: str) -> np.ndarray:
    result = CliRunner().invoke(cli, ["restore", str(export), str(image), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return np.asarray(Image.open(out / (image.stem + ".png")))


def test_every_run_logs_a_pickle_free_model_with_signature_and_pinned_requirements(study):
    client = MlflowClient(study.uri)
    assert client.get_experiment(study.exp).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    listed = client.search_logged_models(experiment_ids=[study.exp])  # what the experiment's Models tab lists
    assert {m.source_run_id for m in listed} == set(study.runs.values())
    for i, run_id in study.runs.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        model_id = tracking.Store.model_id(run)
        assert run.data.tags[tracking.MODEL_TAG] == f"models:/{model_id}"
        logged = client.get_logged_model(model_id)
        assert logged.status == LoggedModelStatus.READY and logged.source_run_id == run_id
        assert {m.key: m.value for m in logged.metrics}["val_psnr"] == PSNR[i]  # the Models tab's columns
        assert [m.value for m in client.get_metric_history(run_id, "val_psnr")] == [PSNR[i]]  # not doubled
    local = Path(mlflow.artifacts.download_artifacts(f"{logged.artifact_location}", dst_path=str(study.wd / "dl")))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {"artifacts/model.safetensors", "artifacts/model.json", "mlflow_model_code.py", "MLmodel"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".pth", ".cloudpickle"))], files
    requirements = (local / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} >= {"hiir", "mlflow", "torch", "safetensors"}
    assert all("==" in r and "+" not in r for r in requirements), requirements
    signature = yaml.safe_load((local / "MLmodel").read_text())["signature"]
    assert json.loads(signature["inputs"]) == [{"type": "binary", "name": "image", "required": True}]
    assert {p["name"]: p["default"] for p in json.loads(signature["params"])} == {
        "tile": 0, "overlap": 16, "self_ensemble": False}


def test_the_study_end_registers_its_best_trial_as_a_new_version_each_time(study, caplog):
    name = tracking.registered_name(STUDY)
    assert study.finished.model_uri == f"models:/{name}/1"
    version = MlflowClient(study.uri).get_model_version(name, "1")
    assert version.run_id == study.runs[1]
    assert version.tags == {tracking.STUDY_TAG: STUDY, tracking.TRIAL_TAG: f"{STUDY}_00001",
                            tracking.STUDY_RUN_TAG: study.parent, tracking.METRIC_TAG: "val_psnr=22.5000 (max)"}
    assert study_model_uri(STUDY, study.wd) == (f"models:/{name}/1", study.uri)
    spec = parse_spec(SPEC)
    assert register_best(study.uri, spec, study.parent) == f"models:/{name}/2"  # the next study run's
    # A study whose best trial ran before models were logged registers nothing in a worse one's place.
    older = study.store.create_study_run(study.exp, STUDY, scale="full", question="?", params={})
    study.store.close(_trial(study.store, study.exp, older, 4, 25.0), "FINISHED")
    with caplog.at_level(logging.WARNING, logger="hiir.results"):
        assert register_best(study.uri, spec, older) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "hiir.results"]
    assert len(lines) == 1 and "has no logged MLflow model" in lines[0], lines


def test_a_store_without_a_registry_skips_registration_with_one_warning(study, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", (study.wd / "no-registry").as_uri())  # MLflow refuses file registries
    spec = parse_spec(SPEC)
    with caplog.at_level(logging.WARNING, logger="hiir.results"):
        assert register_best(study.uri, spec, study.parent) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "hiir.results"]
    assert len(lines) == 1 and "model registry unavailable" in lines[0] and "\n" not in lines[0], lines


def test_the_pyfunc_restores_like_hiir_restore_whole_and_tiled(study, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", study.uri)
    model = mlflow.pyfunc.load_model(study.finished.model_uri)
    image = _image(tmp_path / "in.png")
    export = study.wd / "runs" / f"{STUDY}-1"
    for args, params in (((), None), (("--tile", "16", "--overlap", "8"), {"tile": 16, "overlap": 8})):
        expected = _hiir_restore(export, image, tmp_path / "out", *args)
        out = model.predict(pd.DataFrame({"image": [image.read_bytes()]}), params=params)
        restored = np.asarray(Image.open(io.BytesIO(out["image"][0])))
        assert restored.shape == (34, 42, 3)
        np.testing.assert_array_equal(restored, expected)


def test_old_runs_still_restore_and_report_the_missing_model(study, tmp_path):
    """A run from before models were logged: its exported weights restore as ever, and the study's URI lookup
    says plainly when no version was registered."""
    image = _image(tmp_path / "in.png")
    assert _hiir_restore(study.old_export, image, tmp_path / "out").shape == (34, 42, 3)
    store = tracking.Store(study.uri)
    assert store.model_id(store.get_run(study.old)) is None


def test_tracking_down_at_the_end_keeps_the_weights_and_the_run_says_its_model_was_not_logged(
        study, train_config, caplog):
    elsewhere = study.store.create_study_run(study.exp, "elsewhere", scale="full", question="?", params={})
    run_id = _trial(study.store, study.exp, elsewhere, 3, 19.0)
    export = _export(study.wd / "runs" / f"{STUDY}-3", train_config(f"{STUDY}-3"), seed=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with caplog.at_level(logging.WARNING):
        _finish_mlflow_run(dead, run_id, study.wd, export, step=20)
    assert (export / "model.safetensors").is_file()
    assert any("not logged" in r.getMessage() and str(export) in r.getMessage() for r in caplog.records)
    # The spool replays into the run once MLflow answers (here: the store the run lives in).
    assert tracking.RunLogger(study.uri, run_id, study.wd / "spool").flush()
    tag = study.store.get_run(run_id).data.tags[tracking.MODEL_TAG]
    assert tag.startswith("not logged: ") and str(export) in tag


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_hiir_serve_answers_a_post_with_hiir_restores_output(study, tmp_path, stop_verb):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "hiir.platform.cli", "serve", STUDY, "--workdir", str(study.wd),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    image = _image(tmp_path / "in.png")
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(image.read_bytes())
                                                                            .decode()]]}}).encode()
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.time() + 240
        while True:
            try:
                urllib.request.urlopen(url + "/ping", timeout=5)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
                time.sleep(1)
        request = urllib.request.Request(url + "/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    finally:
        out = stop_verb(proc) if proc.poll() is None else proc.communicate()[0]
    assert f"serving {study_model_uri(STUDY, study.wd)[0]}" in out  # the study's latest registered version
    restored = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["predictions"][0]["image"]))))
    np.testing.assert_array_equal(restored, _hiir_restore(study.wd / "runs" / f"{STUDY}-1", image, tmp_path / "o"))


def test_study_report_renders_beside_an_old_run_and_prints_the_models_uri(study):
    out = CliRunner().invoke(cli, ["study", "report", STUDY, "--workdir", str(study.wd)])
    assert out.exit_code == 0, out.output
    uri, _ = study_model_uri(STUDY, study.wd)  # the latest version registered for the study's run
    assert uri.startswith(f"models:/{tracking.registered_name(STUDY)}/") and f"best model: {uri}" in out.output
    assert (study_dir(study.wd, STUDY) / "report.md").is_file()
