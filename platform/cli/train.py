"""`hiir train`, `hiir eval`, `hiir restore`: thin verbs over the driver and the evaluator."""
from __future__ import annotations

import json
from pathlib import Path

import click
from torch import nn
from tqdm import tqdm

from hiir.models.inference import check_tiling
from hiir.platform.cli.options import (
    address_option,
    device_option,
    resolve_workdir,
    tracking_uri_option,
    workdir_option,
)
from hiir.platform.config import load_config_file
from hiir.platform.evaluation.evaluate import evaluate_datasets, load_exported, resolve_device, summarize
from hiir.platform.evaluation.restore import restore_files
from hiir.platform.train.fit import fit_run


@click.command()
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. --set optim.lr=1e-4 --set model.attention=cosine.")
@workdir_option
@tracking_uri_option
@address_option
def train(config_file: Path, overrides: tuple[str, ...], workdir: Path, tracking_uri: str | None,
          address: str | None) -> None:
    """Train one Hi-IR config on Ray Train (DeepSpeed ZeRO or DDP), tracked in MLflow.

    A re-run with the same `name` resumes from its latest checkpoint.

    \b
    Example:
      hiir train studies/train/tiny_sr_x2.yaml --set optim.max_steps=400
    """
    cfg = load_config_file(config_file, overrides)
    result = fit_run(cfg, workdir=resolve_workdir(workdir), tracking_uri=tracking_uri, address=address)
    _print_metrics(result.metrics)
    click.echo(f"weights: {result.export_dir}\nMLflow run: {result.run_id}  (browse with `hiir ui`)")


@click.command("eval")
@click.argument("weights", type=click.Path(exists=True, path_type=Path))
@click.argument("datasets", nargs=-1, required=True)
@click.option("--self-ensemble", is_flag=True, help="Also report the x8 self-ensemble ('+') numbers.")
@click.option("--tile", type=int, default=0, show_default=True,
              help="Tile side (LQ px) above which to tile; 0 = whole image.")
@click.option("--overlap", type=int, default=16, show_default=True, help="Tile overlap in LQ px.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@device_option
def eval_(weights: Path, datasets: tuple[str, ...], self_ensemble: bool, tile: int, overlap: int, as_json: bool,
          device: str) -> None:
    """Score exported weights on dataset directories (BasicSR PSNR/SSIM, RGB and Y).

    \b
    Example:
      hiir eval hiir-work/runs/my-run hiir-work/data/demo_sr_x2 --self-ensemble
    """
    on = resolve_device(device)  # before loading anything: a wrong device is the cheapest error
    model = load_exported(weights).to(on)
    _check_tiling(model, tile, overlap)
    dirs = [str(Path(d).resolve()) if "://" not in d else d for d in datasets]
    results = evaluate_datasets(model, dirs, tile=tile, overlap=overlap, self_ensemble=self_ensemble,
                                progress=not as_json).metrics
    if as_json:
        click.echo(json.dumps(results, indent=1))
    else:
        _print_table(summarize(results))


@click.command()
@click.argument("weights", type=click.Path(exists=True, path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("restored"), show_default=True)
@click.option("--tile", type=int, default=0, show_default=True,
              help="Tile side (LQ px) above which to tile; 0 = whole image.")
@click.option("--overlap", type=int, default=16, show_default=True)
@click.option("--self-ensemble", is_flag=True)
@device_option
def restore(weights: Path, inputs: tuple[Path, ...], out: Path, tile: int, overlap: int, self_ensemble: bool,
            device: str) -> None:
    """Restore image files or folders with exported weights; writes PNGs to --out.

    \b
    Example:
      hiir restore hiir-work/runs/my-run photo.png --tile 256 --overlap 32
    """
    on = resolve_device(device)
    model = load_exported(weights).to(on)
    _check_tiling(model, tile, overlap)
    files = [p for i in inputs for p in (sorted(i.iterdir()) if i.is_dir() else [i]) if p.is_file()]
    for path in tqdm(files, desc="restore", unit="img"):
        restore_files(model, path, out, tile=tile, overlap=overlap, self_ensemble=self_ensemble)
    click.echo(f"{len(files)} image(s) written to {out}")


def _check_tiling(model: nn.Module, tile: int, overlap: int) -> None:
    if tile:
        try:
            check_tiling(model.pad_multiple, tile, overlap)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--tile' / '--overlap'") from None


def _print_metrics(metrics: dict) -> None:
    rows = summarize(metrics)
    if rows:
        _print_table(rows)
    for key in ("step", "loss", "val_psnr"):
        if key in metrics:
            click.echo(f"{key}: {metrics[key]:.4f}" if isinstance(metrics[key], float) else f"{key}: {metrics[key]}")


def _print_table(rows: list[dict]) -> None:
    if not rows:
        click.echo("(no results)")
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols}
    click.echo("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        click.echo("  ".join(fmt(r.get(c, "")).ljust(widths[c]) for c in cols))
