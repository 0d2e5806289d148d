"""`hiir data build|verify|demo`: thin verbs over hiir.data_prep (heavy imports inside)."""
from __future__ import annotations

from pathlib import Path

import click
import yaml

from hiir.data_prep import build_dataset, build_demo, load_manifest
from hiir.platform.cli.options import resolve_workdir, workdir_option


@click.group()
def data() -> None:
    """Build and check datasets (Parquet shards + manifest.json)."""


@data.command()
@click.argument("source")
@click.option("--task",
              type=click.Choice(["sr", "denoise", "jpeg", "paired", "online",
                                 "derain", "dehaze", "deblur", "lowlight"]),
              help="Degradation (not for demo). online: HR-only shards, degraded on the fly in training; "
                   "derain/dehaze/deblur/lowlight: synthetic stand-ins, labelled so in the manifest.")
@click.option("--scale", type=click.IntRange(1, 8), default=None, help="SR factor: 2, 3 or 4 (task sr; paired SR).")
@click.option("--sigma", type=float, default=None, help="Gaussian noise sigma in 8-bit levels (task denoise).")
@click.option("--quality", type=click.IntRange(1, 100), default=None, help="JPEG quality (task jpeg).")
@click.option("--lq", "lq_source", type=click.Path(file_okay=False), default=None,
              help="LQ folder, matched by file name (task paired).")
@click.option("--degrade", "pipeline", default=None,
              help="task online: default on-the-fly pipeline, YAML, e.g. '[{kind: noise, sigma: [15, 75]}]'.")
@click.option("--split", type=click.Choice(["train", "val", "both"]), default="train", show_default=True)
@click.option("--sub-size", type=int, default=480, show_default=True, help="GT sub-image size of the train split.")
@click.option("--step", type=int, default=240, show_default=True, help="Stride between train sub-images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--strict", is_flag=True, help="Fail on an unreadable image instead of skipping it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset in --out.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Dataset directory (default <workdir>/data/<name>).")
@workdir_option
def build(source, task, scale, sigma, quality, lq_source, pipeline, split, sub_size, step, seed, strict, overwrite, out,
          workdir):
    """Build a dataset from an image folder, or the demo datasets with SOURCE=demo.

    \b
      hiir data build demo
      hiir data build ~/DIV2K/HR --task sr --scale 2 --out div2k_x2
      hiir data build gt/ --task paired --lq blurred/ --split val --out gopro_val
      hiir data build ~/DFWB --task online --degrade '[{kind: noise, sigma: [15, 75]}]' --out dfwb_hr
    """
    if source == "demo":
        for key, path in build_demo(resolve_workdir(workdir) / "data").items():
            click.echo(f"{key}: {path}")
        return
    if task is None:
        raise click.BadParameter("is required unless SOURCE is demo", param_hint="--task")
    out = Path(out) if out else resolve_workdir(workdir) / "data" / f"{Path(source).name}_{task}"
    if pipeline is not None:
        pipeline = yaml.safe_load(pipeline)
    m = build_dataset(source, out, task, scale=scale, sigma=sigma, quality=quality, lq_source=lq_source, split=split,
                      sub_size=sub_size, step=step, seed=seed, strict=strict, overwrite=overwrite, pipeline=pipeline)
    click.echo(f"{out}: {m.rows('train')} train rows, {m.rows('val')} val images, {len(m.skipped)} skipped")


@data.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
def verify(dataset_dir):
    """Check a dataset's manifest, shard names and sha256 checksums."""
    m = load_manifest(dataset_dir, verify=True)
    click.echo(f"{dataset_dir}: ok ({m.task} x{m.scale}, {len(m.shards)} shards, "
               f"{m.rows('train')} train rows, {m.rows('val')} val images, {len(m.skipped)} skipped)")
