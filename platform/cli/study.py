"""`hiir study run|resume|report|list`."""
from __future__ import annotations

from pathlib import Path

import click
import yaml

from hiir.platform import tracking
from hiir.platform.cli.options import address_option, resolve_workdir, tracking_uri_option, workdir_option
from hiir.platform.errors import HiirError
from hiir.platform.results.finish import finish_study, study_model_uri
from hiir.platform.results.report import report_study
from hiir.platform.results.summary import StudyLine, study_line, write_summary
from hiir.platform.results.transfer import from_study
from hiir.platform.study.run import StudyRun, resume_study, run_study
from hiir.platform.study.spec import find_specs, load_spec, spec_folder, with_profiles
from hiir.platform.study.state import find_study, list_studies


@click.group()
def study() -> None:
    """Scaling studies: Ray Tune trials of Ray Train runs, nested under one MLflow parent run."""


@study.command("run")
@click.argument("specs", nargs=-1, required=True)
@click.option("--scale", default="full", show_default=True, help="`full`, or a scale the spec defines (e.g. smoke).")
@click.option("--search", type=click.Choice(["basic", "optuna"]), default="basic", show_default=True,
              help="basic: grid/random; optuna: TPE over the same space.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a base config field.")
@click.option("--no-report", is_flag=True, help="Skip writing the report at the end.")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="Trials at once. Default: as many as the cluster holds now (no cap if none fits yet); "
                   "on an autoscaling cluster give what its largest size holds.")
@click.option("--transfer-from", metavar="SMALL_STUDY", default=None,
              help="A finished study (name run in this workdir, or its directory): its best trial's values, except "
                   "size and seed, join the base (before --set), tagged hiir.transfer.* on the study run.")
@workdir_option
@tracking_uri_option
@address_option
def run(specs: tuple[str, ...], scale: str, search: str, overrides: tuple[str, ...], no_report: bool,
        max_concurrent: int | None, transfer_from: str | None, workdir: Path, tracking_uri: str | None,
        address: str | None) -> None:
    """Run a study (a path, or a name under studies/ such as `smoke` or `paper/tree_depth`), or several in
    turn (files, or a folder such as `paper`): a study that already finished at this scale is skipped, an
    interrupted one resumes, and one summary (<workdir>/studies/<folder>-<scale>.md, also an MLflow run) holds
    each study's wall time and the paper's claims beside ours.

    \b
    Example:
      hiir study run paper/table5_attention --scale smoke
      hiir study run paper --scale smoke
      hiir study run big_sweep.yaml --transfer-from transfer_smoke
    """
    workdir = resolve_workdir(workdir)
    paths = find_specs(specs)
    if len(specs) > 1 or spec_folder(specs[0]) is not None:
        if transfer_from:
            raise HiirError("--transfer-from takes one study; run each study that needs it on its own")
        _run_in_turn(specs, paths, scale=scale, search=search, overrides=overrides, concurrent=max_concurrent,
                     workdir=workdir, tracking_uri=tracking_uri, address=address)
        return
    transferred = from_study(transfer_from, workdir) if transfer_from else None
    done = run_study(paths[0], workdir=workdir, scale=scale, overrides=overrides, tracking_uri=tracking_uri,
                     search=search, address=address, concurrent=max_concurrent, transferred=transferred)
    _summarize(done, no_report)


@study.command("resume")
@click.argument("study_dir")
@click.option("--no-report", is_flag=True)
@address_option
def resume(study_dir: str, no_report: bool, address: str | None) -> None:
    """Continue an interrupted study from its directory (<workdir>/studies/<name>), or from its Tune
    path on shared storage (<HIIR_STORAGE>/studies/<name>) when that directory is gone with a head node."""
    _summarize(resume_study(study_dir, address=address), no_report)


@study.command("report")
@click.argument("study_ref")
@workdir_option
def report(study_ref: str, workdir: Path) -> None:
    """Write report.md and plots for a study (its name or directory) and log them to its parent run."""
    workdir = resolve_workdir(workdir)
    path = report_study(study_ref, workdir=workdir)
    click.echo(path.read_text())
    click.echo(f"report: {path}")
    uri, _ = study_model_uri(study_ref, workdir)
    click.echo(f"best model: {uri}  (serve it: hiir serve {uri} --workdir {workdir})" if uri
               else "best model: none registered for this study run")


@study.command("list")
@workdir_option
def list_(workdir: Path) -> None:
    """The studies in studies/ and the state of their latest run in this workdir."""
    for row in list_studies(resolve_workdir(workdir)):
        click.echo(f"{row['name']:<40} {row['trials']:>4} trials  {row['status']}")


def _run_in_turn(refs: tuple[str, ...], paths: list[Path], *, scale: str, search: str, overrides: tuple[str, ...],
                 concurrent: int | None, workdir: Path, tracking_uri: str | None, address: str | None) -> None:
    """Each study in turn, a progress line per study, then the summary. A study that finished at this scale with
    these overrides and this spec is skipped, an interrupted one resumes, an edited one runs anew. A study that
    cannot run is a line in the summary, and the command exits non-zero after the rest have run."""
    lines: list[StudyLine] = []
    for i, path in enumerate(paths, 1):
        head = f"[{i}/{len(paths)}] {path.stem} ({scale})"
        try:
            directory, before = _previous_run(path, scale, overrides, workdir)
            if before == "finished":
                click.echo(f"{head}: finished before, skipped")
                if not (directory / "results.json").is_file():  # its report was skipped, or failed
                    report_study(str(directory), workdir=workdir)
            else:
                click.echo(f"{head}: {'running' if before == 'none' else before} ...")
                done = (resume_study(directory, address=address) if before == "resuming" else
                        run_study(path, workdir=workdir, scale=scale, overrides=overrides, tracking_uri=tracking_uri,
                                  search=search, address=address, concurrent=concurrent))
                finish_study(done)
                _stop_if_interrupted(done)
                directory = done.directory
            line = study_line(directory, str(path))
        except HiirError as exc:
            line = StudyLine(path.stem, str(path), f"not run: {exc}")
        lines.append(line)
        click.echo(f"{head}: {line.words}")
    ran = [x for x in lines if x.report]
    if not ran:
        raise HiirError("no study of these ran to a report, so there is no summary to write")
    state = find_study(ran[-1].name, workdir)[1]
    title = (Path(refs[0].rstrip("/")).name if len(refs) == 1 else "studies") + f"-{scale}"  # paper-smoke
    summary = Path(workdir) / "studies" / f"{title}.md"
    run_id = write_summary(summary, lines, tracking_uri=state.tracking_uri, experiment=state.experiment,
                           workdir=workdir)
    click.echo(summary.read_text())
    click.echo(f"summary: {summary} (MLflow run {run_id})")
    failed = [x.name for x in lines if x.status not in ("finished", "failed")]
    if failed:
        raise HiirError(f"{len(failed)} of {len(lines)} studies did not finish: {', '.join(failed)}")


def _previous_run(path: Path, scale: str, overrides: tuple[str, ...], workdir: Path) -> tuple[Path | None, str]:
    """The study's directory in `workdir` and what its last run there means for this one: `finished` (at this
    scale, with these overrides and this spec: skip it), `resuming` (it was interrupted), `spec edited since its
    last run: running anew`, or `none`."""
    found = find_study(load_spec(path, scale=scale, overrides=overrides).name, workdir)
    if found is None:
        return None, "none"
    directory, state, _ = found
    if state.scale != scale or list(state.overrides) != list(overrides):
        return directory, "none"
    if state.raw != with_profiles(yaml.safe_load(path.read_text())):  # the spec as it ran, profiles written out
        return directory, "spec edited since its last run: running anew"
    status = tracking.Store(state.tracking_uri).get_run(state.parent_run_id).info.status
    if status in ("FINISHED", "FAILED"):
        return directory, "finished"
    return directory, "resuming" if status == "RUNNING" else "none"


def _summarize(done, no_report: bool) -> None:
    errors = sum(1 for r in done.results if r.error is not None)
    click.echo(f"study {done.name}: {len(done.results)} trials, {errors} failed")
    finished = finish_study(done, report=not no_report)
    if finished.report:
        click.echo(finished.report.read_text())
        click.echo(f"report: {finished.report}")
    if finished.model_uri:
        click.echo(f"best model: {finished.model_uri}  (serve it: hiir serve {done.name} --workdir "
                   f"{done.directory.parent.parent})")
    click.echo(f"browse the runs: hiir ui --workdir {done.directory.parent.parent}")
    _stop_if_interrupted(done)


def _stop_if_interrupted(done: StudyRun) -> None:
    """Ctrl-C ends Tune's run as if it were over: say what is left, and exit as an interrupted command does."""
    if done.unfinished:
        click.echo(f"study {done.name} was interrupted with {done.unfinished} trial(s) unfinished; the report covers "
                   f"the finished ones. Continue it with `hiir study resume {done.directory}` (or the same "
                   "`hiir study run` of a folder).", err=True)
        raise click.exceptions.Abort
