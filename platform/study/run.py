"""Running a study: Ray Tune trials, each a function that builds and fits its own TorchTrainer.

`run_study` validates the spec, creates the study's MLflow parent run and hands Tune one trainable,
`run_trial`, which calls `train.fit.fit_run` under that parent (the Train V2 pattern: `Tuner(TorchTrainer)`
is not supported). Worker reports reach Tune through `TuneReportCallback`, so ASHA can stop weak trials.
`resume_study` continues an interrupted study with `Tuner.restore`. At the end, every trial's MLflow run is
closed as Tune saw it: finished, stopped early by the scheduler, or failed.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiir.platform.config import TrainConfig
from hiir.platform.errors import HiirError
from hiir.platform.study.spec import StudySpec, find_spec, load_spec, parse_spec
from hiir.platform.study.state import read_shared_json, study_dir, write_json, write_shared_json
from hiir.platform.train.checks import check_cluster_paths, check_fits_locally, check_storage, resolve_datasets
from hiir.platform.train.fit import fit_run
from hiir.platform.train.runtime import init_ray, storage_root

TRIAL_ACTOR_CPU = 0.01  # the trial function only drives its TorchTrainer; Tune refuses 0

def param_space(spec: StudySpec, searcher: str = "basic") -> dict[str, Any]:
    from ray import tune

    space = {}
    for axis in spec.axes:
        if axis.kind == "grid" and searcher == "basic":
            space[axis.key] = tune.grid_search(axis.values)
        elif axis.kind in ("grid", "choice"):
            space[axis.key] = tune.choice(axis.values)
        else:
            space[axis.key] = getattr(tune, axis.kind)(*axis.values)
    return space

def max_concurrent(per_trial: TrainConfig, total: dict[str, float] | None = None) -> int | None:
    """How many trials fit at once in the cluster's resources now (each one beyond would start its
    controller actors only to wait). None, no cap, when not even one fits yet: an autoscaling cluster
    that starts without GPU nodes grows as the queued trials ask for them."""
    if total is None:
        import ray

        total = ray.cluster_resources()
    if per_trial.scaling.use_gpu:
        need, have = per_trial.scaling.num_workers, total.get("GPU", 0)
    else:
        need = per_trial.scaling.num_workers * per_trial.scaling.cpus_per_worker + TRIAL_ACTOR_CPU
        have = total.get("CPU", 0)
    return int(have // need) or None

def run_trial(params: dict[str, Any], *, study: dict[str, Any]) -> dict[str, Any]:
    """One Tune trial: a TorchTrainer fit under the study's parent run."""
    from ray import tune

    spec = parse_spec(study["raw"], scale=study["scale"], overrides=tuple(study["overrides"]))
    cfg = spec.trial_config(params)
    trial_id = tune.get_context().get_trial_id()
    cfg = dataclasses.replace(cfg, name=f"{spec.name}-{trial_id}",
                              tracking=dataclasses.replace(cfg.tracking, experiment=study["experiment"]))
    tags = {"hiir.study": spec.name, "hiir.trial_id": trial_id,
            **{f"hiir.axis.{k}": str(v) for k, v in params.items()}}
    result = fit_run(cfg, workdir=Path(study["workdir"]), tracking_uri=study["tracking_uri"],
                     storage=study["trial_storage"], parent_run_id=study["parent_run_id"], tags=tags, in_tune=True)
    return {**result.metrics, "mlflow_run_id": result.run_id}

@dataclass
class StudyRun:
    name: str
    directory: Path
    parent_run_id: str
    results: Any


def run_study(ref: str | Path, *, workdir: Path, scale: str = "full", overrides: tuple[str, ...] = (),
              tracking_uri: str | None = None, search: str = "basic", address: str | None = None,
              concurrent: int | None = None) -> StudyRun:
    """Validate the spec, create the parent run, run the trials with Ray Tune."""
    import yaml

    from hiir.platform import tracking

    path = find_spec(ref)
    raw = yaml.safe_load(path.read_text())
    spec = load_spec(path, scale=scale, overrides=overrides)
    workdir = Path(workdir).resolve()
    directory = study_dir(workdir, spec.name)
    check_storage(str(directory))
    tune_root = storage_root(workdir) + "/studies"  # Tune and trial checkpoints: shared storage on a cluster
    check_storage(tune_root)
    base = spec.trial_config({})
    resolve_datasets(base, workdir)  # build demo data / verify manifests once, here
    uri = tracking.resolve_tracking_uri(workdir, tracking_uri)
    tracking.check_reachable(uri)
    # Embedded Ray gets one spare logical CPU for the (sleeping) trial and controller actors.
    init_ray(address, num_cpus=None if address else (os.cpu_count() or 1) + 1)
    check_fits_locally(base, address, extra_cpu=TRIAL_ACTOR_CPU)
    check_cluster_paths(base, address, [tune_root], uri)

    client = tracking.client(uri)
    experiment = base.tracking.experiment
    exp_id = tracking.ensure_experiment(client, experiment, workdir)
    parent = tracking.locked_retry(client.create_run, exp_id, run_name=spec.name, tags={
        tracking.STUDY_TAG: spec.name, "hiir.kind": "study", "hiir.scale": scale,
        "mlflow.note.content": spec.question})
    tracking.locked_retry(client.log_batch, parent.info.run_id, params=[tracking.param("study.trials", spec.trial_count),
                                                 tracking.param("study.scale", scale),
                                                 tracking.param("study.search", search),
                                                 tracking.param("study.spec", str(path))])
    state = {"raw": raw, "scale": scale, "overrides": list(overrides), "workdir": str(workdir),
             "tracking_uri": uri, "experiment": experiment, "parent_run_id": parent.info.run_id,
             "trial_storage": f"{tune_root}/{spec.name}/trials", "tune_path": f"{tune_root}/{spec.name}",
             "search": search, "spec_path": str(path), "max_concurrent": concurrent}
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "study.json", state)
    if state["tune_path"] != str(directory):  # beside Tune's state, so a lost head loses no study
        write_shared_json(state["tune_path"], state)
    results = _tuner(spec, state).fit()
    return _finish(spec.name, directory, state, results)

def resume_study(directory: Path | str, *, address: str | None = None) -> StudyRun:
    """Continue an interrupted study: finished trials are kept, unfinished ones resume from checkpoints.

    `directory` is the study's local directory, or its Tune path on shared storage (s3://.../studies/<name>),
    which also holds study.json: what a cluster whose head node was replaced still has."""
    from ray import tune

    shared = "://" in str(directory)
    if shared:
        state = read_shared_json(str(directory))
    else:
        directory = Path(directory).resolve()
        if not (directory / "study.json").is_file():
            raise HiirError(f"{directory} is not a study directory (no study.json); "
                            f"run `hiir study run` first")
        state = json.loads((directory / "study.json").read_text())
    spec = parse_spec(state["raw"], scale=state["scale"], overrides=tuple(state["overrides"]))
    if shared:  # the local directory comes back, for the report and later resumes
        directory = study_dir(Path(state["workdir"]), spec.name)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / "study.json", state)
    init_ray(address, num_cpus=None if address else (os.cpu_count() or 1) + 1)
    if not tune.Tuner.can_restore(state["tune_path"]):
        raise HiirError(f"{state['tune_path']} holds no Tune experiment state to resume")
    tuner = tune.Tuner.restore(state["tune_path"], trainable=_trainable(state), resume_unfinished=True,
                               resume_errored=True, param_space=param_space(spec, state["search"]))
    return _finish(spec.name, directory, state, tuner.fit())

def _trainable(state: dict[str, Any]):
    from ray import tune

    return tune.with_resources(tune.with_parameters(run_trial, study=state), {"cpu": TRIAL_ACTOR_CPU})

def _tuner(spec: StudySpec, state: dict[str, Any]):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    base = spec.trial_config({})
    scheduler = None
    if spec.scheduler.kind == "asha":
        # max_t one past the last step: ASHA stops any trial that reaches max_t, which would kill a
        # finished trial before it exports its weights and closes its MLflow run.
        scheduler = ASHAScheduler(time_attr=spec.scheduler.time_attr, max_t=base.optim.max_steps + 1,
                                  grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor)
    search_alg = None
    num_samples = spec.num_samples
    if state["search"] == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(metric=spec.metric, mode=spec.mode, seed=base.seed)
        num_samples = spec.trial_count
    return tune.Tuner(
        _trainable(state),
        param_space=param_space(spec, state["search"]),
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=scheduler,
                                    search_alg=search_alg, num_samples=num_samples,
                                    max_concurrent_trials=state.get("max_concurrent") or max_concurrent(base)),
        run_config=tune.RunConfig(name=spec.name, storage_path=state["tune_path"].rsplit("/", 1)[0],
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )

def _finish(name: str, directory: Path, state: dict[str, Any], results) -> StudyRun:
    """Close the MLflow runs as Tune saw the trials: finished, stopped early by the scheduler, or failed."""
    from mlflow.tracking import MlflowClient

    from hiir.platform.tracking import PARENT_TAG

    errors = sum(1 for r in results if r.error is not None)
    try:
        client = MlflowClient(state["tracking_uri"])
        parent = client.get_run(state["parent_run_id"])
        runs = {r.data.tags.get("hiir.trial_id"): r for r in client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{state['parent_run_id']}'")}
        seen = set()
        for result in results:
            run = runs.get((result.metrics or {}).get("trial_id"))
            if run is None:
                continue
            seen.add(run.info.run_id)
            if result.error is not None:
                client.set_tag(run.info.run_id, "hiir.error", str(result.error).strip().splitlines()[-1][:500])
                client.set_terminated(run.info.run_id, "FAILED")
            elif run.info.status != "FINISHED":  # the scheduler stopped it before its last step
                client.set_tag(run.info.run_id, "hiir.stopped_early", "true")
                client.set_terminated(run.info.run_id, "KILLED")
        for run in runs.values():  # a trial that died before its first report left no result to match
            if run.info.run_id not in seen and run.info.status == "RUNNING":
                client.set_tag(run.info.run_id, "hiir.error", "the trial ended before its first report")
                client.set_terminated(run.info.run_id, "FAILED")
        client.set_terminated(state["parent_run_id"], "FINISHED" if errors < len(results) else "FAILED")
    except Exception as exc:  # noqa: BLE001 (a down server must not lose the results on disk)
        import logging

        logging.getLogger("hiir.study").warning("could not close the study's MLflow runs: %s", exc)
    return StudyRun(name, directory, state["parent_run_id"], results)
