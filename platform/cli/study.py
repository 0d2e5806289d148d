"""`hiir study run|resume|report|list`."""
from __future__ import annotations

from pathlib import Path

import click

from hiir.platform.cli.options import address_option, resolve_workdir, tracking_uri_option, workdir_option
from hiir.platform.results.finish import finish_study, study_model_uri
from hiir.platform.results.report import report_study
from hiir.platform.results.transfer import from_study
from hiir.platform.study.run import resume_study, run_study
from hiir.platform.study.state import list_studies


@click.group()
def study() -> None:
    """Scaling studies: Ray Tune trials of Ray Train runs, nested under one MLflow parent run."""


@study.command("run")
@click.argument("spec")
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
def run(spec: str, scale: str, search: str, overrides: tuple[str, ...], no_report: bool, max_concurrent: int | None,
        transfer_from: str | None, workdir: Path, tracking_uri: str | None, address: str | None) -> None:
    """Run a study (a path, or a name under studies/ such as `smoke` or `paper/tree_depth`).

    \b
    Example:
      hiir study run paper/table5_attention --scale smoke
      hiir study run big_sweep.yaml --transfer-from transfer_smoke
    """
    workdir = resolve_workdir(workdir)
    transferred = from_study(transfer_from, workdir) if transfer_from else None
    done = run_study(spec, workdir=workdir, scale=scale, overrides=overrides, tracking_uri=tracking_uri,
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
