"""Several studies in one table (`hiir study run studies/paper --scale smoke`): per study its state, wall time,
trials against the baseline and seeds, and each claim of the paper beside our answer (`claims`).

`study_line` reads one study back from what its run left: study.json, its MLflow run (status, start and end)
and results.json (its trials and claims). `write_summary` writes `<name>.md` atomically and logs it to MLflow
as a run of its own (`hiir.kind = summary`), with the claim counts as metrics; a second summary of the same
name goes to the same run.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hiir.data_prep.files import write_atomic
from hiir.platform import tracking
from hiir.platform.results.claims import AGREES, CONTRADICTS, UNRESOLVED, ClaimCheck, headline_claims
from hiir.platform.results.markdown import markdown_table
from hiir.platform.study.axes import SEED_AXIS
from hiir.platform.study.state import read_state

SUMMARY_KIND = "summary"  # hiir.kind of a summary's MLflow run


@dataclass
class StudyLine:
    """One study of a summary: where it stands and what it answered."""

    name: str
    spec: str
    status: str                                   # finished, failed, interrupted, or the error that stopped it
    wall_s: float = math.nan                      # its MLflow run's start to end
    trials: int = 0
    finished: int = 0
    below_baseline: int = 0                       # by the mean over val sets
    sets_below: dict[str, int] = field(default_factory=dict)  # val set -> finished trials at or below its baseline
    seeds: int = 0
    claims: list[ClaimCheck] = field(default_factory=list)
    report: str = ""
    note: str = ""                                # what the scale can ask (the scale block's note)

    @property
    def words(self) -> str:
        """The study's progress line."""
        if self.status not in ("finished", "failed"):
            return self.status
        counts = ", ".join(f"{sum(c.verdict == v for c in self.claims)} {v}" for v in (AGREES, CONTRADICTS, UNRESOLVED)
                           if any(c.verdict == v for c in self.claims)) or "no claim to check"
        below = f", {self.below_baseline} at or below the baseline" if self.below_baseline else ""
        below += "".join(f", {n} at or below it on {name}" for name, n in self.sets_below.items())
        return (f"{self.status} in {_minutes(self.wall_s)}: {self.finished} of {self.trials} trials finished{below}, "
                f"{self.seeds} seed{'s' * (self.seeds != 1)}; claims: {counts}")


def study_line(directory: Path, spec_path: str) -> StudyLine:
    """A study's line, read from its directory (study.json, results.json) and its MLflow run."""
    state = read_state(directory)
    run = tracking.Store(state.tracking_uri).get_run(state.parent_run_id)
    status = {"FINISHED": "finished", "FAILED": "failed", "RUNNING": "interrupted"}.get(run.info.status,
                                                                                       run.info.status.lower())
    end = run.info.end_time or time.time() * 1000
    line = StudyLine(state.name, spec_path, status, (end - run.info.start_time) / 1000)
    block = (state.raw.get("scale") or {}).get(state.scale) or {}
    line.note = block.get("note", "") if isinstance(block, dict) else ""
    results = directory / "results.json"
    if results.is_file():
        data = json.loads(results.read_text())
        trials = data.get("trials", [])
        line.trials = len(trials)
        done = [t for t in trials if t["status"] == "FINISHED" and "val_psnr" in t["metrics"]]
        line.finished = len(done)
        line.below_baseline = int(run.data.metrics.get("trials_at_or_below_baseline", 0))  # the report's count
        line.sets_below = {name: s["trials"] for name, s in data.get("sets_below", {}).items()}
        line.seeds = len({t["axes"].get(SEED_AXIS, "0") for t in trials}) if trials else 0
        line.claims = [ClaimCheck(**{**c, "ci_db": tuple(c["ci_db"])}) for c in data.get("claims", [])]
        line.report = str(directory / "report.md")
    return line


def render_summary(title: str, lines: list[StudyLine]) -> str:
    """The summary: one row per study, then one row per claim."""
    out = [f"# {title}", "",
           "Each study as it ran here: its wall time (its MLflow run's start to end), its trials against the baseline "
           "(bicubic for SR, the degraded input otherwise), and each direction the paper states beside ours, judged "
           "by the study report's rules (beyond seed noise, or not resolved at this scale).", "",
           markdown_table([{"study": x.name, "status": x.status, "wall": _minutes(x.wall_s),
                            "trials": f"{x.finished}/{x.trials}", "seeds": x.seeds or "-",
                            "at or below baseline": x.below_baseline,
                            "val sets where some are": ", ".join(f"{k} ({n})" for k, n in x.sets_below.items()) or "-",
                            "claims": len(x.claims),
                            "report": x.report or "-"} for x in lines]), ""]
    rows = [{"study": x.name, "paper says": c.says, "paper": c.paper_words, "ours": c.ours_words,
             "verdict": c.verdict_words} for x in lines for c in x.claims]
    out += ["## The paper's claims beside ours", "", markdown_table(rows), ""]
    unclaimed = [x.name for x in lines if not x.claims and x.status in ("finished", "failed")]
    if unclaimed:
        out += [f"No direction to check (the paper's table gives absolute numbers or sizes only): "
                f"{', '.join(unclaimed)}.", ""]
    notes = [f"- `{x.name}`: {x.note}" for x in lines if x.note]
    if notes:
        out += ["## What this scale can ask", "", *notes, ""]
    return "\n".join(out)


def write_summary(path: Path, lines: list[StudyLine], *, tracking_uri: str, experiment: str,
                  workdir: Path) -> str:
    """Write the summary to `path` and log it to MLflow as a run named after it; returns the run id."""
    write_atomic(path, render_summary(path.stem, lines))
    data = path.with_suffix(".json")
    write_atomic(data, json.dumps([asdict(x) for x in lines], indent=1, default=float))
    store = tracking.Store(tracking_uri)
    run_id, _ = store.find_or_create_run(store.experiment(experiment, workdir), path.stem,
                                         {tracking.KIND_TAG: SUMMARY_KIND})
    claims = [c for x in lines for c in x.claims]
    metrics = {"studies": len(lines), "studies_finished": sum(x.status == "finished" for x in lines),
               "wall_s": sum(x.wall_s for x in lines if math.isfinite(x.wall_s)), **headline_claims(claims)}
    store.log_metrics(run_id, metrics, 0, int(time.time() * 1000))
    for artifact in (path, data):
        store.log_artifact(run_id, artifact)
    store.close(run_id, "FINISHED")
    return run_id


def _minutes(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
