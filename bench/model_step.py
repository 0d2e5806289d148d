"""Training step of Hi-IR-B against SwinIR-classical and against hiir's own SwinIR-style variant.

Same process, same input, AdamW steps of the networks alternated (A B C A B C ...) so that load
from other jobs hits all of them; medians over the rounds after one warm-up round:
  hiir_b     the `b_x2_conv3` preset (v3 unified L1+L2, permute, ConvFFN ratio 3, position-bias MLPs)
  swinir     SwinIR-classical as published (bench/swinir.py): C 180, 6 x 6 layers, window 8, MLP
             ratio 2, a position-bias table, shifted windows with SwinIR's mask, 11.75M at x2
  swin_like  the Hi-IR preset with layout=v1, mixer_l2=shift: SwinIR's arrangement built from
             Hi-IR's parts (so it shares their costs; the old comparison)
For each: step time, FLOPs (forward + backward, `hiir.models.summary.model_flops`), GFLOP/s and
its share of this machine's fp32 matmul GFLOP/s (measured between the rounds, best of them).
The script re-runs itself with the training workers' glibc settings (`MALLOC_ENV`).

Targets: Hi-IR-B's GFLOP/s >= SwinIR's (1.0x); its step time <= 1.25x SwinIR's.

    .venv/bin/python bench/model_step.py                  # batch 2 of 64^2 LR, 5 rounds: ~3 min on 2 cores
    .venv/bin/python bench/model_step.py --steps 3 --batch 1
    .venv/bin/python bench/model_step.py --profile        # plus torch.profiler of one step each, batch 1
    .venv/bin/python bench/model_step.py --inference 1024 # only: whole-image inference, peak RSS (minutes)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from hiir.models import build
from hiir.models.summary import model_flops
from hiir.platform.train.runtime import MALLOC_ENV

sys.path.insert(0, str(Path(__file__).resolve().parent))
from swinir import SwinIR  # noqa: E402

SWINIR_PARAMS = 11.75e6  # the published classical x2 network


def matmul_gflops(n: int = 2048, repeats: int = 3) -> float:
    """Best fp32 GEMM throughput of an n x n x n product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _networks(preset: str, drop_path: float) -> dict[str, torch.nn.Module]:
    hiir = build(preset)
    return {"hiir_b": hiir, "swinir": SwinIR(scale=hiir.config.scale, drop_path=drop_path),
            "swin_like": build(preset, layout="v1", mixer_l2="shift")}


def _profile(models, x, y) -> None:
    from torch.profiler import profile

    for name, m in models.items():
        step = lambda: (m(x[:1]) - y[:1]).abs().mean().backward()  # noqa: E731
        step()
        with profile() as prof:
            step()
        m.zero_grad(set_to_none=True)
        print(f"\nprofile {name} (one forward + backward, batch 1, self CPU time)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


def inference_memory(preset: str, side: int) -> None:
    """Peak RSS of one whole-image forward (eval, no grad) of `preset` on a side x side LR input."""
    import resource

    torch.manual_seed(0)
    model = build(preset).eval()
    x = torch.rand(1, model.config.in_channels, side, side)
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # noqa: E731  (KiB -> GiB)
    base = rss()
    t = time.perf_counter()
    with torch.no_grad():
        out = model(x)
    print(f"{preset}: whole-image inference of 1x{x.shape[1]}x{side}x{side} -> {tuple(out.shape)} in "
          f"{time.perf_counter() - t:.0f} s; peak RSS {rss():.2f} GiB ({base:.2f} GiB after building the model), "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="b_x2_conv3")
    ap.add_argument("--lr-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="measured rounds, after one warm-up round")
    ap.add_argument("--swinir-drop-path", type=float, default=0.1, help="SwinIR's published training default")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 is steadier on shared cores")
    ap.add_argument("--profile", action="store_true", help="also profile one step of each network")
    ap.add_argument("--inference", type=int, metavar="SIDE", help="only measure whole-image inference memory")
    args = ap.parse_args()
    if args.inference:  # glibc's defaults, which return big blocks on free: RSS follows live memory
        return inference_memory(args.preset, args.inference)
    if any(k not in os.environ for k in MALLOC_ENV):  # glibc reads them at start-up
        os.execve(sys.executable, [sys.executable, *sys.argv], {**MALLOC_ENV, **os.environ})

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = _networks(args.preset, args.swinir_drop_path)
    cfg = models["hiir_b"].config
    n_swinir = models["swinir"].num_params()
    assert abs(n_swinir / SWINIR_PARAMS - 1) < 0.001, f"SwinIR has {n_swinir / 1e6:.3f}M params, not 11.75M"
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for k, m in models.items()}  # as trained
    x = torch.rand(args.batch, cfg.in_channels, args.lr_size, args.lr_size)
    y = torch.rand(args.batch, cfg.in_channels, args.lr_size * cfg.scale, args.lr_size * cfg.scale)
    print(f"{args.preset}: batch {args.batch} of {args.lr_size}^2 LR, x{cfg.scale}, AdamW, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    for name, m in models.items():
        print(f"  {name:9s} {m.num_params() / 1e6:6.2f}M params")

    def step(name):
        loss = (models[name](x) - y).abs().mean()
        loss.backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {k: [] for k in models}
    cpu: dict[str, list[float]] = {k: [] for k in models}  # CPU seconds of this process per step
    gemm = []
    for i in range(args.steps + 1):
        for name in models:
            c = time.process_time()
            t = _timed(lambda: step(name))
            if i:  # the first round is a warm-up
                times[name].append(t)
                cpu[name].append(time.process_time() - c)
        gemm.append(matmul_gflops())
    load = os.getloadavg()
    gemm_best = max(gemm)
    with torch.device("meta"):
        meta = {"hiir_b": build(cfg), "swinir": SwinIR(scale=cfg.scale),
                "swin_like": build(models["swin_like"].config)}
    flops = {k: model_flops(m, tuple(x.shape), backward=True) for k, m in meta.items()}

    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    rate = {k: flops[k] / med[k] / 1e9 for k in models}
    print(f"\nstep time (median of {args.steps}, forward + backward + AdamW), load average after: "
          f"{load[0]:.2f} / {load[1]:.2f} (1 / 5 min)")
    for name in models:
        print(f"  {name:9s} {med[name]:7.3f} s (CPU {med_cpu[name]:7.3f} s)  {flops[name] / 1e9:7.1f} GFLOP/step  "
              f"{1e12 * med[name] / flops[name]:6.2f} ps/FLOP  {rate[name]:6.1f} GFLOP/s = "
              f"{100 * rate[name] / gemm_best:4.1f}% of matmul  (all: {', '.join(f'{t:.3f}' for t in times[name])})")
    print(f"matmul fp32 2048^3: {gemm_best:.1f} GFLOP/s (best of {len(gemm)} between rounds; "
          f"worst {min(gemm):.1f})")
    for other in ("swinir", "swin_like"):
        t, f = med["hiir_b"] / med[other], flops["hiir_b"] / flops[other]
        c = med_cpu["hiir_b"] / med_cpu[other]
        print(f"\nHi-IR-B / {other}: time {t:.3f}x, FLOPs {f:.3f}x, time per FLOP {t / f:.3f}x, "
              f"GFLOP/s {f / t:.3f}x  (CPU time of the process: {c:.3f}x, per FLOP {c / f:.3f}x)")
    t, f = med["hiir_b"] / med["swinir"], flops["hiir_b"] / flops["swinir"]
    print(f"target: Hi-IR-B GFLOP/s >= 1.0x SwinIR's: {f / t:.3f}x, {'met' if f / t >= 1.0 else 'missed'}")
    print(f"target: Hi-IR-B step time <= 1.25x SwinIR's: {t:.3f}x, {'met' if t <= 1.25 else 'missed'}")
    if args.profile:
        _profile(models, x, y)


if __name__ == "__main__":
    main()
