"""Running a study: Ray Tune trials, each a function that builds and fits its own TorchTrainer.

`run_study` validates the spec, creates the study's MLflow parent run and hands Tune one trainable,
`run_trial`, which calls `train.fit.fit_run` under that parent (the Train V2 pattern: `Tuner(TorchTrainer)`
is not supported). With a scheduler, worker reports reach Tune as they happen (`TuneReportCallback`), so ASHA
can stop weak trials; without one, a trial's return value is its one result.
`resume_study` continues an interrupted study with `Tuner.restore`. At the end, every trial's MLflow run is
closed as Tune saw it: finished, stopped early by the scheduler, or failed.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from hiir.models import count_params, parse_size
from hiir.platform import tracking
from hiir.platform.config import TrainConfig, load_config
from hiir.platform.errors import HiirError
from hiir.platform.evaluation.evaluate import baseline_name, baseline_scores
from hiir.platform.study.axes import WIDTH_AXES, size_classes
from hiir.platform.study.schedulers import GroupedASHA, journal_path, read_decisions
from hiir.platform.study.spec import StudySpec, Transferred, check_transfer, find_spec, load_spec, with_profiles
from hiir.platform.study.state import StudyState, read_state, state_spec, study_dir, write_state
from hiir.platform.train.checks import (
    apply_budget,
    check_cluster_paths,
    check_fits_locally,
    check_storage,
    model_stats,
    resolve_datasets,
)
from hiir.platform.train.fit import fit_run
from hiir.platform.train.runtime import init_ray, storage_root

TRIAL_ACTOR_CPU = 0.01  # the trial function only drives its TorchTrainer; Tune refuses 0
ERROR_CHARS = 500  # a failed trial's error tag: a label in the runs table (the whole error is in Ray's log)


def param_space(spec: StudySpec, searcher: str = "basic") -> dict[str, Any]:
    space = {}
    for axis in spec.axes:
        if axis.kind == "grid" and searcher == "basic":
            # Tune starts trials in the grid's order: the largest sizes first, so that the trials still
            # running when the rest are done are the shortest ones (a sweep ends sooner).
            values = sorted(axis.values, key=parse_size, reverse=True) if axis.key in WIDTH_AXES else axis.values
            space[axis.key] = tune.grid_search(values)
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
        total = ray.cluster_resources()
    if per_trial.scaling.use_gpu:
        need, have = per_trial.scaling.num_workers, total.get("GPU", 0)
    else:
        need = per_trial.scaling.num_workers * per_trial.scaling.cpus_per_worker + TRIAL_ACTOR_CPU
        have = total.get("CPU", 0)
    return int(have // need) or None


def run_trial(params: dict[str, Any], *, study: StudyState, stream_reports: bool) -> dict[str, Any]:
    """One Tune trial: a TorchTrainer fit under the study's parent run. `stream_reports` when a scheduler reads
    the trial's progress (`fit_run`)."""
    trial_id = tune.get_context().get_trial_id()
    # The study parsed its spec and checked every grid point once; a trial validates its own config only,
    # with Tune's values applied as they are (never through text).
    cfg = load_config(study.base, values={**params, "name": f"{study.name}-{trial_id}",
                                          "tracking.experiment": study.experiment})
    tags = tracking.trial_tags(study.name, trial_id, params)
    result = fit_run(cfg, workdir=Path(study.workdir), tracking_uri=study.tracking_uri,
                     storage=study.trial_storage, parent_run_id=study.parent_run_id, tags=tags, in_tune=True,
                     stream_reports=stream_reports)
    return {**result.metrics, "mlflow_run_id": result.run_id}


@dataclass
class StudyRun:
    name: str
    directory: Path
    parent_run_id: str
    results: Any
    unfinished: int = 0  # trials the study was interrupted in (Ctrl-C): their runs stay open for the resume


def run_study(ref: str | Path, *, workdir: Path, scale: str = "full", overrides: tuple[str, ...] = (),
              tracking_uri: str | None = None, search: str = "basic", address: str | None = None,
              concurrent: int | None = None, transferred: Transferred | None = None) -> StudyRun:
    """Validate the spec, create the parent run, run the trials with Ray Tune. `transferred` holds a finished
    small study's best values (`results.transfer.from_study`), which join the base, tagged on the study run."""
    path = find_spec(ref)
    workdir = Path(workdir).resolve()
    spec, overrides = load_for_run(path, scale, overrides, transferred)
    raw = with_profiles(yaml.safe_load(path.read_text()))  # study.json keeps the profiles as they ran
    directory = study_dir(workdir, spec.name)
    check_storage(str(directory))
    tune_root = storage_root(workdir) + "/studies"  # Tune and trial checkpoints: shared storage on a cluster
    check_storage(tune_root)
    base = spec.base_trial  # a representative trial: resources, datasets, seed
    resolved = resolve_datasets(base, workdir)  # build demo data / verify manifests once, here
    uri = tracking.resolve_tracking_uri(workdir, tracking_uri)
    tracking.check_reachable(uri)
    # Embedded Ray gets one spare logical CPU for the (sleeping) trial and controller actors.
    init_ray(address, num_cpus=None if address else (os.cpu_count() or 1) + 1)
    check_fits_locally(base, address, extra_cpu=TRIAL_ACTOR_CPU)
    check_cluster_paths(base, address, [tune_root], uri)

    store = tracking.Store(uri)
    experiment = base.tracking.experiment
    parent_run_id = store.create_study_run(
        store.experiment(experiment, workdir), spec.name, scale=scale, question=spec.question,
        params={"study.trials": spec.trial_count, "study.scale": scale, "study.search": search,
                "study.spec": str(path)})
    if transferred is not None:
        store.set_tags(parent_run_id, transferred.tags())
    log_baseline(store, parent_run_id, resolved)
    state = StudyState(  # what a trial needs: the base, validated here, once
        name=spec.name, base=spec.base, raw=raw, scale=scale, overrides=list(overrides), workdir=str(workdir),
        tracking_uri=uri, experiment=experiment, parent_run_id=parent_run_id,
        trial_storage=f"{tune_root}/{spec.name}/trials", tune_path=f"{tune_root}/{spec.name}", search=search,
        spec_path=str(path), max_concurrent=concurrent, transfer_from=transferred.source if transferred else None)
    directory.mkdir(parents=True, exist_ok=True)
    write_state(directory, state)
    if state.tune_path != str(directory):  # beside Tune's state, so a lost head loses no study
        write_state(state.tune_path, state)
    results = _tuner(spec, state).fit()
    return _finish(spec.name, directory, state, results)


def load_for_run(path: Path, scale: str, overrides: tuple[str, ...],
                 transferred: Transferred | None) -> tuple[StudySpec, tuple[str, ...]]:
    """The spec with a small study's best values (`--transfer-from`) set before `--set`'s, so `--set` wins;
    and the overrides as applied (saved in study.json, so a resume keeps them)."""
    if transferred is None:
        return load_spec(path, scale=scale, overrides=overrides), overrides
    overrides = (*transferred.overrides(), *overrides)
    spec = load_spec(path, scale=scale, overrides=overrides)
    check_transfer(transferred, spec)
    return spec, overrides


def resume_study(directory: Path | str, *, address: str | None = None) -> StudyRun:
    """Continue an interrupted study: finished trials are kept, unfinished ones resume from checkpoints.

    `directory` is the study's local directory, or its Tune path on shared storage (s3://.../studies/<name>),
    which also holds study.json: what a cluster whose head node was replaced still has."""
    state = read_state(directory)
    spec = state_spec(state)
    if "://" in str(directory):  # the local directory comes back, for the report and later resumes
        directory = study_dir(Path(state.workdir), spec.name)
        write_state(directory, state)
    else:
        directory = Path(directory).resolve()
    init_ray(address, num_cpus=None if address else (os.cpu_count() or 1) + 1)
    if not tune.Tuner.can_restore(state.tune_path):
        raise HiirError(f"{state.tune_path} holds no Tune experiment state to resume")
    tuner = tune.Tuner.restore(state.tune_path, trainable=_trainable(state, spec), resume_unfinished=True,
                               resume_errored=True, param_space=param_space(spec, state.search))
    return _finish(spec.name, directory, state, tuner.fit())


def log_baseline(store: tracking.Store, run_id: str, cfg: TrainConfig) -> dict[str, float]:
    """Score the trivial restoration (bicubic for SR, the degraded input otherwise) on the study's val
    images, with the trials' metric, and log it on the study run: the bar every model must clear."""
    model = cfg.resolved_model
    metrics = baseline_scores(cfg.data.val, max_images=cfg.eval.max_images, channels=model.in_channels).metrics
    store.log_metrics(run_id, {f"{tracking.BASELINE_PREFIX}{k}": v for k, v in metrics.items()}, 0,
                      int(time.time() * 1000))
    store.set_tags(run_id, {tracking.BASELINE_TAG: baseline_name(model.scale)})
    return metrics


def _trainable(state: StudyState, spec: StudySpec):
    trial = tune.with_parameters(run_trial, study=state, stream_reports=spec.scheduler.kind != "none")
    return tune.with_resources(trial, {"cpu": TRIAL_ACTOR_CPU})


def _tuner(spec: StudySpec, state: StudyState):
    base = spec.base_trial
    scheduler = None
    if spec.scheduler.kind == "asha":
        sizes: dict[str, tuple[str, int]] = {}  # a trial's values -> (its group, its step count), counted once
        classes = size_classes([count_params(spec.trial_config(p).resolved_model) for p in spec.finite_points()])

        def size(params: dict[str, Any]) -> tuple[str, int]:
            key = json.dumps(params, sort_keys=True, default=str)
            if key not in sizes:  # resolved as run_trial and fit_run resolve it
                cfg = load_config(state.base, values=params)
                count = count_params(cfg.resolved_model)
                group, steps = f"params={classes.get(count, count)}", cfg.optim.max_steps
                if cfg.budget.flops is not None:
                    group += f" flops={cfg.budget.flops:g}"
                    try:
                        steps = apply_budget(cfg, model_stats(cfg)["flops_per_step"]).optim.max_steps
                    except HiirError:  # a budget too small for this size: its trial fails on its own, saying so
                        pass
                sizes[key] = group, steps
            return sizes[key]

        # ASHA compares a trial only with trials of its size and budget (a bigger model starts slower), and
        # max_t is one past the trial's own last step: ASHA stops any trial that reaches max_t, which would
        # kill a finished trial before it exports its weights and closes its MLflow run.
        scheduler = GroupedASHA(lambda params: size(params)[0], lambda params: size(params)[1] + 1,
                                time_attr=spec.scheduler.time_attr, grace_period=spec.scheduler.grace_period,
                                reduction_factor=spec.scheduler.reduction_factor,
                                journal=journal_path(state.tune_path, state.parent_run_id))
    search_alg = None
    num_samples = spec.num_samples
    if state.search == "optuna":
        search_alg = OptunaSearch(metric=spec.metric, mode=spec.mode, seed=base.seed)
        num_samples = spec.trial_count
    return tune.Tuner(
        _trainable(state, spec),
        param_space=param_space(spec, state.search),
        # A trial's process imports the platform (~5 s on 2 busy cores): without a scheduler the next trial
        # reuses it. A trial that a scheduler stops would keep training in a reused process until Tune gave
        # up on it, so with one every trial gets its own.
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=scheduler,
                                    search_alg=search_alg, num_samples=num_samples,
                                    max_concurrent_trials=state.max_concurrent or max_concurrent(base),
                                    reuse_actors=scheduler is None, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=spec.name, storage_path=state.tune_path.rsplit("/", 1)[0],
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def _trial_dirname(trial) -> str:
    """A trial's directory is named by its id: `_finish` finds the trial of a result that holds no report."""
    return trial.trial_id


def _trial_id(result) -> str | None:
    """The Tune trial a result belongs to: from its reports, else from its directory (`_trial_dirname`)."""
    reported = (result.metrics or {}).get("trial_id")
    path = getattr(result, "path", None)
    return reported or (Path(path).name if path else None)


def _finish(name: str, directory: Path, state: StudyState, results) -> StudyRun:
    """Close the MLflow runs as Tune saw the trials: finished, stopped early by the scheduler, or failed. A trial
    that ended before its last step with no stop decision of the scheduler's was interrupted (Ctrl-C ends Tune's
    run as if every trial had ended): its run, and the study's, stay open, so the study resumes, as after a crash."""
    errors = sum(1 for r in results if r.error is not None)
    try:  # ASHA's stop decisions, for the stopped runs' tags; the runs close without them too
        stops = {d.trial_id: d for d in read_decisions(journal_path(state.tune_path, state.parent_run_id))}
        decisions_known = True
    except Exception as exc:  # noqa: BLE001 (the journal is on shared storage, which may fail in any way)
        logging.getLogger("hiir.study").warning("could not read the scheduler's stop decisions: %r", exc)
        stops, decisions_known = {}, False
    unfinished = 0
    try:
        store = tracking.Store(state.tracking_uri)
        runs = {r.data.tags.get(tracking.TRIAL_TAG): r for r in store.children(state.parent_run_id)}
        seen = set()
        for result in results:
            trial_id = _trial_id(result)
            run = runs.get(trial_id)
            if run is None:
                unfinished += result.error is None and not result.metrics  # interrupted before its first report
                continue
            seen.add(run.info.run_id)
            if result.error is not None:
                store.close(run.info.run_id, "FAILED", {tracking.ERROR_TAG: _last_line(result.error)})
            elif run.info.status != "FINISHED":  # it ended before its last step
                stop = stops.get(trial_id)
                if stop is None and decisions_known:  # not the scheduler's doing: interrupted
                    unfinished += 1
                    continue
                tags = {tracking.STOPPED_EARLY_TAG: "true"}
                if stop is not None:  # where, why, and against which trials of its group
                    tags.update({tracking.STOPPED_AT_TAG: str(stop.t), tracking.STOP_REASON_TAG: stop.reason,
                                 tracking.COMPARED_WITH_TAG: ",".join(stop.compared_with),
                                 tracking.STOP_GROUP_TAG: stop.group})
                store.close(run.info.run_id, "KILLED", tags)
        if not unfinished:
            for run in runs.values():  # a trial that died before its first report left no result to match
                if run.info.run_id not in seen and run.info.status == "RUNNING":
                    store.close(run.info.run_id, "FAILED",
                                {tracking.ERROR_TAG: "the trial ended before its first report"})
            store.close(state.parent_run_id, "FINISHED" if errors < len(results) else "FAILED")
    except Exception as exc:  # noqa: BLE001 (a down server must not lose the results on disk)
        logging.getLogger("hiir.study").warning("could not close the study's MLflow runs: %s", exc)
    return StudyRun(name, directory, state.parent_run_id, results, unfinished)


def _last_line(error: BaseException) -> str:
    """The last line of a trial's error, cut to ERROR_CHARS with the cut marked (the full error is in Ray's log)."""
    line = str(error).strip().splitlines()[-1] if str(error).strip() else error.__class__.__name__
    return line if len(line) <= ERROR_CHARS else line[:ERROR_CHARS - 40] + f" ... (cut from {len(line)} characters)"
