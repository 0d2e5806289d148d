"""Training step (forward + backward) of Hi-IR-B against the SwinIR-style arrangement.

Same run, same input, steps interleaved (A B A B ...) so that load from other jobs hits both:
  hiir_b     the `b_x2_conv3` preset (v3 unified L1+L2, permute)
  swin_like  the same network with layout=v1, mixer_l2=shift (alternating window / shifted
             window layers, SwinIR's arrangement) at equal width and depth
Also: the achieved GFLOP/s of the Hi-IR-B step (FLOPs from torch.utils.flop_counter) against
this machine's fp32 matmul GFLOP/s, measured in the same run.

    .venv/bin/python bench/model_step.py                 # about 1-2 minutes on 2 cores
    .venv/bin/python bench/model_step.py --lr-size 48 --steps 3
    .venv/bin/python bench/model_step.py --dim 192         # heads 16 (q/k) and 32 (v) wide instead of 15/30
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from hiir.models import build
from hiir.models.summary import model_flops


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GEMM throughput of an n x n x n product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="b_x2_conv3")
    ap.add_argument("--lr-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="measured steps per model, after one warm-up")
    ap.add_argument("--dim", type=int, help="override the width of both networks (192: 16/32-wide heads)")
    args = ap.parse_args()
    torch.manual_seed(0)
    width = {"dim": args.dim} if args.dim else {}
    models = {"hiir_b": build(args.preset, **width),
              "swin_like": build(args.preset, layout="v1", mixer_l2="shift", **width)}
    cfg = models["hiir_b"].config
    x = torch.rand(args.batch, cfg.in_channels, args.lr_size, args.lr_size)
    y = torch.rand(args.batch, cfg.in_channels, args.lr_size * cfg.scale, args.lr_size * cfg.scale)
    print(f"{args.preset}: C={cfg.dim}, {cfg.stages}x{cfg.layers_per_stage} layers, batch {args.batch} of "
          f"{args.lr_size}^2 LR, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs")
    for name, m in models.items():
        print(f"  {name:9s} {m.num_params() / 1e6:6.2f}M params")

    def step(m):
        loss = (m(x) - y).abs().mean()
        loss.backward()
        m.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(args.steps + 1):
        for name, m in models.items():
            t = _timed(lambda: step(m))
            if i:  # the first round is a warm-up
                times[name].append(t)
    gemm = matmul_gflops()
    with torch.device("meta"):
        meta = {k: build(m.config) for k, m in models.items()}
    flops = {k: model_flops(m, tuple(x.shape), backward=True) for k, m in meta.items()}

    med = {k: statistics.median(v) for k, v in times.items()}
    print("\nstep time (median of %d, forward + backward)" % args.steps)
    for name in models:
        achieved = flops[name] / med[name] / 1e9
        print(f"  {name:9s} {med[name]:7.3f} s  {flops[name] / 1e9:7.1f} GFLOP/step  {achieved:6.1f} GFLOP/s "
              f"= {100 * achieved / gemm:4.1f}% of matmul  (all: {', '.join(f'{t:.3f}' for t in times[name])})")
    ratio = med["hiir_b"] / med["swin_like"]
    print(f"\nmatmul fp32 2048^3: {gemm:.1f} GFLOP/s")
    print(f"Hi-IR-B / SwinIR-style step time: {ratio:.2f}x (target <= 1.10x): {'met' if ratio <= 1.1 else 'missed'}")
    flop_ratio = flops["hiir_b"] / flops["swin_like"]
    print(f"  of which arithmetic: the v3 layer does {flop_ratio:.3f}x the FLOPs; time per FLOP: "
          f"{ratio / flop_ratio:.3f}x (1.0 = the permutation wastes no more than the shift)")
    eff = flops["hiir_b"] / med["hiir_b"] / 1e9 / gemm
    print(f"Hi-IR-B achieved {100 * eff:.1f}% of matmul GFLOP/s (target >= 50%): {'met' if eff >= 0.5 else 'missed'}")


if __name__ == "__main__":
    main()
