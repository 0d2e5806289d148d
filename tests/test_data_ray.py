"""data_prep on real Ray: the Ray Data build of the demo, and two Ray Train workers reading
disjoint parts of the train split (conftest's session Ray and workdir)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import hiir.data_prep as dp


@pytest.fixture(scope="module")
def demo(workdir):
    """The session's demo datasets (conftest builds them once on the shared local Ray)."""
    return dp.build_demo(workdir / "data", progress=False)


def test_demo_builds_every_set_with_held_out_val(demo):
    assert set(demo) == {"sr_x2", "sr_x3", "sr_x4", "denoise_s25"}
    for key, path in demo.items():
        m = dp.load_manifest(path, verify=True)
        assert m.rows("train") > 100 and m.rows("val") == 3 and not m.skipped, key
        val = {name for name, _, _ in dp.iter_val(path)}
        assert val == set(dp.demo.DEMO_VAL)
        assert not any(s.name.startswith("train") and s.rows == 0 for s in m.shards)
    lq, gt = dp.TrainReader(demo["sr_x4"], rank=1, world_size=2, batch_size=4, lq_patch=16, seed=0).get_batch(0)
    assert lq.shape == (4, 16, 16, 3) and gt.shape == (4, 64, 64, 3)
    _, lq, gt = next(dp.iter_val(demo["sr_x3"]))
    np.testing.assert_array_equal(lq, dp.degrade_image(gt, "sr", scale=3))
    assert dp.build_demo(demo["sr_x2"].parent, progress=False) == demo  # second call: cheap, builds nothing


def _worker(config):
    import ray.train

    from hiir.data_prep import TrainReader

    ctx = ray.train.get_context()
    reader = TrainReader(config["ds"], rank=ctx.get_world_rank(), world_size=ctx.get_world_size(),
                         batch_size=2, lq_patch=8, seed=0)
    reader.get_batch(0)
    with open(os.path.join(config["out"], f"rank{ctx.get_world_rank()}.json"), "w") as f:
        json.dump(reader.row_names, f)


@pytest.mark.slow
def test_two_ray_train_workers_read_disjoint_parts(demo, ray_session, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    TorchTrainer(_worker, train_loop_config={"ds": str(demo["sr_x2"]), "out": str(tmp_path)},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(name="disjoint", storage_path=str(tmp_path / "ray_results"))).fit()
    parts = [set(json.loads((tmp_path / f"rank{k}.json").read_text())) for k in range(2)]
    assert parts[0] and parts[1] and not parts[0] & parts[1]
    assert len(parts[0] | parts[1]) == dp.load_manifest(demo["sr_x2"]).rows("train")
