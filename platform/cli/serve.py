"""`hiir serve`: a trained model over REST, through `mlflow models serve --env-manager local`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from hiir.platform.cli.foreground import run_in_foreground
from hiir.platform.cli.options import resolve_workdir, tracking_uri_option, workdir_option
from hiir.platform.cli.ui import exposure_warning
from hiir.platform.errors import HiirError
from hiir.platform.results.finish import study_model_uri
from hiir.platform.tracking import resolve_tracking_uri


@click.command()
@click.argument("model")
@workdir_option
@tracking_uri_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. Anything but loopback exposes the model without authentication.")
@click.option("--port", type=int, default=5001, show_default=True, help="Port (hiir ui takes 5000).")
def serve(model: str, workdir: Path, tracking_uri: str | None, host: str, port: int) -> None:
    """Serve a study's best model, or any MLflow model URI, over REST.

    MODEL is a study name (the version `hiir study run` registered for its latest run), or a URI such as
    models:/hiir-smoke/2 or models:/<model id>. POST base64 PNGs to /invocations; the answer holds the
    restored PNGs, base64 (the README's "Trained models in MLflow" has the request).

    \b
    Example:
      hiir serve smoke
      hiir serve models:/hiir-smoke/1 --port 5002
    """
    workdir = resolve_workdir(workdir)
    uri = resolve_tracking_uri(workdir, tracking_uri)
    model_uri = model
    if ":/" not in model and not Path(model).exists():  # a study's name or directory
        model_uri, uri = study_model_uri(model, workdir)
        if model_uri is None:
            raise HiirError(f"study {model!r} has no registered model: its best trial has no logged model, or the "
                            "store no registry (`hiir study run` warned which)")
    warning = exposure_warning(host, "the model server")
    if warning:
        click.echo(warning, err=True)
    click.echo(f"serving {model_uri} from {uri}\n  POST http://{host}:{port}/invocations   (Ctrl-C to stop)")
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
           "--host", host, "--port", str(port)]
    # MLflow starts `uvicorn` by name: put this interpreter's scripts first, as an activated venv would.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    raise SystemExit(run_in_foreground(cmd, env=env))
