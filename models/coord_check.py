"""The coordinate check of μP ("Tensor Programs V", section 7): train a few Adam steps at several widths
of one size family, under both parametrizations, and record the mean absolute activation of every layer.

Under μP a layer's typical coordinate stays the same size as the width grows (flat lines against width);
under the standard parametrization the hidden layers' and the readout's grow with it, after the first
steps and, for Linear layers (SP's width-constant init), from the start. The slope of log|activation|
against log(width) says it in one number per layer: `coord_check` returns it per layer and per kind of
layer (qkv, proj, fc1, ... readout, output), `summary` gives each parametrization's worst slope.

Data are a fixed synthetic batch (uniform noise images and their bicubic upsampling as the target):
the check is about the parametrization, not the task. The position-bias MLP is in it (its hidden layer,
and its logits before the 16 sigmoid): a side network whose updates come back through the attention.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from .factory import build
from .families import get_family
from .mup import param_groups

# kind of layer -> pattern on the module's name, first match wins (what the plot draws one line for)
KINDS: tuple[tuple[str, str], ...] = (
    ("qkv", r"\.qkv$"), ("proj", r"\.proj$"), ("fc1", r"\.fc1$"), ("dwconv", r"\.dwconv$"), ("fc2", r"\.fc2$"),
    ("cpb_hidden", r"\.cpb\.mlp\.0$"), ("cpb_logits", r"\.cpb\.mlp\.2$"),
    ("norm", r"(^|\.)norm(_\w+)?$"), ("layer", r"^stages\.\d+\.layers\.\d+$"), ("stage_conv", r"stage_conv$"),
    ("input", r"^conv_first$"), ("readout", r"^head\.conv_before\.0$"),
    ("upsampler", r"^head\.(upsample\.\d+|conv_last)$"),
    ("output", r"^$"),
)


# What the verdict calls flat and growing: |slope| per width doubling of the mean |activation| (log2 / log2).
FLAT = 0.25    # every kind within this under μP (0 is flat; a width-proportional coordinate is 1)
GROWS = 0.5    # the median kind above this under standard (a width-proportional coordinate is 1)


def kind_of(name: str) -> str | None:
    return next((kind for kind, pattern in KINDS if re.search(pattern, name)), None)


def widths_for(family: str, n: int = 4) -> list[int]:
    """`n` widths doubling from half the family's anchor width: tiny 16, 32, 64, 128; b 90 .. 720."""
    c0 = get_family(family).base.dim
    return [c0 * 2**i // 2 for i in range(n)]


def _config(family: str, width: int, parametrization: str, base_dim: int):
    fam = get_family(family)
    heads = fam.heads_for(width)
    if heads is None:
        raise ValueError(f"width {width} has no heads in family {family!r} (head width within "
                         f"{fam.head_band[0]}..{fam.head_band[1]}); pick another width")
    cfg = fam.shape(fam.base, width, fam.depths[0])
    return cfg.replace(parametrization=parametrization, mup_base_dim=base_dim)


def _activations(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Mean |output| of every module `kind_of` names, for one forward."""
    out, hooks = {}, []
    for name, module in model.named_modules():
        if kind_of(name) is not None:
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: out.__setitem__(name, o.detach().abs().mean().item())))
    try:
        y = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, y


def coord_check(family: str = "tiny", widths: list[int] | None = None, *, steps: int = 10, lr: float = 3e-3,
                seeds: int = 4, batch: int = 4, patch: int = 16, base_dim: int | None = None) -> dict:
    """Train `steps` AdamW steps at each width under standard and mup; return, per parametrization, the mean
    |activation| per layer, width and step (averaged over seeds) and the slope of log2 of it against log2 width
    at the last step, per layer and per kind. `base_dim` (mup_base_dim) defaults to the family's anchor width.
    Ten steps and four seeds, not fewer: μP's readout starts with std ~ 1/fan_in, so its output at init shrinks
    as m^-1/2, and it takes a few updates to reach its O(1) level (tiny at C 16..128: after 4 steps the readout's
    slope is -0.33, after 10 every kind was within 0.15). Since the input's mean shift the position-bias logits
    and the upsampler sit lower under μP (-0.21 and -0.20 over 4 seeds; -0.28 and -0.12 over 2), so two seeds
    can cross the flat line by chance (bench/RESULTS.md, "the input's mean shift")."""
    widths = sorted(widths or widths_for(family))
    if len(widths) < 2:
        raise ValueError("the coordinate check needs at least 2 widths (4 or more to see a trend)")
    base_dim = base_dim or get_family(family).base.dim
    result = {"family": family, "widths": widths, "steps": steps, "lr": lr, "seeds": seeds, "batch": batch,
              "patch": patch, "mup_base_dim": base_dim, "parametrizations": {}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny layers on shared cores: 2 threads spend their time in OpenMP barriers (10x)
    try:
        for parametrization in ("standard", "mup"):
            result["parametrizations"][parametrization] = _train_and_measure(
                family, widths, parametrization, base_dim, steps=steps, lr=lr, seeds=seeds, batch=batch, patch=patch)
    finally:
        torch.set_num_threads(threads)
    result["summary"] = summary(result)
    return result


def _train_and_measure(family: str, widths: list[int], parametrization: str, base_dim: int, *, steps: int,
                       lr: float, seeds: int, batch: int, patch: int) -> dict:
    """One parametrization of `coord_check`: {"layers": name -> curve and slope, "kinds": kind -> the same}."""
    values: dict[str, dict[int, list[list[float]]]] = defaultdict(lambda: defaultdict(list))  # name -> w -> [seed][t]
    for width in widths:
        cfg = _config(family, width, parametrization, base_dim)
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = build(cfg)
            groups = param_groups(model, lr, 0.0) if parametrization == "mup" else model.parameters()
            optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
            g = torch.Generator().manual_seed(1000 + seed)
            x = torch.rand(batch, cfg.in_channels, patch, patch, generator=g)
            target = (F.interpolate(x, scale_factor=cfg.scale, mode="bicubic", align_corners=False)
                      if cfg.scale > 1 else x)
            per_step = defaultdict(list)
            for _ in range(steps):
                acts, y = _activations(model, x)
                for name, v in acts.items():
                    per_step[name].append(v)
                F.l1_loss(y, target).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for name, series in per_step.items():
                values[name][width].append(series)
    layers = {}
    for name, by_width in values.items():
        mean = [[sum(s[t] for s in by_width[w]) / len(by_width[w]) for t in range(steps)] for w in widths]
        layers[name or "output"] = {"kind": kind_of(name), "mean_abs": mean,
                                    "slope": slope(widths, [m[-1] for m in mean])}
    kinds = {}
    for kind in dict.fromkeys(v["kind"] for v in layers.values()):
        members = [v for v in layers.values() if v["kind"] == kind]
        # per width and step: the geometric mean over the kind's layers
        curve = [[math.exp(sum(math.log(max(v["mean_abs"][i][t], 1e-30)) for v in members) / len(members))
                  for t in range(steps)] for i in range(len(widths))]
        kinds[kind] = {"layers": len(members), "mean_abs": curve, "slope": slope(widths, [c[-1] for c in curve])}
    return {"layers": layers, "kinds": kinds}


def slope(widths: list[int], values: list[float]) -> float:
    """Least-squares slope of log2(value) against log2(width): 0 flat, 1 proportional to the width."""
    xs = [math.log2(w) for w in widths]
    ys = [math.log2(max(v, 1e-30)) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def summary(result: dict) -> dict:
    """Per parametrization: the largest |slope| over the kinds of layer, which kind it is, and the median slope."""
    out = {}
    for parametrization, data in result["parametrizations"].items():
        kinds = data["kinds"]
        worst = max(kinds, key=lambda k: abs(kinds[k]["slope"]))
        ordered = sorted(v["slope"] for v in kinds.values())
        out[parametrization] = {"max_abs_slope": abs(kinds[worst]["slope"]), "worst_kind": worst,
                                "median_slope": ordered[len(ordered) // 2]}
    return out


def verdict(summary: dict) -> str:
    """One sentence: is every kind flat under μP (|slope| <= FLAT), and does standard grow (median >= GROWS)?"""
    mup, std = summary["mup"], summary["standard"]
    flat = mup["max_abs_slope"] <= FLAT
    grows = std["median_slope"] >= GROWS
    return (f"μP {'flat' if flat else 'NOT flat'}: largest |slope| {mup['max_abs_slope']:.2f} ({mup['worst_kind']}), "
            f"{'within' if flat else 'beyond'} {FLAT}; standard {'grows' if grows else 'does NOT grow'}: median slope "
            f"{std['median_slope']:.2f} ({'at least' if grows else 'under'} {GROWS}); slope = log2 change of the mean "
            "|activation| per doubling of width")
