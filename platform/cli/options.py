"""Options shared by several verbs, defined once (MLflow's cli_args pattern)."""
from __future__ import annotations

import os
from pathlib import Path

import click

DEFAULT_WORKDIR = "hiir-work"

workdir_option = click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="HIIR_WORKDIR",
    default=DEFAULT_WORKDIR,
    show_default=True,
    help="Where datasets, the MLflow store and Ray results live (env: HIIR_WORKDIR).",
)
tracking_uri_option = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    default=None,
    help="MLflow tracking URI (env: MLFLOW_TRACKING_URI). Default: sqlite:///<workdir>/mlflow.db.",
)
address_option = click.option(
    "--address",
    envvar="RAY_ADDRESS",
    default=None,
    help="Ray cluster address (env: RAY_ADDRESS). Default: start an embedded local Ray.",
)

device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where the model runs: auto (the first CUDA GPU if any, else cpu), cpu, cuda or cuda:N.",
)


def resolve_workdir(workdir: Path) -> Path:
    """Absolute workdir: Ray workers and MLflow run in other cwds."""
    return Path(os.path.abspath(os.path.expanduser(str(workdir))))
