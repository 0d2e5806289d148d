"""Preset summary: parameter counts next to the paper's, GFLOPs and receptive field.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (it counts a multiply-add as 2
FLOPs), on the meta device so that the 110M preset costs nothing to count.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .factory import build
from .families import count_params
from .presets import PRESETS

SR_INPUT = 64     # LR side for SR presets (and the columnar scale-1 ones)
UNET_INPUT = 256  # side for the U-shaped presets


def model_flops(model: nn.Module, input_shape: tuple[int, ...], backward: bool = False) -> int:
    """FLOPs of one forward (plus backward if asked) of `model` on a (B, C, h, w) input,
    counted by `FlopCounterMode`. Works for models on the meta device.

    torch 2.13's formula for `convolution_backward` ignores `groups`, so it counts the 3x3
    depthwise conv of L3 as a dense one (796 of 1155 GFLOP for a Hi-IR-B step). The backward
    of a convolution (grad input + grad weight) is counted here as twice its forward instead.
    """
    device = next(model.parameters()).device
    x = torch.rand(input_shape, device=device) if device.type != "meta" else torch.empty(input_shape, device=device)
    with FlopCounterMode(display=False) as counter:
        with torch.set_grad_enabled(backward):
            out = model(x)
            if backward:
                out.sum().backward()
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    wrong = counts.get("aten.convolution_backward", 0)
    return int(counter.get_total_flops() - wrong + (2 * counts.get("aten.convolution", 0) if wrong else 0))


def _compact(values: tuple[int, ...]) -> int | str:
    return values[0] if len(set(values)) == 1 else "/".join(map(str, values))


def preset_table(flops: bool = True) -> list[dict]:
    """One row per preset: name, params_m, paper_m, diff_pct, gflops, flops_input, window, patch."""
    rows = []
    for name, cfg in PRESETS.items():
        params_m = count_params(cfg) / 1e6  # exact without building: the table without FLOPs is instant
        side = UNET_INPUT if cfg.arch == "unet" else SR_INPUT
        shape = (1, cfg.in_channels, side, side)
        gflops = None
        if flops:
            with torch.device("meta"):
                gflops = round(model_flops(build(cfg), shape) / 1e9, 2)
        rows.append({
            "name": name,
            "params_m": round(params_m, 3),
            "paper_m": cfg.paper_params,
            "diff_pct": None if cfg.paper_params is None else round(100 * (params_m / cfg.paper_params - 1), 2),
            "gflops": gflops,
            "flops_input": "x".join(map(str, shape)),
            "window": _compact(cfg.per_stage("window")),
            "patch": _compact(cfg.per_stage("patch")),
        })
    return rows
