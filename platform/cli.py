"""The `hiir` command line: a root group and thin noun/verb commands.

Heavy imports (torch, ray, mlflow) sit inside the verbs so `hiir --help` starts fast.
User mistakes end as one line on stderr and exit code 1 (2 for usage errors).
"""
from __future__ import annotations

import importlib
import sys

import click

# (module, command attribute); each noun lives with its domain.
_COMMANDS = [
    ("hiir.platform.cli_models", "models"),
    ("hiir.platform.cli_data", "data"),
    ("hiir.platform.cli_train", "train"),
    ("hiir.platform.cli_train", "eval_"),
    ("hiir.platform.cli_train", "restore"),
    ("hiir.platform.cli_study", "study"),
    ("hiir.platform.cli_ui", "ui"),
]


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


for _module, _attr in _COMMANDS:
    try:
        cli.add_command(getattr(importlib.import_module(_module), _attr))
    except (ImportError, AttributeError) as exc:  # a noun not built yet must not break the others
        if getattr(exc, "name", None) not in (_module, _attr, None):
            raise


def main() -> None:
    """Entry point: turn expected failures into one line and a non-zero exit."""
    from hiir.platform.errors import HiirError

    user_errors: tuple[type[BaseException], ...] = (HiirError, FileNotFoundError)
    try:
        from hiir.data_prep import DatasetError

        user_errors += (DatasetError,)
    except ImportError:
        pass
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


if __name__ == "__main__":
    main()
