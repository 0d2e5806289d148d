"""Studies: a YAML spec (base config + search space + scheduler) run as Ray Tune trials.

Each trial is a function trainable that builds and fits its own TorchTrainer through `fit_run`
(the Train V2 pattern: `Tuner(TorchTrainer)` is not supported). Worker reports reach Tune through
`TuneReportCallback`, so ASHA can stop weak trials. The driver creates the study's MLflow parent
run; every trial's run carries `mlflow.parentRunId`, so the UI nests trials under the study.

Spec keys (top level): name, question, base, datasets, resources, search, num_samples, scheduler,
metric, mode, expected, scale. `search` axes are dotted config keys or the paper's axis names
(`warmup`, `attention`, `conv`, `tree_depth`, `size`, `mixer_l2`, `layout`).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hiir.platform.config import TrainConfig, config_keys, load_config
from hiir.platform.errors import ConfigError, HiirError

# The paper's axis names -> config keys.
AXIS_ALIASES = {
    "warmup": "optim.warmup_steps",
    "attention": "model.attention",
    "conv": "model.stage_conv",
    "stage_conv": "model.stage_conv",
    "tree_depth": "model.tree_depth",
    "size": "model.preset",
    "preset": "model.preset",
    "mixer_l2": "model.mixer_l2",
    "layout": "model.layout",
    "lr": "optim.lr",
}
TRIAL_ACTOR_CPU = 0.01  # the trial function only drives its TorchTrainer; Tune refuses 0
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
SCALE_KEYS = ("set", "presets", "search", "scheduler", "num_samples")
SPEC_KEYS = ("name", "question", "base", "datasets", "resources", "search", "num_samples", "scheduler",
             "metric", "mode", "expected", "scale")


@dataclass
class Axis:
    key: str                 # dotted config key
    kind: str                # one of DISTRIBUTIONS
    values: list[Any]        # grid/choice values, or [low, high]


@dataclass
class Scheduler:
    kind: Literal["asha", "none"] = "none"
    time_attr: str = "step"
    grace_period: int = 50
    reduction_factor: int = 2


@dataclass
class StudySpec:
    name: str
    question: str
    base: dict[str, Any]
    axes: list[Axis]
    num_samples: int = 1
    scheduler: Scheduler = field(default_factory=Scheduler)
    metric: str = "val_psnr"
    mode: Literal["max", "min"] = "max"
    expected: dict[str, Any] | None = None
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    @property
    def trial_count(self) -> int:
        grid = math.prod(len(a.values) for a in self.axes if a.kind == "grid")
        return grid * self.num_samples

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid combination (sampled axes excluded), in a stable order."""
        grid = [a for a in self.axes if a.kind == "grid"]
        return [dict(zip([a.key for a in grid], combo)) for combo in itertools.product(*(a.values for a in grid))]

    def trial_config(self, params: dict[str, Any]) -> TrainConfig:
        """The validated config of one trial."""
        return load_config(self.base, [f"{k}={v!r}" for k, v in params.items()])


# ---------------------------------------------------------------- loading


def find_spec(ref: str | Path) -> Path:
    """A path, or a name under studies/ (`smoke`, `paper/table3_scaling`)."""
    path = Path(ref)
    if path.is_file():
        return path
    root = studies_root()
    for candidate in (root / f"{ref}.yaml", root / str(ref)):
        if candidate.is_file():
            return candidate
    names = [str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")]
    close = difflib.get_close_matches(str(ref), names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `hiir study list`"
    raise HiirError(f"study {ref!r} not found{hint}")


def studies_root() -> Path:
    import hiir.studies

    return Path(list(hiir.studies.__path__)[0])


def load_spec(ref: str | Path, *, scale: str = "full", overrides: tuple[str, ...] = ()) -> StudySpec:
    import yaml

    path = find_spec(ref)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    try:
        return parse_spec(raw, scale=scale, overrides=overrides, path=path)
    except ConfigError as exc:
        raise ConfigError(f"{path.name}: {exc}") from None


def parse_spec(raw: dict[str, Any], *, scale: str = "full", overrides: tuple[str, ...] = (),
               path: Path | None = None) -> StudySpec:
    if not isinstance(raw, dict):
        raise ConfigError("a study spec must be a mapping")
    for key in raw:
        if key not in SPEC_KEYS:
            close = difflib.get_close_matches(key, SPEC_KEYS, n=2)
            raise ConfigError(f"{key} is not a study field" + (f"; did you mean {', '.join(close)}?" if close else ""))
    for key in ("name", "base"):
        if key not in raw:
            raise ConfigError(f"{key} is missing")
    scales = raw.get("scale") or {}
    if scale != "full" and scale not in scales:
        raise ConfigError(f"scale={scale!r} is not defined; this study has: full, {', '.join(scales) or '(none)'}")
    base = copy.deepcopy(raw["base"])
    _merge_section(base, "data", raw.get("datasets"))
    _merge_section(base, "scaling", raw.get("resources"))
    search = copy.deepcopy(raw.get("search") or {})
    sched = dict(raw.get("scheduler") or {}) if isinstance(raw.get("scheduler") or {}, dict) else raw["scheduler"]
    num_samples = raw.get("num_samples", 1)
    if scale != "full":
        scale_cfg = scales[scale] or {}
        _check_scale(scale, scale_cfg)
        search = _apply_scale(base, search, scale_cfg, scale)
        if isinstance(sched, dict):
            sched.update(scale_cfg.get("scheduler") or {})
        num_samples = scale_cfg.get("num_samples", num_samples)
    for item in overrides:
        from hiir.platform.config import _set_path, parse_override

        key, value = parse_override(item)
        _set_path(base, _axis_key(key).split("."), value)
    axes = [_parse_axis(name, value) for name, value in search.items()]
    if not isinstance(sched, dict):
        raise ConfigError("scheduler must be a mapping like {kind: asha, grace_period: 50}")
    unknown = set(sched) - {f.name for f in dataclasses.fields(Scheduler)}
    if unknown:
        raise ConfigError(f"scheduler.{sorted(unknown)[0]} is not a scheduler field (kind, time_attr, "
                          "grace_period, reduction_factor)")
    if sched.get("kind", "none") not in ("asha", "none"):
        raise ConfigError(f"scheduler.kind={sched['kind']!r} is not one of asha, none")
    spec = StudySpec(
        name=str(raw["name"]), question=str(raw.get("question", "")), base=base, axes=axes,
        num_samples=int(num_samples), scheduler=Scheduler(**sched),
        metric=str(raw.get("metric", "val_psnr")), mode=raw.get("mode", "max"),
        expected=raw.get("expected"), scales=scales, path=path)
    if spec.mode not in ("max", "min"):
        raise ConfigError(f"mode={spec.mode!r} is not one of max, min")
    if spec.num_samples < 1:
        raise ConfigError("num_samples must be >= 1")
    if spec.trial_count < 1:
        raise ConfigError("the search space is empty: every grid axis needs at least one value")
    # Validate the base and every grid point now, not in a trial hours later.
    spec.trial_config({})
    for point in spec.grid_points():
        try:
            spec.trial_config(point)
        except ConfigError as exc:
            raise ConfigError(f"trial {point}: {exc}") from None
    return spec


def _merge_section(base: dict, section: str, values: dict | None) -> None:
    if values:
        if not isinstance(values, dict):
            raise ConfigError(f"{'datasets' if section == 'data' else 'resources'} must be a mapping")
        base.setdefault(section, {}).update(values)


def _check_scale(scale: str, scale_cfg: Any) -> None:
    from hiir.models import PRESETS

    if not isinstance(scale_cfg, dict):
        raise ConfigError(f"scale.{scale} must be a mapping with any of {', '.join(SCALE_KEYS)}")
    for key in scale_cfg:
        if key not in SCALE_KEYS:
            close = difflib.get_close_matches(key, SCALE_KEYS, n=1)
            raise ConfigError(f"scale.{scale}.{key} is not a scale field ({', '.join(SCALE_KEYS)})"
                              + (f"; did you mean {close[0]}?" if close else ""))
    for source, target in (scale_cfg.get("presets") or {}).items():
        for name in (source, target):
            if name not in PRESETS:
                raise ConfigError(f"scale.{scale}.presets: {name!r} is not a known preset; see `hiir models`")


def _apply_scale(base: dict, search: dict, scale_cfg: dict, scale: str) -> dict:
    """Shrink a study: `set` overrides base keys; `presets` swaps big presets for small ones."""
    from hiir.platform.config import _set_path

    for key, value in (scale_cfg.get("set") or {}).items():
        _set_path(base, _axis_key(key).split("."), value)
    swap = scale_cfg.get("presets") or {}
    if swap:
        model = base.setdefault("model", {})
        if model.get("preset") in swap:
            model["preset"] = swap[model["preset"]]
        for name, axis in search.items():
            if _axis_key(name) == "model.preset":
                kind, values = _axis_kind(name, axis)
                search[name] = {kind: list(dict.fromkeys(swap.get(v, v) for v in values))}
    for name, axis in (scale_cfg.get("search") or {}).items():
        search[name] = axis
    return search


def _axis_key(name: str) -> str:
    return AXIS_ALIASES.get(name, name)


def _axis_kind(name: str, value: Any) -> tuple[str, list]:
    if isinstance(value, list):
        return "grid", value
    if not isinstance(value, dict) or len(value) != 1:
        raise ConfigError(f"search.{name} must be a list or one of {{{', '.join(DISTRIBUTIONS)}: ...}}")
    (kind, values), = value.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"search.{name}: {kind!r} is not one of {', '.join(DISTRIBUTIONS)}")
    if not isinstance(values, list):
        raise ConfigError(f"search.{name}.{kind} must be a list")
    return kind, values


def _parse_axis(name: str, value: Any) -> Axis:
    key = _axis_key(name)
    if key not in config_keys():
        close = difflib.get_close_matches(key, list(AXIS_ALIASES) + config_keys(), n=3)
        raise ConfigError(f"search axis {name!r} is not a config field" + (f"; did you mean {', '.join(close)}?" if close else ""))
    kind, values = _axis_kind(name, value)
    if not values:
        raise ConfigError(f"search.{name} is empty")
    if kind in ("uniform", "loguniform", "randint") and len(values) != 2:
        raise ConfigError(f"search.{name}.{kind} needs [low, high]")
    return Axis(key, kind, list(values))


# ---------------------------------------------------------------- running


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

    from hiir.platform.driver import fit_run

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


def storage_root(workdir: Path) -> str:
    """Where checkpoints go: HIIR_STORAGE (s3://, gs://, NFS) on a cluster, else the workdir."""
    return os.environ.get("HIIR_STORAGE", "").rstrip("/") or str(Path(workdir).resolve())


def study_dir(workdir: Path, name: str) -> Path:
    return Path(workdir).resolve() / "studies" / name


def run_study(ref: str | Path, *, workdir: Path, scale: str = "full", overrides: tuple[str, ...] = (),
              tracking_uri: str | None = None, search: str = "basic", address: str | None = None,
              concurrent: int | None = None) -> StudyRun:
    """Validate the spec, create the parent run, run the trials with Ray Tune."""
    import yaml
    from hiir.platform import tracking
    from hiir.platform.driver import (check_cluster_paths, check_fits_locally, check_storage, init_ray,
                                      resolve_datasets)

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
    _write_json(directory / "study.json", state)
    if state["tune_path"] != str(directory):  # beside Tune's state, so a lost head loses no study
        _write_shared_json(state["tune_path"], state)
    results = _tuner(spec, state).fit()
    return _finish(spec.name, directory, state, results)


def resume_study(directory: Path | str, *, address: str | None = None) -> StudyRun:
    """Continue an interrupted study: finished trials are kept, unfinished ones resume from checkpoints.

    `directory` is the study's local directory, or its Tune path on shared storage (s3://.../studies/<name>),
    which also holds study.json: what a cluster whose head node was replaced still has."""
    from ray import tune

    from hiir.platform.driver import init_ray

    shared = "://" in str(directory)
    if shared:
        state = _read_shared_json(str(directory))
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
        _write_json(directory / "study.json", state)
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


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _write_shared_json(uri: str, data: dict) -> None:
    """study.json under a Tune path that may be remote (one object write: never half there)."""
    from hiir.data_prep.shards import filesystem

    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/study.json") as out:
        out.write(json.dumps(data, indent=1, default=str).encode())


def _read_shared_json(uri: str) -> dict:
    from hiir.data_prep.shards import filesystem

    fs, path = filesystem(uri.rstrip("/"))
    try:
        with fs.open_input_stream(f"{path}/study.json") as f:
            return json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise HiirError(f"{uri} holds no readable study.json ({exc}); give the Tune path a study wrote, "
                        f"<HIIR_STORAGE>/studies/<name>") from None


def report_study(ref: str, *, workdir: Path) -> Path:
    """Report for a study given by directory or name (the latest run of that name in `workdir`)."""
    from hiir.platform.report import write_report

    directory = Path(ref) if (Path(ref) / "study.json").is_file() else study_dir(workdir, Path(ref).name)
    state_file = directory / "study.json"
    if not state_file.is_file():
        raise HiirError(f"no study run found for {ref!r} (looked for {state_file}); run `hiir study run` first")
    state = json.loads(state_file.read_text())
    spec = parse_spec(state["raw"], scale=state["scale"], overrides=tuple(state["overrides"]))
    return write_report(directory, spec=spec, tracking_uri=state["tracking_uri"],
                        parent_run_id=state["parent_run_id"])


def list_studies(workdir: Path) -> list[dict[str, Any]]:
    """Every spec under studies/, with its trial count and the MLflow status of its latest run here."""
    import yaml

    rows = []
    root = studies_root()
    for path in sorted(root.rglob("*.yaml")):
        name = str(path.relative_to(root).with_suffix(""))
        raw = yaml.safe_load(path.read_text()) or {}
        if "search" not in raw and "base" not in raw:
            continue  # train configs live beside the studies
        status = "never run"
        state_file = study_dir(workdir, str(raw.get("name", name))) / "study.json"
        if state_file.is_file():
            status = _parent_status(json.loads(state_file.read_text()))
        try:
            trials = load_spec(path).trial_count
        except ConfigError as exc:
            trials, status = 0, f"invalid: {exc}"
        rows.append({"name": name, "trials": trials, "status": status})
    return rows


def _parent_status(state: dict[str, Any]) -> str:
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(state["tracking_uri"]).get_run(state["parent_run_id"])
        return f"{run.info.status.lower()} ({state['scale']}, run {run.info.run_id[:8]})"
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({exc.__class__.__name__})"
