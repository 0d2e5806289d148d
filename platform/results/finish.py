"""Finishing a study: the one place a study's end goes through (`hiir study run|resume` call `finish_study`).

`finish_study` registers the best finished trial (by the study's metric and mode) as the registered model
`hiir-<study>`, a new version per study run tagged with the study, the trial and the metric, and tags the
study run with that version's `models:/` URI; then it writes the report. `study_model_uri` reads the URI back
for `hiir study report` and `hiir serve STUDY`. A store without a model registry (or a best trial whose
model was never logged) costs one warning line, never the study.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hiir.platform import tracking
from hiir.platform.errors import HiirError
from hiir.platform.results.report import report_study
from hiir.platform.study.state import find_study, read_state, state_spec

if TYPE_CHECKING:  # the type only: study.run imports Ray, which `hiir serve` and `hiir study report` never need
    from hiir.platform.study.run import StudyRun

log = logging.getLogger("hiir.results")


@dataclass
class Finished:
    report: Path | None  # report.md, unless the report was skipped
    model_uri: str | None  # models:/hiir-<study>/<version>, when the best trial was registered


def finish_study(done: StudyRun, *, report: bool = True) -> Finished:
    """Register the study's best trial, then write its report (unless `report` is False)."""
    state = read_state(done.directory)
    model_uri = register_best(state.tracking_uri, state_spec(state), done.parent_run_id)
    path = report_study(str(done.directory), workdir=done.directory.parent.parent) if report else None
    return Finished(path, model_uri)


def register_best(tracking_uri: str, spec, parent_run_id: str) -> str | None:
    """Register the best finished trial's logged model as a new version of `hiir-<study>`; its URI, or None
    (with one warning line) when there is no such trial, it has no logged model, or the store no registry."""
    store = tracking.Store(tracking_uri)
    finished = [r for r in store.children(parent_run_id)
                if r.info.status == "FINISHED" and spec.metric in r.data.metrics]
    if not finished:
        log.warning("study %s has no finished trial with %s: no model registered", spec.name, spec.metric)
        return None
    sign = 1 if spec.mode == "max" else -1
    best = max(finished, key=lambda r: sign * r.data.metrics[spec.metric])
    trial = best.data.tags.get(tracking.TRIAL_TAG, best.info.run_name)
    name = tracking.registered_name(spec.name)
    tags = {tracking.STUDY_TAG: spec.name, tracking.TRIAL_TAG: trial, tracking.STUDY_RUN_TAG: parent_run_id,
            tracking.METRIC_TAG: f"{spec.metric}={best.data.metrics[spec.metric]:.4f} ({spec.mode})"}
    if store.model_id(best) is None:
        log.warning("the best trial of study %s (%s) has no logged MLflow model (%s): not registered", spec.name,
                    trial, best.data.tags.get(tracking.MODEL_TAG, "a run from before hiir logged models"))
        return None
    try:
        version = store.register(name, best.info.run_id, tags)
    except Exception as exc:  # noqa: BLE001 (a store without a registry must not fail the study)
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        log.warning("model registry unavailable at %s (%s): the best trial %s stays unregistered, models:/%s",
                    tracking_uri, reason, trial, store.model_id(best))
        return None
    uri = f"models:/{name}/{version}"
    store.set_tags(parent_run_id, {tracking.MODEL_TAG: uri})
    return uri


def study_model_uri(ref: str, workdir: Path) -> tuple[str | None, str]:
    """The `models:/` URI registered for a study's latest run (by name or directory), or None; and the
    tracking URI of the store that holds it."""
    found = find_study(ref, workdir)
    if found is None:
        raise HiirError(f"no study run found for {ref!r} in {workdir}; run `hiir study run` first")
    _, state, _ = found
    uri = tracking.Store(state.tracking_uri).get_run(state.parent_run_id).data.tags.get(tracking.MODEL_TAG)
    return (uri if uri and uri.startswith("models:/") else None), state.tracking_uri
