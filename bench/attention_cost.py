"""Cost of one layer (attention + FFN, forward + backward) from 64^2 to 512^2 tokens.

Three layers at the same width, side by side:
  hiir      the Hi-IR v3 layer: L1 in p x p windows, then L2 dispersed inside P x P patches
  window_P  window attention with a P x P window (the same receptive field as L2)
  global    global attention over all tokens (SDPA, no position bias: a bias table of
            L^2 entries would not fit), stopped at a time/memory budget

Each (layer, size) runs in its own subprocess, so its peak RSS is its own; peak memory is
the RSS high-water mark after the first (warm-up) step, above the baseline after building
the layer. glibc is told to keep freed memory (MALLOC_ENV) so big steps do not page-fault.
Prints time and memory ratios against the 64^2 point (linear growth: 512^2/64^2 = 64).

    .venv/bin/python bench/attention_cost.py            # about 2 minutes on 2 cores
    .venv/bin/python bench/attention_cost.py --dim 180 --patch 64
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from hiir.platform.train.runtime import MALLOC_ENV as WORKER_MALLOC_ENV

SIZES = (64, 128, 256, 512)
# glibc hands every buffer over 32 MB back to the OS on free and page-faults it in again on the
# next step; at 512^2 tokens that doubled the step time (3.06 s -> 1.27 s). Keep freed memory, as the
# training workers do, and grow the heap in 1 GB steps.
MALLOC_ENV = {**WORKER_MALLOC_ENV, "MALLOC_TOP_PAD_": str(1 << 30)}


def _layer(kind: str, side: int, dim: int, heads: int, window: int, patch: int):
    import torch
    from torch import nn

    from hiir.models.flows import ConvFFN, FlowAttention, Window
    from hiir.models.layer import LayerSpec, SequentialLayer, UnifiedLayer

    spec = LayerSpec(dim=dim, heads=heads, window=window, patch=patch, patch2=2 * patch)
    if kind == "hiir":
        return UnifiedLayer(spec, ("l1", "l2"))

    class GlobalAttention(nn.Module):  # all tokens attend to all: plain SDPA, no bias
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

        def forward(self, x):
            B, H, W, C = x.shape
            q, k, v = self.qkv(x).reshape(B, H * W, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return self.proj(out.transpose(1, 2).reshape(B, H, W, C))

    layer = SequentialLayer(spec, ("l1",))  # attention + FFN, own norms: swap the attention
    layer.l1 = FlowAttention(dim, heads, Window(patch)) if kind == "window_P" else GlobalAttention()
    assert isinstance(layer.ffn, ConvFFN)
    return layer


def run_one(kind: str, side: int, dim: int, heads: int, window: int, patch: int, repeats: int) -> dict:
    """Time and peak RSS of forward + backward of one layer on (1, side, side, dim) tokens."""
    import torch

    torch.manual_seed(0)
    layer = _layer(kind, side, dim, heads, window, patch)
    x = torch.randn(1, side, side, dim, requires_grad=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, peak = [], 0
    for i in range(repeats + 1 + 3):  # the first is a warm-up; small sizes get up to 3 more
        if i > repeats and sum(times) > 1.0:
            break
        t = time.perf_counter()
        layer(x).square().mean().backward()
        times.append(time.perf_counter() - t)
        layer.zero_grad(set_to_none=True)
        x.grad = None
        peak = peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base  # after the first step
    return {"kind": kind, "side": side, "tokens": side * side, "time_s": min(times[1:]), "peak_mb": peak / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=8.0,
                    help="skip a size whose predicted forward+backward time exceeds this")
    ap.add_argument("--budget-mb", type=float, default=6000.0,
                    help="skip a size whose predicted peak memory exceeds this")
    ap.add_argument("--one", nargs=2, metavar=("KIND", "SIDE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    knobs = dict(dim=args.dim, heads=args.heads, window=args.window, patch=args.patch)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), repeats=args.repeats, **knobs)))
        return

    print(f"one layer, forward+backward, batch 1, C={args.dim}, heads={args.heads}, "
          f"p={args.window}, P={args.patch}; best of {args.repeats} after a warm-up")
    results: dict[str, list[dict]] = {}
    for kind in ("hiir", "window_P", "global"):
        results[kind] = []
        for side in SIZES:
            last = results[kind][-1] if results[kind] else None
            grow = (side / last["side"]) ** 2 if last else 1.0  # pixels x4 per step
            t_next = last["time_s"] * grow ** (2 if kind == "global" else 1) if last else 0.0
            m_next = last["peak_mb"] * grow if last else 0.0
            if t_next > args.budget_s or m_next > args.budget_mb:
                print(f"  {kind}: stopped before {side}^2 tokens: predicted {t_next:.0f} s, {m_next:.0f} MB "
                      f"(budget {args.budget_s:.0f} s, {args.budget_mb:.0f} MB)", flush=True)
                break
            cmd = [sys.executable, __file__, "--one", kind, str(side), "--repeats", str(args.repeats),
                   *sum(([f"--{k}", str(v)] for k, v in knobs.items()), [])]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **MALLOC_ENV})
            if proc.returncode != 0:
                print(f"  {kind}: failed at {side}^2 tokens ({proc.stderr.strip().splitlines()[-1][:120]})")
                break
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results[kind].append(r)
            print(f"  {kind:8s} {side:4d}^2 tokens  {r['time_s']:8.3f} s  peak +{r['peak_mb']:8.1f} MB", flush=True)

    print("\nratios against 64^2 tokens (pixels x4 per row; linear = 4, 16, 64; quadratic = 16, 256, 4096)")
    print(f"{'layer':9s} " + " ".join(f"{f'{s}^2 time':>11s} {'mem':>6s}" for s in SIZES[1:]))
    for kind, rows in results.items():
        base = rows[0]
        cells = [f"{r['time_s'] / base['time_s']:11.1f} {r['peak_mb'] / max(base['peak_mb'], 1e-9):6.1f}"
                 for r in rows[1:]]
        print(f"{kind:9s} " + " ".join(cells))
    hiir = {r["side"]: r for r in results["hiir"]}
    print("\nside by side at each size (time relative to the Hi-IR layer)")
    for side in SIZES:
        cells = []
        for kind, rows in results.items():
            r = next((r for r in rows if r["side"] == side), None)
            rel = "-" if r is None or side not in hiir else f"{r['time_s'] / hiir[side]['time_s']:.2f}x"
            cells.append(f"{kind} {rel:>7s}")
        print(f"  {side:4d}^2  " + "  ".join(cells))
    if 512 in hiir:
        ratio = hiir[512]["time_s"] / hiir[64]["time_s"]
        verdict = "within" if 64 / 1.5 <= ratio <= 64 * 1.5 else "outside"
        print(f"\nHi-IR 512^2/64^2 time ratio {ratio:.1f} (linear = 64; target 42.7..96): {verdict} 1.5x of 64")


if __name__ == "__main__":
    main()
