"""The floor under the in-study step: the bare loop, run the way a study runs its trials.

`bench/study_overhead.py` compares a study's step with bare loops in plain processes. This script asks what
part of that ratio the stack takes before any of our step's work: for each size of the study, in one embedded
Ray with the study's settings (`runtime.init_ray`, cores + 1 CPUs), a Tune run of `--concurrency` trials at
once (the study's trial actor resources, reused actors), each trial fitting a Ray Train run of one worker with
the study's worker shape and runtime env, and that worker running the bare loop of `study_overhead.bare_loop`
(the trial's model, the engine's optimizer, batch, LQ patch and threads, batches in memory: no DeepSpeed, reader, EMA,
clipping or MLflow). The trials' workers warm up, wait for each other, then time the same windows as the bare
processes do. Bare passes (no Ray) run before and after, so load drift hits both.

    .venv/bin/python bench/step_floor.py                  # studies/smoke.yaml's sizes, ~8 min on 2 cores
    .venv/bin/python bench/step_floor.py --bare-s 30 --json bench/out/step_floor.json

The ratio printed is the floor-to-bare ratio of the median window: what the in-study step would cost with
nothing of ours in it. A study's target below it cannot be met on this machine with Ray Train and Tune.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray
import study_overhead
from ray import cloudpickle, tune
from study_overhead import ROOT, bare_loop, bare_pass, machine, study_sizes, timed_windows, trials_at_once

cloudpickle.register_pickle_by_value(study_overhead)  # the workers cannot import bench/ by name


def floor_loop(config: dict) -> None:
    """Ray Train's train function: the bare loop, timed once every trial's worker has warmed up."""
    steps = bare_loop(config["cfg"])
    steps(config["warmup"], 0)
    scratch, replica = Path(config["scratch"]), config["replica"]
    (scratch / f"ready-{replica}").touch()
    deadline = time.time() + 300
    while len(list(scratch.glob("ready-*"))) < config["concurrency"] and time.time() < deadline:
        time.sleep(0.05)
    windows = timed_windows(steps, config["seconds"], config["every"], config["warmup"])
    (scratch / f"floor-{replica}.json").write_text(json.dumps(windows))


def trial(config: dict) -> None:
    """Tune's trainable, as a study's `run_trial`: one TorchTrainer fit of one worker."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    TorchTrainer(floor_loop, train_loop_config=config,
                 scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": config["cpus"]}),
                 run_config=RunConfig(name=f"floor-{config['replica']}-{time.time_ns()}",
                                      storage_path=config["storage"],
                                      worker_runtime_env={"env_vars": config["env"]})).fit()


def floor_pass(key: str, cfg: dict, concurrency: int, seconds: float, every: int, workdir: Path) -> list[float]:
    from hiir.platform.study.run import TRIAL_ACTOR_CPU
    from hiir.platform.train.runtime import worker_env

    scratch = workdir / f"floor-{key}"
    scratch.mkdir()
    space = {"cfg": cfg, "scratch": str(scratch), "concurrency": concurrency, "seconds": seconds, "every": every,
             "warmup": max(20, every), "cpus": cfg["scaling"]["cpus_per_worker"], "storage": str(workdir / "ray"),
             "env": worker_env(), "replica": tune.grid_search(list(range(concurrency)))}
    tuner = tune.Tuner(tune.with_resources(trial, {"cpu": TRIAL_ACTOR_CPU}), param_space=space,
                       tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
                       run_config=tune.RunConfig(name=f"floor-{key}", storage_path=str(workdir / "tune"),
                                                 verbose=0))
    results = tuner.fit()
    if results.errors:
        raise RuntimeError(f"floor trials of {key} failed: {results.errors[0]}")
    windows = [w for r in range(concurrency) for w in json.loads((scratch / f"floor-{r}.json").read_text())]
    print(f"  floor {key} x{concurrency}: {1000 * statistics.median(windows):.1f} ms/step ({len(windows)} windows)",
          flush=True)
    return windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "studies" / "smoke.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--concurrency", type=int, help="trials at once (default: as many as the study runs)")
    ap.add_argument("--bare-s", type=float, default=20.0, help="timed seconds per loop and pass")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    from hiir.platform.study.spec import load_spec
    from hiir.platform.train.runtime import init_ray

    spec = load_spec(args.spec, overrides=tuple(args.sets))
    base = spec.base_trial
    every, cores = base.tracking.log_every, os.cpu_count() or 1
    concurrency = args.concurrency or trials_at_once(base, cores)
    sizes = {key: cfg.to_dict() for key, cfg in study_sizes(spec).items()}
    mach = machine()
    print(f"{mach['cpu_model']}, {cores} cores, matmul fp32 1 thread {mach['matmul_gflops_1thread']:.1f} GFLOP/s, "
          f"load average {mach['load_avg'][0]:.1f}; {concurrency} loops at a time", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="hiir-step-floor-") as tmp:
        workdir = Path(tmp)
        init_ray(num_cpus=cores + 1)  # as `hiir study run` starts it
        try:
            for key, cfg in sizes.items():
                before = bare_pass({key: cfg}, concurrency, args.bare_s, every, workdir)[key]
                floor = floor_pass(key, cfg, concurrency, args.bare_s, every, workdir)
                after = bare_pass({key: cfg}, concurrency, args.bare_s, every, workdir)[key]
                bare = statistics.median(before + after)
                rows[key] = {"bare_ms": 1000 * bare, "floor_ms": 1000 * statistics.median(floor),
                             "ratio": statistics.median(floor) / bare,
                             "bare_before_ms": 1000 * statistics.median(before),
                             "bare_after_ms": 1000 * statistics.median(after)}
                print(f"  {key}: floor / bare {rows[key]['ratio']:.3f}", flush=True)
        finally:
            ray.shutdown()
    print(f"\n| size | bare x{concurrency} ms/step (before, after) | in Tune + Ray Train, bare loop | floor / bare |")
    print("|---|---|---|---|")
    for key, r in rows.items():
        print(f"| {key} | {r['bare_ms']:.1f} ({r['bare_before_ms']:.1f}, {r['bare_after_ms']:.1f}) | "
              f"{r['floor_ms']:.1f} | **{r['ratio']:.2f}** |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": mach, "concurrency": concurrency, "sizes": rows}, indent=1))


if __name__ == "__main__":
    main()
