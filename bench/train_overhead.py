"""Training overhead: one Ray Train worker with DeepSpeed ZeRO-2 against a bare torch loop.

For each size (preset, batch, LQ patch), in one run, on the demo sr_x2 data:
  bare      a single-process torch loop in this process: no Ray, no DeepSpeed; AdamW fused as the
            engine's (`engine.make_optimizer`), the same model, batch, patch and batches
            (`TrainReader.get_batch(step)`, rank 0 of 1, same seed), the same torch thread count. Timed in
            windows of `log_every` steps (data + forward + L1 + backward + AdamW + zero_grad + loss.item()),
            after a warm-up.
            Measured before the first Ray pass and after each one (--repeats), so load drift hits both.
  ray       `hiir.platform.train.fit.fit_run` (its embedded Ray, as `hiir train` starts it) with
            scaling.num_workers=1, cpus_per_worker = --threads, engine deepspeed ZeRO-2: the real
            `train_loop_per_worker`. Steady-state step
            time is read back from the MLflow run: the worker's own `step_time_s` per window
            (it excludes the MLflow logging call) and the wall time between two logged windows
            from the metric timestamps (it includes everything the loop does). The first
            `--skip-windows` windows (start-up, first steps) are dropped.
  profile   (unless --no-profile) a child process with RANK=0 WORLD_SIZE=1 and
            deepspeed.init_distributed("gloo"), no Ray: the same engine, EMA and NaN check as the
            worker, step by step interleaved with a bare model, each part timed, to show where
            the per-step time of the engine goes.

The ratio printed is bare step time / Ray step time (= Ray steps/s / bare steps/s; target >= 0.9)
and the worker's data-wait fraction (target < 5%). Medians over windows, because the 2 CPU cores
of the dev machine are shared and single windows can be several times slower.

    .venv/bin/python bench/train_overhead.py                      # both sizes, 1 thread, about 4 minutes
    .venv/bin/python bench/train_overhead.py --threads 2          # the worker holds both cores of this machine
    .venv/bin/python bench/train_overhead.py --sizes small_x2:8:48 --no-profile
    .venv/bin/python bench/train_overhead.py --json bench/out/train_overhead.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from part_times import PartTimes, one_rank_env

from hiir.platform.config import ScalingConfig
from hiir.platform.train.runtime import MALLOC_ENV

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
warnings.filterwarnings("ignore", category=FutureWarning)

DEFAULT_SIZES = "tiny_x2:8:32,small_x2:8:48"
LR, BETAS = 2e-4, (0.9, 0.99)  # the config defaults, for both loops


# ---------------------------------------------------------------- bare loop


def bare_windows(data_dir: Path, preset: str, batch: int, patch: int, threads: int, *, warmup: int,
                 windows: int, every: int, seed: int = 0) -> dict:
    """Wall time per step of each window of `every` steps after `warmup` steps, plain torch."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from hiir.data_prep import TrainReader
    from hiir.models import build

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = build(preset)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, fused=True)  # as the engine's
    reader = TrainReader(data_dir, rank=0, world_size=1, batch_size=batch, lq_patch=patch, seed=seed)

    def to_tensor(a):  # the worker's `_to_tensor`
        return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float().div_(255)

    per_step, data_frac, step = [], [], 0
    for w in range(-1, windows):
        n = warmup if w < 0 else every
        t_win, t_data = time.perf_counter(), 0.0
        for _ in range(n):
            t0 = time.perf_counter()
            lq, gt = (to_tensor(a) for a in reader.get_batch(step))
            t_data += time.perf_counter() - t0
            loss = F.l1_loss(model(lq), gt)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()
            step += 1
        if w >= 0:
            elapsed = time.perf_counter() - t_win
            per_step.append(elapsed / n)
            data_frac.append(t_data / elapsed)
    return {"step_s": per_step, "data_wait_frac": data_frac}


# ---------------------------------------------------------------- Ray Train worker


def ray_run(workdir: Path, data_dir: Path, preset: str, batch: int, patch: int, threads: int, *,
            steps: int, every: int, skip: int) -> dict:
    from hiir.platform.config import load_config
    from hiir.platform.tracking import Store, resolve_tracking_uri
    from hiir.platform.train.fit import fit_run

    cfg = load_config({
        "name": f"overhead-{preset}-b{batch}-p{patch}-{int(time.time())}",  # unique: a same-name run resumes
        "model": {"preset": preset},
        "data": {"train": str(data_dir), "val": [str(data_dir)], "batch_size": batch, "lq_patch": patch},
        "optim": {"lr": LR, "betas": list(BETAS), "warmup_steps": 0, "max_steps": steps},
        "engine": {"kind": "deepspeed", "zero_stage": 2},
        "scaling": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": float(threads)},
        "eval": {"every": steps, "max_images": 1},  # one validation + checkpoint, after the last log
        "checkpoint": {"keep": 1},
        "max_failures": 0,
        "tracking": {"experiment": "bench", "log_every": every, "sample_images": 0},
    })
    t0 = time.time()
    result = fit_run(cfg, workdir=workdir)
    fit_s = time.time() - t0
    store = Store(resolve_tracking_uri(workdir, None))

    def history(key):
        return sorted(store.history(result.run_id, key), key=lambda m: m.step)

    step_time, data_wait = history("step_time_s"), history("data_wait_frac")
    keep = [m for m in step_time if m.step > skip * every]
    ts = {m.step: m.timestamp / 1000 for m in step_time}
    wall = [(ts[m.step] - ts[m.step - every]) / every for m in keep if m.step - every in ts]
    return {
        "worker_step_s": [m.value for m in keep],
        "wall_step_s": wall,
        "data_wait_frac": [m.value for m in data_wait if m.step > skip * every],
        "startup_s": step_time[0].timestamp / 1000 - t0 if step_time else math.nan,
        "fit_s": fit_s,
        "steps": steps,
        "run_id": result.run_id,
    }


# ---------------------------------------------------------------- in-process profile (child)


def profile_child(data_dir: Path, preset: str, batch: int, patch: int, threads: int, steps: int) -> dict:
    """DeepSpeed ZeRO-2 engine + EMA + NaN check as the worker uses them, interleaved with a bare model."""
    import deepspeed
    import torch
    import torch.nn.functional as F

    from hiir.data_prep import TrainReader
    from hiir.models import build
    from hiir.platform.config import load_config
    from hiir.platform.train.ema import EMA
    from hiir.platform.train.engine import all_ranks_finite, make_engine
    from hiir.platform.train.worker import _to_tensor

    deepspeed.init_distributed("gloo")
    torch.set_num_threads(threads)
    cfg = load_config({"model": {"preset": preset}, "data": {"batch_size": batch, "lq_patch": patch},
                       "optim": {"lr": LR, "betas": list(BETAS)},
                       "engine": {"kind": "deepspeed", "zero_stage": 2},
                       "scaling": {"num_workers": 1, "cpus_per_worker": float(threads)}})
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    engine = make_engine(cfg, build(cfg.resolved_model), cpu, 0)
    ema = EMA(engine.module, cfg.optim.ema_decay, keep=True)
    torch.manual_seed(0)
    bare = build(cfg.resolved_model)
    opt = torch.optim.AdamW(bare.parameters(), lr=LR, betas=BETAS, fused=True)  # as the engine's
    reader = TrainReader(data_dir, rank=0, world_size=1, batch_size=batch, lq_patch=patch, seed=0)
    timed = PartTimes()

    for step in range(steps):
        lq, gt = (_to_tensor(a, cpu) for a in timed("data", lambda: reader.get_batch(step)))
        t0 = time.perf_counter()
        out = timed("ds.forward", lambda: engine.forward(lq).float())
        loss = timed("ds.loss", lambda: F.l1_loss(out, gt))
        timed("ds.nan_check", lambda: all_ranks_finite(loss))
        timed("ds.backward", lambda: engine.backward(loss))
        timed("ds.engine_step", lambda: engine.step())
        timed("ds.ema", lambda: ema.update(engine.module))
        timed("ds.loss_item", lambda: loss.item())
        timed.add("ds.total", time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = timed("bare.forward", lambda: bare(lq))
        loss = timed("bare.loss", lambda: F.l1_loss(out, gt))
        timed("bare.backward", lambda: loss.backward())
        timed("bare.optim_step", lambda: (opt.step(), opt.zero_grad(set_to_none=True)))
        timed("bare.loss_item", lambda: loss.item())
        timed.add("bare.total", time.perf_counter() - t0)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    warm = min(2, steps - 1)
    return {"median_ms": timed.medians_ms(warm),
            "param_tensors": len(list(bare.parameters())), "params": sum(p.numel() for p in bare.parameters())}


def run_profile(data_dir: Path, spec: str, threads: int, steps: int) -> dict | None:
    cmd = [sys.executable, __file__, "--_profile", spec, "--data", str(data_dir), "--threads", str(threads),
           "--profile-steps", str(steps)]
    proc = subprocess.run(cmd, env=one_rank_env(), capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROFILE_JSON ")]
    if proc.returncode != 0 or not lines:
        print(f"  profile of {spec} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1][len("PROFILE_JSON "):])


# ---------------------------------------------------------------- main


def _med(values):
    return statistics.median(values) if values else math.nan


def parse_size(spec: str) -> tuple[str, int, int]:
    preset, batch, patch = spec.split(":")
    return preset, int(batch), int(patch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated preset:batch:lq_patch")
    ap.add_argument("--threads", type=int, default=int(ScalingConfig().cpus_per_worker),
                    help="torch threads = scaling.cpus_per_worker (default: the config default, which leaves "
                         "the other cores to Ray's own processes); --threads $(nproc) is the all-cores case")
    ap.add_argument("--log-every", type=int, default=5, help="steps per timed window (tracking.log_every)")
    ap.add_argument("--skip-windows", type=int, default=2, help="windows dropped as warm-up")
    ap.add_argument("--target-s", type=float, default=12.0, help="measured seconds per size and loop (sets windows)")
    ap.add_argument("--min-windows", type=int, default=4)
    ap.add_argument("--max-windows", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2, help="Ray passes, each followed by a bare pass")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--profile-steps", type=int, default=12)
    ap.add_argument("--workdir", help="keep the workdir here (default: a temp dir, removed)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--_profile", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if any(k not in os.environ for k in MALLOC_ENV):
        # glibc reads these at start-up: re-run with the allocator settings the Ray workers get, so
        # that the bare loop and the worker differ only in what this benchmark measures.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**MALLOC_ENV, **os.environ})

    if args._profile:
        preset, batch, patch = parse_size(args._profile)
        out = profile_child(Path(args.data), preset, batch, patch, args.threads, args.profile_steps)
        print("PROFILE_JSON " + json.dumps(out))
        return

    import torch

    sizes = [parse_size(s) for s in args.sizes.split(",")]
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="hiir-overhead-")
    workdir = Path(args.workdir or tmp.name).resolve()
    every, skip = args.log_every, args.skip_windows
    t_start = time.time()
    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} threads, workdir {workdir}, "
          f"load average {load0[0]:.1f}")

    from hiir.data_prep import build_demo

    t = time.time()
    data_dir = build_demo(workdir / "data", progress=False)["sr_x2"]
    print(f"demo data: {time.time() - t:.1f} s")

    import ray

    res: dict[str, dict] = {}
    for preset, batch, patch in sizes:  # windows per size, from one probe window
        key = f"{preset}:{batch}:{patch}"
        probe = bare_windows(data_dir, preset, batch, patch, args.threads, warmup=every, windows=1, every=every)
        windows = max(args.min_windows, min(args.max_windows,
                                            math.ceil(args.target_s / (_med(probe["step_s"]) * every))))
        res[key] = {"windows": windows, "bare": [], "ray": []}

    def bare_pass(when: str) -> None:
        for preset, batch, patch in sizes:
            key = f"{preset}:{batch}:{patch}"
            b = bare_windows(data_dir, preset, batch, patch, args.threads, warmup=every,
                             windows=res[key]["windows"], every=every)
            res[key]["bare"].append(b)
            print(f"[{key}] bare ({when}): {1000 * _med(b['step_s']):.1f} ms/step over {len(b['step_s'])} windows")

    def ray_pass() -> None:  # Ray starts with the first run and is shut down after the last
        for preset, batch, patch in sizes:
            key = f"{preset}:{batch}:{patch}"
            steps = every * (skip + res[key]["windows"])
            r = ray_run(workdir, data_dir, preset, batch, patch, args.threads, steps=steps, every=every, skip=skip)
            res[key]["ray"].append(r)
            print(f"[{key}] ray worker: {1000 * _med(r['wall_step_s']):.1f} ms/step wall, "
                  f"{1000 * _med(r['worker_step_s']):.1f} ms/step self-timed, start-up {r['startup_s']:.1f} s, "
                  f"fit {r['fit_s']:.1f} s for {steps} steps")
        ray.shutdown()

    # bare, Ray, bare, Ray, ..., bare: load drift hits both loops alike
    bare_pass("before")
    for i in range(args.repeats):
        ray_pass()
        bare_pass(f"after Ray pass {i + 1}")

    if not args.no_profile:
        for preset, batch, patch in sizes:
            key = f"{preset}:{batch}:{patch}"
            res[key]["profile"] = run_profile(data_dir, key, args.threads, args.profile_steps)

    # ------------------------------------------------------------ report
    print(f"\n=== training overhead: 1 Ray Train worker (DeepSpeed ZeRO-2, fp32, {args.threads} CPUs) vs bare torch "
          f"loop; medians of {every}-step windows ===")
    print(f"{'size':24s} {'bare ms':>8s} {'ray ms (wall)':>14s} {'ray ms (self)':>14s} {'ratio wall':>10s} "
          f"{'ratio self':>10s} {'data wait':>9s}")
    summary = {}
    for key, r in res.items():
        bare = _med([t for b in r["bare"] for t in b["step_s"]])
        wall = _med([t for x in r["ray"] for t in x["wall_step_s"]])
        self_t = _med([t for x in r["ray"] for t in x["worker_step_s"]])
        wait = _med([f for x in r["ray"] for f in x["data_wait_frac"]])
        summary[key] = {"bare_ms": 1000 * bare, "ray_wall_ms": 1000 * wall, "ray_self_ms": 1000 * self_t,
                        "ratio_wall": bare / wall, "ratio_self": bare / self_t, "data_wait_frac": wait,
                        "bare_data_wait_frac": _med([f for b in r["bare"] for f in b["data_wait_frac"]])}
        s = summary[key]
        print(f"{key:24s} {s['bare_ms']:8.1f} {s['ray_wall_ms']:14.1f} {s['ray_self_ms']:14.1f} "
              f"{s['ratio_wall']:10.3f} {s['ratio_self']:10.3f} {100 * wait:8.2f}%")
    for key, s in summary.items():
        verdict = "met" if s["ratio_wall"] >= 0.9 else "missed"
        print(f"  {key}: Ray/bare steps/s = {s['ratio_wall']:.3f} (target >= 0.9: {verdict}); "
              f"data wait {100 * s['data_wait_frac']:.2f}% (target < 5%: "
              f"{'met' if s['data_wait_frac'] < 0.05 else 'missed'})")
    if not args.no_profile:
        print("\nwhere the time goes (in-process DeepSpeed ZeRO-2 over gloo, world 1, no Ray; "
              "median ms per step, steps interleaved with the bare model):")
        for key, r in res.items():
            p = r.get("profile")
            if not p:
                continue
            m = p["median_ms"]
            print(f"  {key} ({p['params'] / 1e6:.3f} M params in {p['param_tensors']} tensors): "
                  f"bare {m['bare.total']:.1f} ms, engine {m['ds.total']:.1f} ms "
                  f"(ratio {m['bare.total'] / m['ds.total']:.3f})")
            for part in ("forward", "backward"):
                print(f"    {part:12s} bare {m['bare.' + part]:8.2f}  engine {m['ds.' + part]:8.2f}")
            print(f"    {'optimizer':12s} bare {m['bare.optim_step']:8.2f}  engine.step {m['ds.engine_step']:8.2f} "
                  "(ZeRO-2 grad norm x2 groups + clip + AdamW + copy back)")
            print(f"    {'ema':12s} {'':13s} engine {m['ds.ema']:8.2f}")
            print(f"    {'nan check':12s} {'':13s} engine {m['ds.nan_check']:8.2f}")
            print(f"    {'data':12s} {m['data']:8.2f} (both)")
    load1 = os.getloadavg()
    print(f"\nwhole run {time.time() - t_start:.0f} s; load average {load0[0]:.1f} at start, {load1[0]:.1f} at end "
          "(the 2 cores are shared)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": summary, "raw": res, "threads": args.threads,
                                               "load_avg": [load0, load1]}, indent=1))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
