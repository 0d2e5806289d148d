"""The floor under a trial's start-up: what a Ray Train run costs before and after any of our code runs.

In one embedded Ray (`runtime.init_ray`, the study's settings), fit the smallest Ray Train runs with the
study's worker shape (one worker, one CPU, the workers' runtime env) several times each:
  empty      a train function that returns at once: Ray Train's controller, placement group, worker
             process and torch.distributed set-up, and its teardown. Nothing of ours is imported.
  imports    the same, importing what a trial's worker imports (`hiir.platform.train.worker`, which brings
             torch, MLflow, Ray Train and pyarrow) and DeepSpeed (imported at engine init).
Each fit is timed from `fit()` to its return; in the worker, from its process start to the train function's
call (`worker setup`) and through the imports. With --busy N, N single-thread torch loops run beside the
fits, as a study's other trial does on a 2-core machine. The first fit of each kind is dropped (cold caches).

    .venv/bin/python bench/trial_floor.py                 # quiet machine, ~1.5 min on 2 cores
    .venv/bin/python bench/trial_floor.py --busy 1        # beside one training loop, as in a study
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))


def empty(config: dict) -> dict:
    from hiir.platform.train.runtime import process_started_at

    return {"started": process_started_at(), "called": time.time(), "imported": time.time()}


def imports(config: dict) -> dict:
    from hiir.platform.train.runtime import process_started_at

    called = time.time()
    import deepspeed  # noqa: F401  (what engine init imports)

    import hiir.platform.train.worker  # noqa: F401  (what the trial's train function is defined in)
    return {"started": process_started_at(), "called": called, "imported": time.time()}


def busy_loop() -> None:
    import torch

    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while True:
        a = torch.tanh(a @ a)


def fit(fn, storage: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hiir.platform.train.runtime import worker_env

    t = time.time()
    result = TorchTrainer(fn, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                          run_config=RunConfig(name=f"floor-{fn.__name__}-{time.time_ns()}", storage_path=storage,
                                               worker_runtime_env={"env_vars": worker_env()})).fit()
    done = time.time()
    stamps = result.return_value
    return {"fit": done - t, "ray_start": stamps["started"] - t, "worker_setup": stamps["called"] - stamps["started"],
            "imports": stamps["imported"] - stamps["called"], "teardown": done - stamps["imported"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fits", type=int, default=4, help="fits of each kind (the first is dropped)")
    ap.add_argument("--busy", type=int, default=0, help="single-thread torch loops running beside the fits")
    args = ap.parse_args()

    import ray

    from hiir.platform.train.runtime import init_ray

    loops = [mp.get_context("spawn").Process(target=busy_loop, daemon=True) for _ in range(args.busy)]
    for p in loops:
        p.start()
    init_ray(num_cpus=os.cpu_count())
    rows: dict[str, list[dict]] = {"empty": [], "imports": []}
    with tempfile.TemporaryDirectory(prefix="hiir-floor-") as storage:
        for i in range(args.fits):
            for name, fn in (("empty", empty), ("imports", imports)):
                row = fit(fn, storage)
                print(f"  {name:8s} fit {i}: " + "  ".join(f"{k} {v:5.2f}" for k, v in row.items()), flush=True)
                if i > 0:
                    rows[name].append(row)
    ray.shutdown()
    for p in loops:
        p.terminate()
    print(f"\nmedian seconds over {args.fits - 1} fits (the first dropped), {args.busy} busy loop(s) beside, "
          f"{os.cpu_count()} cores:")
    for name, rs in rows.items():
        print(f"  {name:8s} " + "  ".join(f"{k} {statistics.median(r[k] for r in rs):5.2f}" for k in rs[0]))


if __name__ == "__main__":
    main()
