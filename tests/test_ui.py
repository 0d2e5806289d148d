"""`hiir ui` serves the MLflow UI over the workdir's SQLite store on 127.0.0.1."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ui_serves_the_store_and_stops_with_everything_it_started(tmp_path, stop_verb):
    from hiir.platform.tracking import Store, default_tracking_uri

    store = Store(default_tracking_uri(tmp_path))
    store.experiment("probe-experiment", tmp_path)
    studies = store.experiment("probe-studies", tmp_path)
    store.create_study_run(studies, "probe-study", scale="smoke", question="?", params={})
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "hiir.platform.cli", "ui", "--workdir", str(tmp_path),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline, body = time.time() + 120, None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=10", timeout=5) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(1)
        assert body is not None, "MLflow UI did not come up"
        assert "probe-experiment" in {e["name"] for e in body["experiments"]}
    finally:
        out = stop_verb(proc) if proc.poll() is None else proc.communicate()[0]
    assert f"http://127.0.0.1:{port}" in out
    # a link straight to the studies' runs table (MLflow 3 would open on its empty GenAI traces page)
    assert f"studies in probe-studies: http://127.0.0.1:{port}/#/experiments/{studies}/runs" \
           f"?workflowType=machine_learning" in out, out
    assert "probe-experiment:" not in out  # no study there


def test_only_loopback_binds_are_quiet():
    from hiir.platform.cli.ui import exposure_warning

    assert exposure_warning("127.0.0.1") is None and exposure_warning("localhost") is None
    assert exposure_warning("::1") is None
    assert "exposes the MLflow UI" in exposure_warning("0.0.0.0")
    assert "exposes the MLflow UI" in exposure_warning("192.0.2.10")
