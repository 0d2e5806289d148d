"""What changes when the workers run on other nodes of a Ray cluster: node-local storage and MLflow
stores are refused up front, and a study on an autoscaling cluster does not run its trials one by one.

The nodes are the real local Ray's `ray.nodes()` entries; a second node is that entry with another id
(one machine cannot host two Ray nodes cheaply, and only the fields read here matter)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hiir.platform.config import load_config
from hiir.platform.train.checks import check_cluster_paths, check_fits_locally, workers_leave_this_node
from hiir.platform.errors import HiirError
from hiir.platform.study.run import max_concurrent

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


def test_node_local_storage_and_store_are_refused_on_a_cluster(this_node):
    node, here = this_node
    nodes = [node, {**node, "NodeID": "f" * len(here)}]
    http = "http://mlflow:5000"
    with pytest.raises(HiirError, match=r"storage /work/ray_results is a directory on this node.*HIIR_STORAGE"):
        check_cluster_paths(_cfg(), ADDRESS, ["/work/ray_results"], http, nodes=nodes, here=here)
    with pytest.raises(HiirError, match=r"MLflow store sqlite:///w/mlflow.db is a file on this node.*--tracking-uri"):
        check_cluster_paths(_cfg(), ADDRESS, ["s3://b/hiir"], "sqlite:///w/mlflow.db", nodes=nodes, here=here)
    with pytest.raises(HiirError, match=r"MLflow store /w/mlruns is a file on this node"):
        check_cluster_paths(_cfg(), ADDRESS, ["s3://b/hiir"], "/w/mlruns", nodes=nodes, here=here)
    for server in (http, "databricks", "postgresql://db/mlflow"):
        check_cluster_paths(_cfg(), ADDRESS, ["s3://b/hiir", "file:///mnt/shared/hiir"], server, nodes=nodes, here=here)
    # one node holding every worker, or the embedded Ray: local paths are right
    check_cluster_paths(_cfg(), ADDRESS, ["/work/ray_results"], "sqlite:///w/mlflow.db", nodes=[node], here=here)
    check_cluster_paths(_cfg(), None, ["/work/ray_results"], "sqlite:///w/mlflow.db", nodes=nodes, here=here)


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


@pytest.mark.timeout(240)
def test_embedded_ray_ignores_a_stale_cluster_file_on_every_path(tmp_path):
    """A `ray start --head` that died uncleanly leaves its address in <ray tmp>/ray_current_cluster. A bare
    `ray.init()` would try to join it (and hang on the dead GCS); train, studies and data builds must
    start their own Ray instead."""
    import subprocess
    import sys
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))  # Ray's socket paths must stay short
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")  # nothing listens on port 1
    code = """
import ray
from hiir.data_prep.build import ray_session
from hiir.platform.train.runtime import init_ray
with ray_session():                      # data build / demo path
    print("DATA", ray.cluster_resources().get("CPU"))
init_ray(num_cpus=1)                     # train / study path
print("TRAIN", ray.cluster_resources().get("CPU"))
ray.shutdown()
"""
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=200)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert "DATA" in out.stdout and "TRAIN 1.0" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
