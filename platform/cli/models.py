"""`hiir models`: every preset with its parameter count next to the paper's, GFLOPs and (p, P);
with `--family F --params N`, the config that size family F gives at N parameters; with
`--coord-check F`, μP's coordinate check over widths of family F (`hiir.models.coord_check`)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from hiir.data_prep.files import write_atomic
from hiir.models.coord_check import coord_check, verdict
from hiir.models.families import format_size, get_family, parse_size, solve
from hiir.models.summary import preset_table
from hiir.platform.cli.options import resolve_workdir, workdir_option
from hiir.platform.errors import HiirError
from hiir.platform.results.plots import plot_panels

_COLUMNS = (("name", "preset", "<22"), ("params_m", "params[M]", ">9"), ("paper_m", "paper[M]", ">8"),
            ("diff_pct", "diff%", ">6"), ("gflops", "GFLOPs", ">8"), ("flops_input", "input", "<11"),
            ("window", "p", ">7"), ("patch", "P", ">11"))
_SOLVED = (("target", "target", "<9"), ("achieved", "achieved", ">9"), ("error_pct", "diff%", ">6"),
           ("dim", "C", ">5"), ("depth", "depth", ">6"), ("heads", "heads", ">5"), ("head_width", "head", ">4"),
           ("window", "p", ">3"), ("patch", "P", ">3"), ("cpb_hidden", "cpb", ">4"), ("upsampler_dim", "ups", ">4"),
           ("rule", "  rule", "<"))


def _cell(value, fmt: str) -> str:
    text = "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
    return format(text, fmt)


def _sizes(ctx, param, values: tuple[str, ...]) -> tuple[int, ...]:
    if not values:
        return ()
    try:
        return tuple(parse_size(v) for v in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table.")
@click.option("--no-flops", is_flag=True, help="Skip the FLOP count (parameter counts only, faster).")
@click.option("--family", default=None, help="A size family (b, tiny): solve --params instead of listing presets.")
@click.option("--params", "targets", multiple=True, callback=_sizes,
              help="Target parameter count with --family: 30M, 0.05M, 500k, 1.2B, 2e6 (repeatable).")
@click.option("--coord-check", "coord_family", default=None, metavar="FAMILY",
              help="Run μP's coordinate check on widths of this family; write slopes (JSON) and a plot to --out.")
@click.option("--widths", multiple=True, type=click.IntRange(min=1),
              help="Widths C for --coord-check (repeatable, 4+ to see a trend). Default: 4 doublings from C0/2.")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True, help="Adam steps per width.")
@click.option("--seeds", type=click.IntRange(min=1), default=4, show_default=True, help="Seeds averaged per width.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where --coord-check writes coord_check.json and .png. Default: <workdir>/coord_check/FAMILY.")
@workdir_option
def models(as_json: bool, no_flops: bool, family: str | None, targets: tuple[int, ...], coord_family: str | None,
           widths: tuple[int, ...], steps: int, seeds: int, out: Path | None, workdir: Path) -> None:
    """List the Hi-IR presets: parameters vs the paper, GFLOPs, window p and patch P.
    With --family and --params: the config a size family gives at that count.

    \b
    GFLOPs are counted by torch.utils.flop_counter (a multiply-add is 2 FLOPs) for one
    image: 64x64 LR for SR presets, 256x256 for the U-shape.
    Examples:
      hiir models
      hiir models --json --no-flops
      hiir models --family b --params 30M
      hiir models --family tiny --params 0.05M --params 0.2M --json
      hiir models --coord-check tiny --widths 16 --widths 32 --widths 64 --widths 128
    """
    if coord_family is not None:
        out = out or resolve_workdir(workdir) / "coord_check" / coord_family
        _coord_check(coord_family, list(widths), steps, seeds, out)
        return
    if (family is None) != (not targets):
        raise click.UsageError("--family and --params go together (e.g. --family b --params 30M)")
    if family is not None:
        _print_solved(family, targets, as_json)
        return
    rows = preset_table(flops=not no_flops)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo("  ".join(_cell(title, fmt) for _, title, fmt in _COLUMNS))
    for row in rows:
        click.echo("  ".join(_cell(row[key], fmt) for key, _, fmt in _COLUMNS))


def _print_solved(family: str, targets: tuple[int, ...], as_json: bool) -> None:
    """One row per target: the solved shape and the count it achieves (solve() in models/families.py)."""
    try:
        fam = get_family(family)
        solved = [solve(fam, target) for target in targets]
    except ValueError as exc:  # an unknown family, a target out of the family's range
        raise HiirError(str(exc)) from None
    if as_json:
        click.echo(json.dumps([{**s.row(), "config": dataclasses.asdict(s.config)} for s in solved], indent=2))
        return
    click.echo(fam.describe())
    click.echo("  ".join(_cell(title, fmt) for _, title, fmt in _SOLVED))
    for s in solved:
        row = {**s.row(), "target": format_size(s.target), "achieved": format_size(s.achieved),
               "error_pct": f"{100 * s.error:+.2f}", "depth": f"{s.config.stages}x{s.config.layers_per_stage}"}
        click.echo("  ".join(_cell(row[key], fmt) for key, _, fmt in _SOLVED))


def _coord_check(family: str, widths: list[int], steps: int, seeds: int, out: Path) -> None:
    """Run the check, write its slopes (JSON) and the plot atomically, print the slopes per kind and the verdict."""
    try:
        result = coord_check(family, widths or None, steps=steps, seeds=seeds)
    except ValueError as exc:  # an unknown family, a width with no heads
        raise HiirError(f"--coord-check {family}: {exc}") from None
    runs = result["parametrizations"]
    write_atomic(out / "coord_check.json", json.dumps({**result, "verdict": verdict(result["summary"])}, indent=1))
    panels = {p: {kind: (result["widths"], [c[-1] for c in v["mean_abs"]]) for kind, v in runs[p]["kinds"].items()}
              for p in runs}
    plot = plot_panels(panels, out / "coord_check.png", xlabel="width C", ylabel=f"mean |activation| at step {steps}",
                       logy=True, sharey=True, xticks=result["widths"],
                       title=f"coordinate check, family {family}: flat under μP, growing under standard")
    click.echo(f"{'kind':<12}{'standard':>10}{'mup':>8}   (slope of log2 mean |activation| per doubling of width)")
    for kind in runs["standard"]["kinds"]:
        click.echo(f"{kind:<12}{runs['standard']['kinds'][kind]['slope']:>10.2f}{runs['mup']['kinds'][kind]['slope']:>8.2f}")
    click.echo(verdict(result["summary"]))
    click.echo(f"widths {result['widths']}, {steps} steps, {seeds} seed(s); wrote {out / 'coord_check.json'}, {plot}")
