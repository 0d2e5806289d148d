"""A study's state on disk: `study.json` (what `resume` and `report` need) in the study's directory and,
on a cluster, beside Tune's state on shared storage; and the list of studies with their MLflow status.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from hiir.data_prep.files import filesystem, write_atomic
from hiir.platform import tracking
from hiir.platform.errors import ConfigError, HiirError
from hiir.platform.study.spec import StudySpec, load_spec, parse_spec, studies_root


class StudyState(BaseModel):
    """study.json: what a trial needs to run, and what `resume` and `report` need to find the study again.
    Its keys are these fields; a file that lacks the optional ones (written before they existed) still reads."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str                            # the study's name (its MLflow parent run, its directory)
    base: dict[str, Any]                 # the resolved base train config every trial starts from
    raw: dict[str, Any]                  # the spec's YAML as it ran, its scale profiles written out
    scale: str                           # the scale block it ran at (full, smoke, ...)
    overrides: list[str]                 # `--set` (and `--transfer-from`) overrides, as applied
    workdir: str                         # the workdir of the driver that started it
    tracking_uri: str                    # its MLflow store
    experiment: str                      # its MLflow experiment
    parent_run_id: str                   # the study's MLflow run; every trial's run is its child
    trial_storage: str                   # where trials keep their checkpoints
    tune_path: str                       # Tune's experiment directory (shared storage on a cluster)
    search: str                          # the searcher: basic or optuna
    spec_path: str                       # the YAML file it was read from
    max_concurrent: int | None = None    # trials at once (--max-concurrent); None: as many as fit
    transfer_from: str | None = None     # the small study whose best values it took (--transfer-from)


def study_dir(workdir: Path, name: str) -> Path:
    return Path(workdir).resolve() / "studies" / name


def write_state(where: str | Path, state: StudyState) -> None:
    """study.json in a study's directory, or under its Tune path on (possibly remote) shared storage."""
    write_atomic(f"{where}/study.json", json.dumps(state.model_dump(mode="json"), indent=1, default=str))


def read_state(where: str | Path) -> StudyState:
    """study.json of a study's directory or Tune path; a missing or unreadable one is a one-line error."""
    fs, path = filesystem(str(where).rstrip("/"))
    try:
        with fs.open_input_stream(f"{path}/study.json") as f:
            return StudyState.model_validate_json(f.read())
    except FileNotFoundError:
        raise HiirError(f"{where} is not a study directory (no study.json); run `hiir study run` first, or give "
                        "the Tune path a study wrote, <HIIR_STORAGE>/studies/<name>") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        raise HiirError(f"{where}/study.json is not a study's state: {'.'.join(map(str, error['loc']))}: "
                        f"{error['msg']}") from None
    except OSError as exc:
        raise HiirError(f"{where} holds no readable study.json ({exc})") from None


def state_spec(state: StudyState) -> StudySpec:
    """The spec a study ran with, as study.json saved it (its YAML, scale and overrides)."""
    return parse_spec(state.raw, scale=state.scale, overrides=tuple(state.overrides))


def find_study(ref: str, workdir: Path) -> tuple[Path, StudyState, StudySpec] | None:
    """A study given by directory or name (the latest run of that name in `workdir`): its directory, state and
    spec; None when no study.json is there."""
    directory = Path(ref) if (Path(ref) / "study.json").is_file() else study_dir(workdir, Path(ref).name)
    if not (directory / "study.json").is_file():
        return None
    state = read_state(directory)
    return directory, state, state_spec(state)


def list_studies(workdir: Path) -> list[dict[str, Any]]:
    """Every spec under studies/, with its trial count and the MLflow status of its latest run here."""
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
            status = _parent_status(read_state(state_file.parent))
        try:
            trials = load_spec(path).trial_count
        except ConfigError as exc:
            trials, status = 0, f"invalid: {exc}"
        rows.append({"name": name, "trials": trials, "status": status})
    return rows


def _parent_status(state: StudyState) -> str:
    try:
        run = tracking.Store(state.tracking_uri).get_run(state.parent_run_id)
        return f"{run.info.status.lower()} ({state.scale}, run {run.info.run_id[:8]})"
    except Exception as exc:  # noqa: BLE001 (a listing shows every study; a store it cannot reach is one status)
        return f"unknown ({exc.__class__.__name__})"
