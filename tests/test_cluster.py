"""What changes when the workers run on other nodes of a Ray cluster: node-local storage and MLflow
stores are refused up front, a ZeRO run spreads over the nodes, and a study on an autoscaling cluster
does not run its trials one by one.

The refusals and the spread run on a real two-node cluster (two raylets on this machine, one CPU each,
started in a subprocess beside the session's embedded Ray). The decision of whether workers leave the
driver's node is unit-tested on the local Ray's own node records, one of them given another id."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hiir.platform.config import load_config
from hiir.platform.errors import HiirError
from hiir.platform.study.run import max_concurrent
from hiir.platform.train.checks import check_cluster_paths, check_fits_locally, workers_leave_this_node

ADDRESS = "ray://head:10001"


@pytest.fixture
def this_node(ray_session):
    here = ray_session.get_runtime_context().get_node_id()
    (node,) = [n for n in ray_session.nodes() if n["NodeID"] == here]
    return node, here


def _cfg(**scaling):
    return load_config({"scaling": {"num_workers": 2, "cpus_per_worker": 1, **scaling}})


def test_which_runs_leave_the_drivers_node(this_node):
    node, here = this_node
    other = {**node, "NodeID": "f" * len(here)}
    assert not workers_leave_this_node(_cfg(), [node], here)  # the embedded Ray: 3 CPUs hold 2 workers
    assert workers_leave_this_node(_cfg(), [node, other], here)
    assert not workers_leave_this_node(_cfg(), [node, {**other, "Alive": False}], here)
    assert workers_leave_this_node(_cfg(use_gpu=True), [node], here)  # no GPU here: the autoscaler adds one
    head_without_cpus = {**node, "Resources": {**node["Resources"], "CPU": 0.0}}
    assert workers_leave_this_node(_cfg(), [head_without_cpus], here)
    # one node holding every worker: local paths are right
    check_cluster_paths(_cfg(), ADDRESS, ["/work/ray_results"], "sqlite:///w/mlflow.db", nodes=[node], here=here)


# Run in a subprocess (beside the session's embedded Ray, in this or the other pytest process): a head and a
# second node of one CPU each, so that a run of 2 workers x 1 CPU must put one worker on each. argv: the train
# config (JSON), the workdir (its demo data is built here, on the cluster), a scratch directory, the MLflow
# server's URL, and the path checks to make (JSON: [address?, storage, tracking URI]). Writes
# <scratch>/out.json: each refusal's message (null when accepted), the nodes, the run.
_CLUSTER_SCENARIO = """
import json, os, sys
from pathlib import Path

from hiir.platform.train.runtime import LOCAL_RAY_ENV

os.environ.update(LOCAL_RAY_ENV)  # as the embedded Ray: workers unniced, none started ahead of need
import ray
from ray.cluster_utils import Cluster

from hiir.data_prep import build_demo
from hiir.platform.config import load_config
from hiir.platform.errors import HiirError
from hiir.platform.train.checks import check_cluster_paths
from hiir.platform.train.fit import fit_run

raw, workdir, scratch, url, cases = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], \
    json.loads(sys.argv[5])
cfg, shared = load_config(raw), (scratch / "shared").as_uri()

def refusal(fn):
    try:
        fn()
    except HiirError as exc:
        return str(exc)

import socket
with socket.socket() as s:  # the session's embedded Ray holds Ray's default dashboard port, 8265
    s.bind(("127.0.0.1", 0))
    dashboard_port = s.getsockname()[1]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "dashboard_port": dashboard_port})
try:
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out, address = {}, cluster.address
    os.environ["RAY_ADDRESS"] = address  # the run's data is built on this cluster (a build joins RAY_ADDRESS)
    build_demo(workdir / "data", progress=False, keys=["sr_x2"])
    del os.environ["RAY_ADDRESS"]
    out["local_storage"] = refusal(lambda: fit_run(load_config(raw, values={"name": "local-storage"}),
                                                   workdir=workdir, tracking_uri=url, address=address,
                                                   storage=str(scratch / "local")))
    out["sqlite_store"] = refusal(lambda: fit_run(load_config(raw, values={"name": "sqlite-store"}), workdir=workdir,
                                                  tracking_uri=f"sqlite:///{scratch}/mlflow.db", storage=shared,
                                                  address=address))
    out["cases"] = [refusal(lambda: check_cluster_paths(cfg, address if on else None, storage, uri))
                    for on, storage, uri in cases]  # against the real nodes: ray.nodes(), as fit_run asks
    out["nodes"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    result = fit_run(cfg, workdir=workdir, tracking_uri=url, storage=shared, address=address)
    out.update(run_id=result.run_id, metrics=result.metrics, export=str(result.export_dir))
finally:
    ray.shutdown()
    cluster.shutdown()
(scratch / "out.json").write_text(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_real_two_node_cluster_refuses_node_local_paths_and_spreads_a_zero2_run(train_config, mlflow_server,
                                                                                  tmp_path, checkpoint_dirs):
    from mlflow.tracking import MlflowClient

    from hiir.platform.tracking import WORKER_NODES_TAG
    from hiir.platform.train.checkpoint import verify

    _, url = mlflow_server
    workdir = tmp_path / "workdir"  # data of its own, built on the cluster: it needs no session Ray (conftest)
    cfg = train_config("cluster-z2", optim={"max_steps": 4}, eval={"every": 2, "max_images": 1},
                       tracking={"log_every": 2, "sample_images": 0, "system_metrics_s": 0.0})
    http, both = "http://mlflow:5000", ["s3://b/hiir", "file:///mnt/shared/hiir"]
    cases = [(True, ["/work/ray_results"], http), (True, ["s3://b/hiir"], "sqlite:///w/mlflow.db"),
             (True, ["s3://b/hiir"], "/w/mlruns"),
             *[(True, both, server) for server in (http, "databricks", "postgresql://db/mlflow")],
             (False, ["/work/ray_results"], "sqlite:///w/mlflow.db")]  # no address: the embedded Ray, one node
    ray_tmp = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))  # the cluster's own; Ray's socket paths stay short
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    for key in ("RAY_ADDRESS", "HIIR_STORAGE", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    proc = subprocess.Popen([sys.executable, "-c", _CLUSTER_SCENARIO, json.dumps(cfg.to_dict()), str(workdir),
                             str(tmp_path), url, json.dumps(cases)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, err[-5000:]
    # Ray Train's placement-group cleaner asked this cluster's State API, not the session's Ray beside it, and
    # stopped when the run ended (else each run's end waits out its 12 s stop timeout, or a group leaks)
    assert "multiple active Ray instances" not in err and "Failed to stop PlacementGroupCleaner" not in err, err[-5000:]
    out = json.loads((tmp_path / "out.json").read_text())

    # refused in one line, before anything started: no run folder, no SQLite store, no MLflow run
    assert "\n" not in out["local_storage"] + out["sqlite_store"]
    assert f"storage {tmp_path / 'local'} is a directory on this node, but the Ray cluster at " in out["local_storage"]
    assert "HIIR_STORAGE" in out["local_storage"] and not (tmp_path / "local" / "local-storage").exists()
    assert out["sqlite_store"].startswith(f"MLflow store sqlite:///{tmp_path}/mlflow.db is a file on this node")
    assert "--tracking-uri" in out["sqlite_store"] and not (tmp_path / "mlflow.db").exists()
    refused = dict(zip(["local", "sqlite", "mlruns", "http", "databricks", "postgresql", "embedded"], out["cases"]))
    assert "storage /work/ray_results is a directory on this node" in refused.pop("local")
    assert "MLflow store sqlite:///w/mlflow.db is a file on this node" in refused.pop("sqlite")
    assert "MLflow store /w/mlruns is a file on this node" in refused.pop("mlruns")
    assert all(message is None for message in refused.values()), refused  # servers, shared storage; no address

    # the run spread over both nodes, finished, and left whole checkpoints on the shared storage
    assert out["metrics"]["step"] == 4 and (Path(out["export"]) / "model.safetensors").is_file()
    client = MlflowClient(url)
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    nodes = dict(entry.split("=") for entry in run.data.tags[WORKER_NODES_TAG].split(","))
    assert sorted(nodes) == ["rank0", "rank1"] and sorted(nodes.values()) == out["nodes"], (nodes, out["nodes"])
    assert len(set(nodes.values())) == 2  # one worker on each node
    names = {r.info.run_name for r in client.search_runs([run.info.experiment_id])}
    assert names == {"cluster-z2"}, names  # the refused runs never got as far as an MLflow run
    last = checkpoint_dirs(tmp_path / "shared" / "cluster-z2")[-1]
    verify(last)
    assert sorted(p.name for p in (last / "integrity").iterdir()) == ["rank0.json", "rank1.json"]  # both ranks saved


def test_trials_at_once_follow_the_resources_and_do_not_cap_an_empty_autoscaling_cluster():
    gpu_trial = _cfg(use_gpu=True, num_workers=8)
    assert max_concurrent(gpu_trial, {"CPU": 0.0}) is None  # head only: trials queue, the cluster grows
    assert max_concurrent(gpu_trial, {"CPU": 96.0, "GPU": 8.0}) == 1
    assert max_concurrent(gpu_trial, {"CPU": 384.0, "GPU": 32.0}) == 4
    assert max_concurrent(_cfg(), {"CPU": 3.0}) == 1  # 2 workers + the trial actor
    assert max_concurrent(_cfg(), {"CPU": 8.0}) == 3


def test_a_run_the_embedded_ray_cannot_hold_is_refused_instead_of_waiting_forever(ray_session):
    check_fits_locally(_cfg(), None)  # 2 x 1 CPU in the session's 3
    with pytest.raises(HiirError, match=r"scaling.num_workers=8 .* needs 8 CPU \(has 3\).*lower scaling"):
        check_fits_locally(_cfg(num_workers=8), None)
    with pytest.raises(HiirError, match=r"with a GPU each needs 2 GPU \(has 0\).*use_gpu=false"):
        check_fits_locally(_cfg(use_gpu=True), None)
    check_fits_locally(_cfg(num_workers=8), ADDRESS)  # a cluster may grow: it waits for its nodes
    with pytest.raises(HiirError, match="needs 3.01 CPU"):  # a study's trial actor takes its share too
        check_fits_locally(_cfg(num_workers=3), None, extra_cpu=0.01)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_embedded_ray_ignores_a_stale_cluster_file_and_its_workers_find_their_own_state_api(ray_session,
                                                                                           stale_ray_tmp):
    """A `ray start --head` that died uncleanly leaves its address in <ray tmp>/ray_current_cluster. A bare
    `ray.init()` would try to join it (and hang on the dead GCS); train and studies must start their own Ray
    instead (data builds: tests/test_reliability.py's killed build, under the same stale file). That Ray runs
    beside the session's, as two studies on one machine do: its workers must still reach its State API, which
    Ray Train's PlacementGroupCleaner asks whether a stopped trial's controller is gone (without an address,
    the State API raises, or asks the newest instance, when two run)."""
    import subprocess
    import sys

    code = """
import ray
from hiir.platform.train.runtime import init_ray
init_ray(num_cpus=1)                     # train / study path
print("TRAIN", ray.cluster_resources().get("CPU"))

@ray.remote(num_cpus=0)
def controller_alive() -> bool:          # what the PlacementGroupCleaner asks, from a worker of this Ray
    from ray.train.v2._internal.state.util import is_actor_alive
    return is_actor_alive("ff" * 16, timeout=30)  # an actor id no actor has

print("STATE", ray.get(controller_alive.remote()))
ray.shutdown()
"""
    env = {**os.environ, "RAY_TMPDIR": str(stale_ray_tmp), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=200)
    assert "TRAIN 1.0" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
    assert "STATE " in out.stdout, out.stderr[-3000:]  # the State API answered (an unknown actor: not alive)
