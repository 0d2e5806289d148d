"""Studies end to end on a real local Ray Tune + Ray Train + SQLite MLflow, at toy scale.

- A 4-trial grid under ASHA: 4 child runs nested under one parent run, the weak trials stopped
  early, and a report with its table and plots.
- An Optuna study whose driver process is SIGKILLed mid-way resumes with `hiir study resume` and completes
  without rerunning its finished trials, its searcher going on where it stopped.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hiir.platform.tracking import STOPPED_EARLY_TAG, Store, default_tracking_uri, trial_axes

pytestmark = pytest.mark.slow

BASE = {
    "model": {"preset": "tiny_x2"},
    "optim": {"lr": 2e-3, "warmup_steps": 2, "max_steps": 30},
    "engine": {"kind": "deepspeed", "zero_stage": 2},
    "eval": {"every": 10, "max_images": 1},
    "tracking": {"log_every": 5, "sample_images": 0},
}


def _write_spec(path: Path, name: str, search: dict, scheduler: dict | None = None, num_samples: int | None = None,
                **base) -> Path:
    spec = {
        "name": name, "question": "does it work?",
        "base": {**BASE, **base, "tracking": {**BASE["tracking"], "experiment": name}},
        "datasets": {"train": "demo:sr_x2", "val": ["demo:sr_x2"], "batch_size": 4, "lq_patch": 16},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "search": search,
        "scheduler": scheduler or {"kind": "none"},
        **({"num_samples": num_samples} if num_samples else {}),
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def _children(workdir: Path, parent_run_id: str):
    return Store(default_tracking_uri(workdir)).children(parent_run_id)


def _history(workdir: Path, run_id: str, key: str):
    return Store(default_tracking_uri(workdir)).history(run_id, key)


def test_asha_grid_study_nests_trials_stops_weak_ones_and_reports(workdir, tmp_path):
    from hiir.platform import tracking
    from hiir.platform.results.report import report_study
    from hiir.platform.study.run import run_study

    # A fast small and a slow large model, each with a good lr and one of 1e-9, which cannot learn in 30 steps:
    # those are the weak trials. Tune starts both good trials first (two at a time), so one ASHA over all four
    # would meet the large model at step 10 with the small one ahead of it; each size must have its own rungs.
    spec = _write_spec(tmp_path / "asha.yaml", "asha-grid", {"size": ["tiny_x2", "small_x2"], "lr": [2e-3, 1e-9]},
                       {"kind": "asha", "time_attr": "step", "grace_period": 10, "reduction_factor": 2})
    done = run_study(spec, workdir=workdir)
    assert len(done.results) == 4 and not any(r.error for r in done.results)

    runs = _children(workdir, done.parent_run_id)
    assert len(runs) == 4
    axes = {r.data.tags[tracking.TRIAL_TAG]: trial_axes(r.data.tags) for r in runs}
    assert {a["optim.lr"] for a in axes.values()} == {"0.002", "1e-09"}
    stopped = [r for r in runs if r.info.status == "KILLED"]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert stopped, "ASHA stopped no trial"
    assert len(stopped) + len(finished) == 4, [(r.info.run_name, r.info.status) for r in runs]  # none FAILED
    last_step = {r.info.run_id: max(m.step for m in _history(workdir, r.info.run_id, "val_psnr")) for r in runs}
    assert all(last_step[r.info.run_id] < 30 and r.data.tags[STOPPED_EARLY_TAG] == "true" for r in stopped)
    assert all(last_step[r.info.run_id] == 30 for r in finished)
    assert all(trial_axes(r.data.tags)["optim.lr"] == "0.002" for r in finished)
    assert {trial_axes(r.data.tags)["model.preset"] for r in finished} == {"tiny_x2", "small_x2"}  # large kept

    for run in stopped:  # where and why it stopped, and only ever against trials of its own size
        tags, size = run.data.tags, trial_axes(run.data.tags)["model.preset"]
        compared = [t for t in tags[tracking.COMPARED_WITH_TAG].split(",") if t]
        assert compared and all(axes[t]["model.preset"] == size for t in compared), (size, compared, axes)
        assert run.data.tags[tracking.TRIAL_TAG] not in compared
        assert 10 <= int(tags[tracking.STOPPED_AT_TAG]) <= last_step[run.info.run_id]
        reason, group = tags[tracking.STOP_REASON_TAG], tags[tracking.STOP_GROUP_TAG]
        assert reason.startswith("val_psnr ") and "below the cutoff" in reason, reason
        assert group.startswith("params=") and group.endswith(" max_t=31"), group
    assert not any(tracking.STOPPED_AT_TAG in r.data.tags for r in finished)

    report = report_study(str(done.directory), workdir=workdir)
    text = report.read_text()
    results = text.split("## Results")[1].split("\n## ")[0]
    rows = [line for line in results.splitlines() if line.startswith(("| baseline", "| lr="))]
    assert rows[0].startswith("| baseline: bicubic"), rows  # the control comes first
    assert sum("preset=tiny_x2" in r for r in rows) == 2 and sum("preset=small_x2" in r for r in rows) == 2, rows
    assert sum("stopped early" in r for r in rows) == len(stopped), rows
    for png in ("psnr_vs_params.png", "training_curves.png"):
        assert (done.directory / png).stat().st_size > 1000


@pytest.mark.timeout(900)
def test_killed_study_driver_resumes_without_rerunning_finished_trials(workdir, ray_session, tmp_path):
    from hiir.platform.tracking import TRIAL_TAG

    # Storage is a URI (file://, as s3:// would be on a cluster) and the study's local directory is
    # deleted after the kill, as a replaced head node loses it: resume starts from the Tune path.
    # Two trials, one at a time (the study keeps --max-concurrent through its resume): the kill comes once the
    # first has finished, so the second is left to resume. Optuna samples the lr from a continuous range: the
    # resumed study must go on with the searcher's saved state (a fresh seeded one would draw the first lr again).
    spec = _write_spec(tmp_path / "resume.yaml", "resume-study", {"lr": {"loguniform": [1e-4, 3e-3]}},
                       num_samples=2, optim={**BASE["optim"], "max_steps": 20})
    shared = f"file://{tmp_path}/shared"
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "HIIR_STORAGE": shared}
    cmd = [sys.executable, "-m", "hiir.platform.cli", "study", "run", str(spec), "--workdir", str(workdir),
           "--no-report", "--max-concurrent", "1", "--search", "optuna"]
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    state_file = workdir / "studies" / "resume-study" / "study.json"

    def terminated_in_tune_state() -> set[str]:
        """The trial ids that Tune's newest experiment state on the shared storage records as TERMINATED
        (none while no state is there whole: Tune rewrites it every ~10 s)."""
        states = sorted((tmp_path / "shared" / "studies" / "resume-study").glob("experiment_state-*.json"))
        try:
            trials = [json.loads(trial) for trial, _ in json.loads(states[-1].read_text())["trial_data"]]
        except (IndexError, OSError, ValueError, KeyError):
            return set()
        return {t["trial_id"] for t in trials if t["status"] == "TERMINATED"}

    try:
        deadline = time.time() + 400
        finished: dict[str, str] = {}  # MLflow run id -> Tune trial id
        recorded = False
        while time.time() < deadline and driver.poll() is None:
            if state_file.exists():
                parent = json.loads(state_file.read_text())["parent_run_id"]
                finished = {r.info.run_id: r.data.tags[TRIAL_TAG] for r in _children(workdir, parent)
                            if r.info.status == "FINISHED"}
                # Kill once Tune's saved state knows them finished, the event a resume relies on.
                recorded = bool(finished) and set(finished.values()) <= terminated_in_tune_state()
                if recorded:
                    break
            time.sleep(1)
        assert finished, "no trial finished before the deadline"
        assert recorded, f"Tune's experiment state never recorded the finished trials {sorted(finished.values())}"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver dies mid-study, for real
        driver.wait()

    assert (tmp_path / "shared" / "studies" / "resume-study" / "study.json").is_file()
    shutil.rmtree(state_file.parent)
    out = subprocess.run([sys.executable, "-m", "hiir.platform.cli", "study", "resume",
                          f"{shared}/studies/resume-study", "--no-report"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = _children(workdir, parent)
    assert len(runs) == 2, [r.info.run_name for r in runs]  # no trial ran twice under a new run
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert json.loads(state_file.read_text())["parent_run_id"] == parent  # the local directory is back
    for run_id in finished:  # finished trials were kept, not retrained
        steps = [m.step for m in _history(workdir, run_id, "loss")]
        assert len(steps) == len(set(steps)), steps
    lrs = [float(trial_axes(r.data.tags)["optim.lr"]) for r in runs]
    assert all(1e-4 <= lr <= 3e-3 for lr in lrs) and lrs[0] != lrs[1], lrs  # sampled, and not drawn anew
    # No scheduler: a trial hands Tune one result, when it ends (its two evals stay in MLflow; no report queue is
    # polled while it trains), and its directory is named by its trial id, which finds the run of a silent failure.
    tune_dir = tmp_path / "shared" / "studies" / "resume-study"
    trials = json.loads(sorted(tune_dir.glob("experiment_state-*.json"))[-1].read_text())["trial_data"]
    assert [json.loads(meta)["last_result"]["training_iteration"] for _, meta in trials] == [1, 1]
    assert all((tune_dir / json.loads(trial)["trial_id"]).is_dir() for trial, _ in trials)


@pytest.mark.timeout(600)
def test_a_folder_of_studies_runs_in_turn_skips_the_finished_resumes_the_interrupted_and_summarizes(
        workdir, tmp_path, capsys):
    """`hiir study run FOLDER`: each study in turn with a progress line, one summary (a file and an MLflow run)
    with the paper's claim beside ours; run again, a finished study is skipped and an interrupted one (its study
    run left RUNNING, as a killed driver leaves it) resumes from Tune's state without training anew."""
    from click.testing import CliRunner

    from hiir.platform.cli.study import study
    from hiir.platform.tracking import KIND_TAG, Store

    folder = tmp_path / "paper"
    folder.mkdir()
    claims = {"rows": [{"match": {"model.attention": "dot"}, "values": {"Set5": 34.98}},
                       {"match": {"model.attention": "cosine"}, "values": {"Set5": 34.92}}],
              "claims": [{"says": "dot beats cosine", "level": {"model.attention": "dot"},
                          "reference": {"model.attention": "cosine"},
                          "paper": [{"model.attention": "dot"}, {"model.attention": "cosine"}]}]}
    few = {**BASE["optim"], "max_steps": 4}
    for name, search in (("a-attention", {"attention": ["dot", "cosine"]}), ("b-one", {"warmup": [0]})):
        spec = yaml.safe_load(_write_spec(folder / f"{name}.yaml", name, search, optim=few,
                                          eval={"every": 4, "max_images": 1}).read_text())
        spec["scale"] = {"smoke": {"note": f"{name} at laptop scale"}}
        spec["expected"] = claims if name == "a-attention" else None
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({k: v for k, v in spec.items() if v is not None}))
    args = ["run", str(folder), "--scale", "smoke", "--workdir", str(workdir)]

    first = CliRunner().invoke(study, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "[1/2] a-attention (smoke): running ..." in first.output
    assert "[2/2] b-one (smoke): finished in " in first.output
    summary = workdir / "studies" / "paper-smoke.md"
    text = summary.read_text()
    assert "| a-attention | finished |" in text and "| b-one | finished |" in text
    assert "| a-attention | dot beats cosine | Set5 +0.06 dB |" in text
    assert "not resolved at this scale (2 of its trials at or below bicubic)" in text  # 4 steps learn little
    assert "No direction to check" in text and "b-one" in text.split("No direction to check")[1]
    assert "- `a-attention`: a-attention at laptop scale" in text
    report = (workdir / "studies" / "a-attention" / "report.md").read_text()
    assert report.startswith("# Study `a-attention`\n\ndoes it work?\n\n> a-attention at laptop scale")
    assert "Paper: dot beats cosine (Set5 +0.06 dB). Ours: " in report

    store = Store(default_tracking_uri(workdir))
    state = json.loads((workdir / "studies" / "b-one" / "study.json").read_text())
    b_trials = {r.info.run_id for r in _children(workdir, state["parent_run_id"])}
    store._client.update_run(state["parent_run_id"], status="RUNNING")  # its driver was killed
    (workdir / "studies" / "b-one" / "results.json").unlink()
    again = CliRunner().invoke(study, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "[1/2] a-attention (smoke): finished before, skipped" in again.output
    assert "[2/2] b-one (smoke): resuming ..." in again.output
    assert {r.info.run_id for r in _children(workdir, state["parent_run_id"])} == b_trials  # nothing trained anew
    assert store.get_run(state["parent_run_id"]).info.status == "FINISHED"
    experiments = [e.experiment_id for e in store._client.search_experiments()]
    runs = store._client.search_runs(experiments, filter_string=f"tags.`{KIND_TAG}` = 'summary'")
    assert len(runs) == 1 and runs[0].info.run_name == "paper-smoke"  # the second summary updates the first
    assert runs[0].data.metrics["claims_not_resolved"] == 1 and runs[0].data.metrics["studies_finished"] == 2
    # an edited spec is not the study that finished: it runs anew (checked without running it again)
    from hiir.platform.cli.study import _previous_run

    edited = yaml.safe_load((folder / "a-attention.yaml").read_text())
    edited["question"] = "does it still work?"
    (folder / "a-attention.yaml").write_text(yaml.safe_dump(edited))
    assert _previous_run(folder / "a-attention.yaml", "smoke", (), workdir)[1] == \
        "spec edited since its last run: running anew"
    assert _previous_run(folder / "b-one.yaml", "smoke", (), workdir)[1] == "finished"
    assert _previous_run(folder / "b-one.yaml", "full", (), workdir)[1] == "none"  # another scale
