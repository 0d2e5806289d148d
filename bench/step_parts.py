"""Where the worker's own step costs more than the bare loop: its parts, interleaved with a bare step, in one
process with no Ray (what `bench/study_overhead.py` compares in a study, less Ray's presence on the cores).

For each size of the study (its trial configs, `--set` applied), a child process with the workers' glibc
settings and a one-rank gloo group (as DeepSpeed has in a trial) builds the trial's engine, EMA and train
reader on the demo data, and a bare model with AdamW on the same groups; then alternates one worker step
(per-step seed, the reader's batch, forward, loss, finite check, backward, `engine.step()` with the recipe's
clipping and LR schedule, EMA, `loss.item()`) and one bare step (forward, loss, backward, AdamW, zero_grad,
`loss.item()`) on the same batch. Medians per part, the first 20 steps dropped.

    .venv/bin/python bench/step_parts.py                         # studies/smoke.yaml, ~2 min on 2 cores
    .venv/bin/python bench/step_parts.py --set engine.zero_stage=2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from part_times import PartTimes, one_rank_env
from study_overhead import bare_model, study_sizes

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
WARMUP = 20


def child(cfg_path: str, data_dir: str, steps: int) -> None:
    import deepspeed
    import torch

    from hiir.data_prep.online import make_train_reader
    from hiir.models import build
    from hiir.platform.config import load_config
    from hiir.platform.train.ema import EMA
    from hiir.platform.train.engine import all_ranks_finite, make_engine
    from hiir.platform.train.worker import _losses, _seed_step, _to_tensor

    deepspeed.init_distributed("gloo")
    cfg = load_config({**json.loads(Path(cfg_path).read_text()), "name": "step-parts"})
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    cpu = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    engine = make_engine(cfg, build(cfg.resolved_model), cpu, 0)
    ema = EMA(engine.module, cfg.optim.ema_decay, keep=cfg.optim.ema_decay > 0)
    bare, opt = bare_model(cfg)
    reader = make_train_reader(data_dir, degrade=cfg.data.degrade, mixture=None, rank=0, world_size=1,
                               batch_size=cfg.data.batch_size, lq_patch=cfg.data.lq_patch, seed=cfg.seed,
                               augment=cfg.data.augment)
    loss_fn = _losses[cfg.optim.loss]
    timed = PartTimes()

    for step in range(steps):
        t0 = time.perf_counter()
        timed("worker: per-step seed", lambda: _seed_step(cfg.seed, 0, step, cpu))
        lq, gt = timed("worker: reader", lambda: [_to_tensor(a, cpu) for a in reader.get_batch(step)])
        out = timed("worker: forward", lambda: engine.forward(lq).float())
        loss = timed("worker: loss", lambda: loss_fn(out, gt))
        timed("worker: finite check", lambda: all_ranks_finite(loss))
        timed("worker: backward", lambda: engine.backward(loss))
        timed("worker: step (clip, optimizer, schedule)", lambda: engine.step())
        timed("worker: EMA", lambda: ema.update(engine.module))
        timed("worker: loss.item()", lambda: loss.item())
        timed.add("worker: total", time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = timed("bare: forward", lambda: bare(lq))
        loss = timed("bare: loss", lambda: loss_fn(out, gt))
        timed("bare: backward", lambda: loss.backward())
        timed("bare: step (optimizer, zero_grad)", lambda: (opt.step(), opt.zero_grad(set_to_none=True)))
        timed("bare: loss.item()", lambda: loss.item())
        timed.add("bare: total", time.perf_counter() - t0)
    print("PARTS_JSON " + json.dumps(timed.medians_ms(WARMUP)), flush=True)


def run_child(cfg: dict, data_dir: Path, steps: int, scratch: Path) -> dict:
    path = scratch / "trial.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, __file__, "--_child", str(path), "--data", str(data_dir),
                           "--steps", str(steps)], env=one_rank_env(), capture_output=True, text=True)
    found = [line for line in proc.stdout.splitlines() if line.startswith("PARTS_JSON ")]
    if proc.returncode or not found:
        raise RuntimeError(f"step-parts child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(found[-1][len("PARTS_JSON "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "studies" / "smoke.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=200, help="steps of each loop per size")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        child(args._child, args.data, args.steps)
        return

    from hiir.data_prep import build_demo
    from hiir.platform.study.spec import load_spec

    spec = load_spec(args.spec, overrides=tuple(args.sets))
    sizes = {key: cfg.to_dict() for key, cfg in study_sizes(spec).items()}
    results = {}
    with tempfile.TemporaryDirectory(prefix="hiir-step-parts-") as tmp:
        data_dir = build_demo(Path(tmp) / "data", progress=False)["sr_x2"]
        for key, cfg in sizes.items():
            parts = run_child(cfg, data_dir, args.steps, Path(tmp))
            results[key] = parts
            ratio = parts["worker: total"] / parts["bare: total"]
            print(f"\n{key}: worker {parts['worker: total']:.2f} ms, bare {parts['bare: total']:.2f} ms, "
                  f"**{ratio:.3f}x** (median of {args.steps - WARMUP} interleaved steps)", flush=True)
            for name, ms in parts.items():
                if not name.endswith("total"):
                    print(f"  {name:42s} {ms:7.3f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
