"""The `hiir` command line: a root group and thin noun/verb commands.

Heavy imports (torch, ray, mlflow) sit inside the verbs so `hiir --help` starts fast.
User mistakes end as one line on stderr and exit code 1 (2 for usage errors).
"""
from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hiir")
def cli() -> None:
    """hiir: scaling studies of Hi-IR image-restoration transformers.

    \b
    Start with:
      hiir models                      # presets, parameter counts vs the paper
      hiir study run studies/smoke.yaml  # the smoke study (what `make demo` runs)
      hiir ui                          # browse every run in MLflow
    """


# Each noun lives in its own module; importing them is cheap (their heavy imports sit inside the verbs).
from hiir.platform.cli.data import data  # noqa: E402
from hiir.platform.cli.models import models  # noqa: E402
from hiir.platform.cli.schema import schema  # noqa: E402
from hiir.platform.cli.study import study  # noqa: E402
from hiir.platform.cli.train import eval_, restore, train  # noqa: E402
from hiir.platform.cli.ui import ui  # noqa: E402

for _command in (models, data, train, eval_, restore, study, schema, ui):
    cli.add_command(_command)


def main() -> None:
    """Entry point: turn expected failures into one line and a non-zero exit."""
    from hiir.data_prep import DatasetError
    from hiir.platform.errors import HiirError

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

