"""`hiir ui`: the MLflow UI over the project's store."""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path

import click

from hiir.platform.cli.foreground import run_in_foreground
from hiir.platform.cli.options import resolve_workdir, tracking_uri_option, workdir_option
from hiir.platform.tracking import Store, resolve_tracking_uri


@click.command()
@workdir_option
@tracking_uri_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. Anything but loopback exposes every run without authentication.")
@click.option("--port", type=int, default=5000, show_default=True)
def ui(workdir: Path, tracking_uri: str | None, host: str, port: int) -> None:
    """Serve the MLflow UI for the project's runs (default store: sqlite:///<workdir>/mlflow.db).

    With MLFLOW_TRACKING_URI pointing at a server, open that server's own UI instead.
    """
    workdir = resolve_workdir(workdir)
    uri = resolve_tracking_uri(workdir, tracking_uri)
    if uri.startswith("http"):
        click.echo(f"MLFLOW_TRACKING_URI is a server: open {uri} in a browser.")
        return
    warning = exposure_warning(host)
    if warning:
        click.echo(warning, err=True)
    workdir.mkdir(parents=True, exist_ok=True)
    artifacts = workdir / "mlartifacts"
    click.echo(f"MLflow UI for {uri}\n  http://{host}:{port}   (Ctrl-C to stop)")
    for name, link in study_links(uri, f"http://{host}:{port}").items():
        click.echo(f"  studies in {name}: {link}")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--default-artifact-root", artifacts.as_uri(), "--host", host, "--port", str(port),
           "--workers", "1"]  # one reader: each extra worker is another MLflow import before the page answers
    raise SystemExit(run_in_foreground(cmd, env={**os.environ, "MLFLOW_TRACKING_URI": uri}))


def study_links(uri: str, base_url: str) -> dict[str, str]:
    """Experiment name -> the link that opens its runs table, trials nested under their study. MLflow 3
    opens an experiment on its GenAI traces page, empty for training runs; `workflowType=machine_learning`
    selects the model-training view."""
    return {name: f"{base_url}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
            for name, exp_id in Store(uri).study_experiments().items()}


def exposure_warning(host: str, what: str = "the MLflow UI") -> str | None:
    """A warning when `host` is not a loopback address: the MLflow UI (and `hiir serve`'s model server) has no
    authentication."""
    try:
        return None if ipaddress.ip_address(host).is_loopback else _exposed(host, what)
    except ValueError:
        pass  # a name: resolve it
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        if addresses and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
            return None
    except (OSError, ValueError):
        pass
    return _exposed(host, what)


def _exposed(host: str, what: str) -> str:
    return f"warning: binding {host} exposes {what}, unauthenticated, beyond this machine"
