"""The `hiir` command line: a root group and thin noun/verb commands, one module per noun.

The root group imports a noun's module only when that noun runs (`LazyGroup`), so `hiir --help` lists every
command without importing torch, Ray or MLflow; each noun's module imports what it needs at its top.
User mistakes end as one line on stderr and exit code 1 (2 for usage errors).
"""
from __future__ import annotations

import importlib
import sys

import click

from hiir.data_prep import DatasetError
from hiir.platform.errors import HiirError

# name -> (module:attribute, its short help as click words it at 45 characters; tests/test_cli.py checks both)
COMMANDS = {
    "models": ("hiir.platform.cli.models:models", "List the Hi-IR presets: parameters vs the..."),
    "data": ("hiir.platform.cli.data:data", "Build and check datasets (Parquet shards +..."),
    "train": ("hiir.platform.cli.train:train", "Train one Hi-IR config on Ray Train..."),
    "eval": ("hiir.platform.cli.train:eval_", "Score exported weights on dataset..."),
    "restore": ("hiir.platform.cli.train:restore", "Restore image files or folders with..."),
    "study": ("hiir.platform.cli.study:study", "Scaling studies: Ray Tune trials of Ray..."),
    "schema": ("hiir.platform.cli.schema:schema", "Print the JSON Schema of a train config..."),
    "ui": ("hiir.platform.cli.ui:ui", "Serve the MLflow UI for the project's runs..."),
    "serve": ("hiir.platform.cli.serve:serve", "Serve a study's best model, or any MLflow..."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when invoked; the help lists them from `COMMANDS`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hiir")
def cli() -> None:
    """hiir: scaling studies of Hi-IR image-restoration transformers.

    \b
    Start with:
      hiir models                      # presets, parameter counts vs the paper
      hiir study run studies/smoke.yaml  # the smoke study (what `make demo` runs)
      hiir ui                          # browse every run in MLflow
    """


def main() -> None:
    """Entry point: turn expected failures into one line and a non-zero exit."""
    user_errors = (HiirError, DatasetError, FileNotFoundError)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except user_errors as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
