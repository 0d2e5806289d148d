"""`hiir schema train|study`: the JSON Schema of a train config or a study spec, for editors."""
from __future__ import annotations

import json

import click

from hiir.platform.config import train_schema
from hiir.platform.study.spec import study_schema


def schema_text(kind: str) -> str:
    """The schema as the repo keeps it in studies/schema/<kind>.schema.json."""
    make = train_schema if kind == "train" else study_schema
    return json.dumps(make(), indent=2) + "\n"


@click.command()
@click.argument("kind", type=click.Choice(["train", "study"]))
def schema(kind: str) -> None:
    """Print the JSON Schema of a train config (`train`) or a study spec (`study`).

    An editor with a YAML language server completes and checks a file against it; the repo keeps both
    in studies/schema/, and a YAML file opts in with its first line:

    \b
      # yaml-language-server: $schema=schema/study.schema.json
    Example:
      hiir schema study > studies/schema/study.schema.json
    """
    click.echo(schema_text(kind), nl=False)
