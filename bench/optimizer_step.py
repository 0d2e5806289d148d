"""AdamW's step, torch's default against fused (`engine.make_optimizer`), for each model size of a study.

On a CPU torch's AdamW defaults to its single-tensor path: a Python loop over the parameter tensors, a dozen
small ops each. Fused, one kernel updates every tensor. This times both on the same model and gradients,
interleaved step by step in one process (1 torch thread, as a trial's worker), and prints the saving beside
the bare loop's forward + backward, so the share of a step it is shows too.

    .venv/bin/python bench/optimizer_step.py                       # the demo's sizes (studies/smoke.yaml)
    .venv/bin/python bench/optimizer_step.py --preset b_x2_conv3   # Hi-IR-B at model_step.py's batch, 10 steps
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from part_times import PartTimes
from study_overhead import ROOT, study_sizes

from hiir.models import build
from hiir.platform.config import TrainConfig
from hiir.platform.study.spec import load_spec
from hiir.platform.train.engine import make_optimizer

WARMUP = 10


def variants(cfg: TrainConfig, model: torch.nn.Module) -> dict[str, torch.optim.Optimizer]:
    """torch's default AdamW (unfused) and the engine's, on the same parameter groups."""
    return {"default": make_optimizer(cfg, model, fused=False), "fused": make_optimizer(cfg, model)}


def measure(cfg: TrainConfig, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict:
    """Median ms of each optimizer's step and of one forward + backward, all interleaved."""
    opts = variants(cfg, model)
    timed = PartTimes()
    for _ in range(steps + WARMUP):
        timed("forward + backward", lambda: F.l1_loss(model(x), y).backward())
        for name, opt in opts.items():  # the same gradients for each: weights drift, which no timing minds
            timed(name, opt.step)
        model.zero_grad(set_to_none=True)
    return timed.medians_ms(WARMUP)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "studies" / "smoke.yaml"))
    ap.add_argument("--preset", help="one model preset instead of the spec's sizes (batch 2 of 64^2 LR)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=100, help="measured steps (at most 10 with --preset)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    spec = load_spec(args.spec)
    cases = {args.preset: spec.base_trial} if args.preset else study_sizes(spec)
    steps = min(args.steps, 10) if args.preset else args.steps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); median of {steps} interleaved steps")
    print(f"{'model':>12} {'tensors':>8} {'fwd+bwd':>9} {'default':>9} {'fused':>9} {'saved':>8} {'of a step':>10}")
    for key, cfg in cases.items():
        torch.manual_seed(0)
        model = build(args.preset or cfg.resolved_model)
        lq, batch = (64, 2) if args.preset else (cfg.data.lq_patch, cfg.data.batch_size)
        scale = model.config.scale
        x, y = torch.rand(batch, 3, lq, lq), torch.rand(batch, 3, lq * scale, lq * scale)
        ms = measure(cfg, model, x, y, steps)
        saved = ms["default"] - ms["fused"]
        print(f"{key:>12} {len(list(model.parameters())):8d} {ms['forward + backward']:8.2f}ms {ms['default']:8.2f}ms "
              f"{ms['fused']:8.2f}ms {saved:7.2f}ms {saved / (ms['forward + backward'] + ms['default']):9.1%}",
              flush=True)


if __name__ == "__main__":
    main()
