"""Study overhead: a study's per-trial timeline and its efficiency against bare loops, in one run.

One command, on a fresh workdir (a temp dir, removed unless --workdir):
  bare (before)  for each model size of the study, `--concurrency` processes at once (the trials a study
                 runs at a time), each a bare torch loop: the trial's model, the engine's fused AdamW and groups,
                 LR and betas, its batch and LQ patch, its torch threads, the workers' glibc settings
                 (`runtime.MALLOC_ENV`), on batches already in memory: forward, loss, backward, step,
                 zero_grad, loss.item(). No Ray, DeepSpeed, EMA, clipping, reader or logging.
  study          `hiir study run SPEC --workdir W` as `make demo` runs it, timed from launch to exit.
  bare (after)   the same bare pass again, so load drift hits both.
Then everything is read back from what the platform records: each trial's MLflow run (start and end,
its `time/*` metrics, which `train.fit.fit_run` logs from its own and rank 0's stamps, and the
timestamps of the logged loss), the study run (its start, the baseline's metric), the manifest of the
demo data and the report's mtime.

Printed, and written with --json:
  - per size: bare ms/step at the concurrency, in-study ms/step (median of the logged windows that hold
    no validation; wall time between two loss logs / log_every, and the worker's self-timed step_time_s),
    and their ratio (target <= 1.15); beside it the ratio over the steady windows only, those that overlap
    no other trial's start-up or wind-down (what the next trial's start costs the steps beside it);
  - per trial: non-step time (trial wall - time/steps_s; target <= 10 s) and its components;
  - efficiency over the trial phase = bare time of the study's steps / ((last trial end - first trial
    start) x cores) (target >= 0.75), split into its three factors (the steps' speed, their share of the
    trials' wall time, how full the cores were), and the time outside the trials, from launch to the written report
    (target <= 60 s), split into data build, Ray and study start, baseline, Tune start, report, exit;
  - the CPU model (lscpu), the fp32 matmul GFLOP/s of one thread and the load average.

    .venv/bin/python bench/study_overhead.py                 # studies/smoke.yaml as it is (~15 min on 2 cores)
    .venv/bin/python bench/study_overhead.py --quick         # 300 steps a trial: the overheads, in ~5 minutes
    .venv/bin/python bench/study_overhead.py --set engine.zero_stage=2 --json bench/out/z2.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))

# the worker's phases in order, as fit_run logs them (time/<phase>_s); steps_s is what they are not
PHASES = ("trial_setup", "prestart", "ray_start", "worker_setup", "engine_init", "data_open", "tracking_init",
          "validation", "checkpoint", "teardown", "export")


def _med(values) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------- the study's sizes


def study_sizes(spec) -> dict:
    """The first trial config of each model size (by `model.params`, else `model.preset`), in the study's order:
    what this script, `step_floor.py`, `step_parts.py` and `optimizer_step.py` measure per size."""
    sizes = {}
    for point in spec.finite_points():
        cfg = spec.trial_config(point)
        sizes.setdefault(str(cfg.model.get("params") or cfg.model.get("preset")), cfg)
    return sizes


def trials_at_once(base, cores: int) -> int:
    """How many trials of `base`'s worker shape a study runs at once on `cores` CPUs."""
    return max(1, int(cores // (base.scaling.num_workers * base.scaling.cpus_per_worker)))


# ---------------------------------------------------------------- machine


def machine() -> dict:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in
                  subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if line.startswith("Model name")), "unknown")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    torch.set_num_threads(threads)
    return {"cpu_model": model, "cores": os.cpu_count(), "matmul_gflops_1thread": 2 * n**3 / best / 1e9,
            "load_avg": list(os.getloadavg())}


# ---------------------------------------------------------------- bare loop (child process)


def bare_model(cfg):
    """A trial config's model, seeded as the trial seeds it, and the engine's optimizer (`make_optimizer`): the
    bare loop's, and `step_parts.py`'s."""
    import torch

    from hiir.models import build
    from hiir.platform.train.engine import make_optimizer

    torch.manual_seed(cfg.seed)
    model = build(cfg.resolved_model)
    return model, make_optimizer(cfg, model)


def bare_loop(cfg_dict: dict):
    """The bare loop of one trial config: its model, the engine's optimizer, its loss, batch, LQ patch and
    torch threads, on 4 batches already in memory. Returns `steps(n, start)`, which runs n steps."""
    import torch

    from hiir.platform.config import load_config
    from hiir.platform.train.worker import _losses

    cfg = load_config(cfg_dict)
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    model, opt = bare_model(cfg)
    mc = cfg.resolved_model
    loss_fn = _losses[cfg.optim.loss]
    b, p = cfg.data.batch_size, cfg.data.lq_patch
    batches = [(torch.rand(b, mc.in_channels, p, p), torch.rand(b, mc.in_channels, p * mc.scale, p * mc.scale))
               for _ in range(4)]

    def steps(n: int, start: int) -> None:
        for i in range(start, start + n):
            lq, gt = batches[i % len(batches)]
            loss = loss_fn(model(lq), gt)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()

    return steps


def timed_windows(steps, seconds: float, every: int, start: int) -> list[float]:
    """Seconds per step of consecutive windows of `every` steps, for `seconds` (at least 3 windows)."""
    windows, step, t_end = [], start, time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(windows) < 3:
        t = time.perf_counter()
        steps(every, step)
        windows.append((time.perf_counter() - t) / every)
        step += every
    return windows


def bare_child(cfg_path: str, seconds: float, every: int, warmup: int) -> None:
    """`bare_loop` in a child process: prints READY after the warm-up, waits for a line on stdin, then
    times windows of `every` steps for `seconds` and prints them as JSON."""
    steps = bare_loop(json.loads(Path(cfg_path).read_text()))
    steps(warmup, 0)
    print("READY", flush=True)
    sys.stdin.readline()
    print("BARE_JSON " + json.dumps({"step_s": timed_windows(steps, seconds, every, warmup)}), flush=True)


def bare_pass(sizes: dict[str, dict], concurrency: int, seconds: float, every: int, workdir: Path) -> dict:
    """For each size, `concurrency` bare loops at once, started together after their warm-ups."""
    from hiir.platform.train.runtime import MALLOC_ENV

    out = {}
    env = {**os.environ, **MALLOC_ENV}
    for key, cfg in sizes.items():
        path = workdir / f"bare-{key}.json"
        path.write_text(json.dumps(cfg))
        procs = [subprocess.Popen([sys.executable, __file__, "--_bare", str(path), "--bare-s", str(seconds),
                                   "--log-every", str(every)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=env) for _ in range(concurrency)]
        for proc in procs:
            while (line := proc.stdout.readline()) and not line.startswith("READY"):
                pass
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        windows = []
        for proc in procs:
            found = [line for line in proc.stdout.read().splitlines() if line.startswith("BARE_JSON ")]
            proc.wait()
            if proc.returncode or not found:
                raise RuntimeError(f"bare loop of {key} failed (exit {proc.returncode})")
            windows += json.loads(found[-1][len("BARE_JSON "):])["step_s"]
        out[key] = windows
        print(f"  bare {key} x{concurrency}: {1000 * _med(windows):.1f} ms/step ({len(windows)} windows)", flush=True)
    return out


# ---------------------------------------------------------------- the study's records


def trial_records(uri: str, every_default: int) -> tuple[dict, list[dict]]:
    """The study run and, per trial, its size, span, `time/*` phases and logged step windows."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    study = client.search_runs(exps, filter_string="tags.`hiir.kind` = 'study'",
                               order_by=["attributes.start_time DESC"], max_results=1)[0]
    baseline = [client.get_metric_history(study.info.run_id, k) for k in study.data.metrics
                if k.startswith("baseline/")]
    children = client.search_runs([study.info.experiment_id], max_results=1000,
                                  filter_string=f"tags.`mlflow.parentRunId` = '{study.info.run_id}'")
    trials = []
    for run in children:
        m, p = run.data.metrics, run.data.params
        every = int(p.get("tracking.log_every", every_default))
        eval_every = int(p.get("eval.every", 10**9))
        hist = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda x: x.step)
        hist = [h for h in hist if h.step % every == 0]  # the log points; eval reports share the key
        ts = {h.step: h.timestamp / 1000 for h in hist}
        spans = [(ts[s - every], ts[s]) for s in ts
                 if s - every in ts and (s - every) % eval_every != 0 and s - every > 0]
        wall = [(b - a) / every for a, b in spans]
        self_t = [h.value for h in client.get_metric_history(run.info.run_id, "step_time_s") if h.step > every]
        phases = {k: m.get(f"time/{k}_s", float("nan")) for k in (*PHASES, "steps")}
        batch = [client.get_metric_history(run.info.run_id, "time/export_s")]
        logged_at = batch[0][-1].timestamp / 1000 if batch[0] else float("nan")
        fit_span = sum(v for k, v in phases.items() if k != "trial_setup" and v == v)
        start = logged_at - fit_span - (phases["trial_setup"] if phases["trial_setup"] == phases["trial_setup"] else 0)
        end = (run.info.end_time or 0) / 1000
        phases["mlflow_finish"] = end - logged_at
        trials.append({"run": run.info.run_name, "size": p.get("model.params") or p.get("model.preset", "?"),
                       "num_params": float(p.get("model.num_params", "nan")), "steps": int(m.get("step", 0)),
                       "status": run.info.status, "start": start, "end": end, "phases": phases,
                       "wall_step_s": wall, "self_step_s": self_t, "windows": spans,
                       "stepping": [min(ts.values()) - min(ts) * _med(wall), max(ts.values())] if ts else []})
    study_rec = {"start": study.info.start_time / 1000,
                 "baseline_logged": min((h.timestamp / 1000 for hs in baseline for h in hs), default=float("nan"))}
    return study_rec, sorted(trials, key=lambda t: t["start"])


def steady_windows(trial: dict, trials: list[dict], every: int) -> list[float]:
    """The trial's step windows (seconds a step) that overlap no other trial's start-up (its start to its
    first step) or wind-down (its last step to its end): its steps beside other trials' steps only."""
    busy = [span for t in trials if t is not trial and t["stepping"]
            for span in ((t["start"], t["stepping"][0]), (t["stepping"][1], t["end"]))]
    return [(b - a) / every for a, b in trial["windows"] if all(b <= lo or a >= hi for lo, hi in busy)]


def efficiency_factors(trials: list[dict], bare_core_s: float, span: float, cores: int) -> dict[str, float]:
    """Efficiency over the trial phase as the product of three factors: the steps' speed (bare time of the
    steps / their time in the study), the steps' share of the trials' wall time (the rest is non-step time),
    and how full the cores were (the trials' wall time / (trial phase x cores): a core with no trial is idle)."""
    steps = sum(t["phases"]["steps"] for t in trials)
    walls = sum(t["end"] - t["start"] for t in trials)
    return {"steps' speed": bare_core_s / steps, "steps' share of trial wall": steps / walls,
            "cores occupied": walls / (span * cores)}


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "studies" / "smoke.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to `hiir study run --set` (and used for the bare loops' configs)")
    ap.add_argument("--quick", action="store_true", help="300 steps a trial (--set optim.max_steps=300)")
    ap.add_argument("--concurrency", type=int, help="bare loops at once (default: the trials a study runs at once)")
    ap.add_argument("--bare-s", type=float, default=20.0, help="timed seconds per bare loop and pass")
    ap.add_argument("--log-every", type=int, default=50, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help="keep the study's workdir here (must not exist: the run starts fresh)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--_bare", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._bare:
        bare_child(args._bare, args.bare_s, args.log_every, warmup=max(20, args.log_every))
        return

    from hiir.platform.study.spec import load_spec

    sets = [*(["optim.max_steps=300"] if args.quick else []), *args.sets]
    spec = load_spec(args.spec, overrides=tuple(sets))
    base = spec.base_trial
    every = base.tracking.log_every
    cores = os.cpu_count() or 1
    concurrency = args.concurrency or trials_at_once(base, cores)
    sizes = {key: cfg.to_dict() for key, cfg in study_sizes(spec).items()}

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="hiir-study-overhead-")
    workdir = Path(args.workdir or tmp.name).resolve()
    if args.workdir and workdir.exists():
        sys.exit(f"{workdir} exists: the study must start on a fresh workdir")
    scratch = Path(tempfile.mkdtemp(prefix="hiir-bare-"))
    mach = machine()
    print(f"{mach['cpu_model']}, {cores} cores, matmul fp32 1 thread {mach['matmul_gflops_1thread']:.1f} GFLOP/s, "
          f"load average {mach['load_avg'][0]:.1f}; {spec.trial_count} trials, {concurrency} at a time", flush=True)

    print("bare loops (before):", flush=True)
    bare_before = bare_pass(sizes, concurrency, args.bare_s, every, scratch)
    cmd = [str(Path(sys.executable).with_name("hiir")), "study", "run", args.spec, "--workdir", str(workdir),
           *[f"--set={s}" for s in sets]]
    print("study: " + " ".join(cmd), flush=True)
    load_study = os.getloadavg()
    t0 = time.time()
    log_path = scratch / "study.log"
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    t1 = time.time()
    print(f"  {t1 - t0:.0f} s, exit {rc} (log {log_path})", flush=True)
    if rc:
        print(log_path.read_text()[-3000:])
        sys.exit(rc)
    print("bare loops (after):", flush=True)
    bare_after = bare_pass(sizes, concurrency, args.bare_s, every, scratch)
    mach_after = machine()

    from hiir.platform.tracking import default_tracking_uri

    study, trials = trial_records(default_tracking_uri(workdir), every)
    manifests = sorted((workdir / "data").rglob("manifest.json"))
    data_built = max(p.stat().st_mtime for p in manifests) if manifests else float("nan")
    reports = sorted((workdir / "studies").rglob("report.md"))
    reported = max(p.stat().st_mtime for p in reports) if reports else float("nan")

    # ------------------------------------------------------------ per size
    print(f"\n=== {Path(args.spec).name}{' --quick' if args.quick else ''}: {len(trials)} trials; "
          f"{mach['cpu_model']}, {cores} cores, matmul {mach['matmul_gflops_1thread']:.1f} / "
          f"{mach_after['matmul_gflops_1thread']:.1f} GFLOP/s (1 thread, before / after); load average "
          f"{mach['load_avg'][0]:.1f} / {load_study[0]:.1f} / {os.getloadavg()[0]:.1f} (start / study / end) ===")
    print(f"{'size':>7s} {'params':>8s} {'bare x' + str(concurrency):>9s} {'(before, after)':>16s} "
          f"{'study wall':>10s} {'self':>7s} {'wall/bare':>9s} {'self/bare':>9s} {'steady/bare':>11s} "
          f"{'(windows)':>9s}")
    per_size, bare_core_s = {}, 0.0
    for key in sizes:
        mine = [t for t in trials if t["size"] == key]
        bare = _med(bare_before[key] + bare_after[key])
        wall = _med([w for t in mine for w in t["wall_step_s"]])
        self_t = _med([w for t in mine for w in t["self_step_s"]])
        steady = [w for t in mine for w in steady_windows(t, trials, every)]
        bare_core_s += sum(t["steps"] for t in mine) * bare
        per_size[key] = {"bare_ms": 1000 * bare, "bare_before_ms": 1000 * _med(bare_before[key]),
                         "bare_after_ms": 1000 * _med(bare_after[key]), "study_wall_ms": 1000 * wall,
                         "study_self_ms": 1000 * self_t, "ratio_wall": wall / bare, "ratio_self": self_t / bare,
                         "ratio_steady": _med(steady) / bare, "steady_windows": len(steady),
                         "windows": sum(len(t["windows"]) for t in mine)}
        s = per_size[key]
        params = mine[0]["num_params"] if mine else float("nan")
        print(f"{key:>7s} {params / 1e6:7.3f}M {s['bare_ms']:8.1f}ms "
              f"{s['bare_before_ms']:7.1f},{s['bare_after_ms']:7.1f} "
              f"{s['study_wall_ms']:8.1f}ms {s['study_self_ms']:6.1f} {s['ratio_wall']:9.3f} {s['ratio_self']:9.3f} "
              f"{s['ratio_steady']:11.3f} {s['steady_windows']:4d}/{s['windows']:<4d}")

    # ------------------------------------------------------------ per trial
    print("\nper trial, seconds (non-step = trial wall - time/steps_s):")
    cols = (*PHASES, "mlflow_finish")
    print(f"{'trial':>34s} {'wall':>6s} {'steps':>6s} {'non-step':>8s}  " + " ".join(f"{c[:9]:>9s}" for c in cols))
    for t in trials:
        t["wall"] = t["end"] - t["start"]
        t["non_step"] = t["wall"] - t["phases"]["steps"]
        print(f"{t['run'][-34:]:>34s} {t['wall']:6.1f} {t['phases']['steps']:6.1f} {t['non_step']:8.1f}  "
              + " ".join(f"{t['phases'][c]:9.2f}" for c in cols))
    med_phase = {c: _med([t["phases"][c] for t in trials]) for c in (*cols, "steps")}
    print(f"{'median':>34s} {_med([t['wall'] for t in trials]):6.1f} {med_phase['steps']:6.1f} "
          f"{_med([t['non_step'] for t in trials]):8.1f}  " + " ".join(f"{med_phase[c]:9.2f}" for c in cols))

    # ------------------------------------------------------------ the study
    first, last = min(t["start"] for t in trials), max(t["end"] for t in trials)
    span = last - first
    outside = {"launch to data built": data_built - t0, "data built to study run": study["start"] - data_built,
               "baseline": study["baseline_logged"] - study["start"],
               "baseline to first trial": first - study["baseline_logged"],
               "last trial to report": reported - last, "report to exit": t1 - reported}
    total_outside = (t1 - t0) - span
    efficiency = bare_core_s / (span * cores)
    print(f"\nstudy: launch to exit {t1 - t0:.0f} s; trial phase {span:.0f} s (first trial start to last trial end); "
          f"bare time of its steps {bare_core_s:.0f} core-s at x{concurrency}")
    factors = efficiency_factors(trials, bare_core_s, span, cores)
    print(f"efficiency over the trial phase: {efficiency:.3f} (target >= 0.75) = "
          + " x ".join(f"{v:.3f} ({k})" for k, v in factors.items()))
    print(f"time outside the trials: {total_outside:.0f} s (target <= 60 s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in outside.items()))
    worst = max((s["ratio_wall"] for s in per_size.values()), default=float("nan"))
    non_step = [t["non_step"] for t in trials]
    print(f"verdicts: step {worst:.2f}x bare at worst (<= 1.15), non-step {_med(non_step):.1f} s "
          f"median / {max(non_step):.1f} s max per trial (<= 10, or 15 with the floor), "
          f"efficiency {efficiency:.2f} (>= 0.75), outside {total_outside:.0f} s (<= 60)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "machine": mach, "machine_after": mach_after, "load_study": load_study, "command": cmd,
            "sets": sets, "per_size": per_size, "trials": trials, "study": study, "outside": outside,
            "outside_s": total_outside, "span_s": span, "wall_s": t1 - t0, "efficiency": efficiency,
            "efficiency_factors": factors,
            "bare": {"before": bare_before, "after": bare_after}}, indent=1))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
