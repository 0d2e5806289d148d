"""`hiir models`: every preset with its parameter count next to the paper's, GFLOPs and (p, P)."""
from __future__ import annotations

import json

import click

_COLUMNS = (("name", "preset", "<22"), ("params_m", "params[M]", ">9"), ("paper_m", "paper[M]", ">8"),
            ("diff_pct", "diff%", ">6"), ("gflops", "GFLOPs", ">8"), ("flops_input", "input", "<11"),
            ("window", "p", ">7"), ("patch", "P", ">11"))


def _cell(value, fmt: str) -> str:
    text = "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
    return format(text, fmt)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table.")
@click.option("--no-flops", is_flag=True, help="Skip the FLOP count (parameter counts only, faster).")
def models(as_json: bool, no_flops: bool) -> None:
    """List the Hi-IR presets: parameters vs the paper, GFLOPs, window p and patch P.

    \b
    GFLOPs are counted by torch.utils.flop_counter (a multiply-add is 2 FLOPs) for one
    image: 64x64 LR for SR presets, 256x256 for the U-shape.
    Examples:
      hiir models
      hiir models --json --no-flops
    """
    from hiir.models.summary import preset_table

    rows = preset_table(flops=not no_flops)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo("  ".join(_cell(title, fmt) for _, title, fmt in _COLUMNS))
    for row in rows:
        click.echo("  ".join(_cell(row[key], fmt) for key, _, fmt in _COLUMNS))
