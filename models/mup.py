"""μP, the maximal-update parametrization (Yang et al., "Tensor Programs V", 2022), for the Hi-IR networks.

Under the standard parametrization the best Adam learning rate drifts as a model widens: a search on a
small model does not hold for a large one. Under μP the best learning rate found at one width C stays
the best at the other widths of a size family (`families.py`), so the search is done once, small.
`model.parametrization: mup` turns it on; `model.mup_base_dim` is the base width B, and m = C / B the
width multiplier. At m = 1 init and learning rates are the standard ones (only the dot-attention logit
scale differs), so a model tuned under the standard parametrization at width B keeps its recipe.

Which parameter is which (`ROLES`, first match wins) and what each role gets, as multipliers of the
standard init and of the base learning rate `optim.lr`:

    role     parameters                                            Adam LR   init              decay
    input    conv_first (image -> C: its fan-in does not grow)     x 1       x 1               as SP
    hidden   qkv, proj, FFN fc1/fc2, stage-end ops (conv1, conv3,  x 1/m     Linear x m^-1/2   wd x m
             linear), the U-shape's downs/ups/reduces                        (convs x 1)
    readout  the head's first op on the width-C features:          x 1/m     x 1/m             wd x m
             conv_before.0 (SR: C -> upsampler) or conv_last
             (scale 1 and the U-shape: C -> image)
    vector   every bias, LayerNorm gains, L3's depthwise 3x3,      x 1       x 1               as SP
             the position-bias MLP, cosine logit scales
    fixed    the pixel-shuffle upsampler after the readout          x 1       x 1               as SP
    (dot attention) logits q.k / d instead of q.k / sqrt(d), d the q/k head width (flows.DotSimilarity)

Why each rule:
- hidden: both fans grow with C, so an Adam step (entries ~ lr whatever the gradient's scale) moves a
  coordinate of W x by ~ lr * fan_in; lr / m keeps that fixed. Init var ~ 1/fan_in: SP's trunc-normal
  0.02 is width-constant, so Linear weights get 0.02 / sqrt(m); PyTorch's default conv init is already
  ~ fan_in^-1/2 and stays. Decay x m keeps AdamW's decoupled shrink lr * wd per step (the `mup` package's
  MuAdamW does the same).
- readout: μP gives the output layer a multiplier 1/m with init and LR unchanged. Adam's step does not
  depend on the gradient's scale, so (multiplier 1/m, init s, LR lr) trains as (multiplier 1, init s/m,
  LR lr/m) up to Adam's epsilon and clipping; the second form needs no change to `forward`, and a
  checkpoint's weights are the function's weights.
- input, vector: one dimension grows (or none); their coordinates are O(1) at every width with the
  standard init and LR. The depthwise 3x3 has a fan-in of 9 per channel. The position-bias MLP maps 2
  coordinates through its own hidden width (cpb_hidden, set by the family, not C) to one additive bias
  per head, bounded by 16 sigmoid; it is not part of the width-C stream.
- fixed: the upsampler's width is `upsampler_dim`, which the families bound (tiny 32..64, b <= 64):
  a finite network behind the readout, left standard.
- dot attention: in training q and k correlate, so q.k grows like d, not sqrt(d); 1/d keeps the logits
  O(1). Cosine attention normalises q and k: q.k is a cosine in [-1, 1] at every d, already what 1/d
  achieves, and its logit scale is a per-head scalar (vector). So cosine attention is left as it is.
  In both families the heads follow the width (head width near 32), so d moves little with C and 1/d is
  mostly a fixed temperature; it matters where heads stay fixed and d grows.

`parametrize(model)` applies the init and the attention scale (the network calls it when it is built);
`param_groups(model, lr, weight_decay)` gives the optimizer's groups, each with its `lr`, `weight_decay`
and `lr_scale` (its multiplier of `optim.lr`): the engines hand them to torch's AdamW, DeepSpeed ZeRO 0-3
keeps them, and checkpoints store them (resume rebuilds the same groups in the same order).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .flows import DotSimilarity

READOUT = "<readout>"  # the head's first op on the width-C features: decided per network, see `readout_name`

# (pattern searched in the parameter's name, role, what it is); the first match wins.
ROLES: tuple[tuple[str, str, str], ...] = (
    (r"\.bias$", "vector", "every bias"),
    (r"(^|\.)norm(_\w+)?\.weight$", "vector", "LayerNorm gains"),
    (r"\.cpb\.", "vector", "the continuous position-bias MLP (2 -> cpb_hidden -> heads)"),
    (r"\.logit_scale$", "vector", "cosine attention's per-head logit scale"),
    (r"\.dwconv\.weight$", "vector", "L3's depthwise 3x3 (fan-in 9 per channel)"),
    (r"^conv_first\.weight$", "input", "the shallow conv, image -> C"),
    (READOUT, "readout", "the head's first op: conv_before.0 (C -> upsampler) or conv_last (C -> image)"),
    (r"^head\.", "fixed", "the pixel-shuffle upsampler after the readout (width upsampler_dim)"),
    (r"\.(qkv|proj)\.weight$", "hidden", "attention's qkv and output projections"),
    (r"\.ffn\.fc[12]\.weight$", "hidden", "the FFN's 1x1 layers (C -> rC -> C)"),
    (r"(^|\.)stage_conv\.", "hidden", "stage-end and body-end ops (conv1, conv3, linear)"),
    (r"^(downs|ups)\.\d+\.|^reduces\.\d+\.weight$", "hidden", "the U-shape's down/up-sampling convs and reduces"),
)


@dataclass(frozen=True)
class Rule:
    """A role's multipliers as powers of m = C / B: learning rate m^lr, init m^init (`init_linear_only`:
    Linear weights only), and weight decay m^-lr (AdamW's lr * wd kept)."""

    lr: float
    init: float
    init_linear_only: bool = False


RULES: dict[str, Rule] = {
    "input": Rule(lr=0.0, init=0.0),
    "hidden": Rule(lr=-1.0, init=-0.5, init_linear_only=True),
    "readout": Rule(lr=-1.0, init=-1.0),
    "vector": Rule(lr=0.0, init=0.0),
    "fixed": Rule(lr=0.0, init=0.0),
}


def width_mult(config) -> float:
    """m = C / B: the width against `mup_base_dim` (the U-shape's levels all scale with C)."""
    return config.dim / config.mup_base_dim


def readout_name(model: nn.Module) -> str:
    """The readout's weight: the upsampler's input conv for SR, else the head's conv to the image."""
    return "head.conv_before.0.weight" if hasattr(model.head, "conv_before") else "head.conv_last.weight"


def roles(model: nn.Module) -> dict[str, str]:
    """Parameter name -> role, by `ROLES`; a parameter no row names is a ValueError (add it to the table)."""
    readout, out = readout_name(model), {}
    for name, _ in model.named_parameters():
        for pattern, role, _what in ROLES:
            if name == readout if pattern == READOUT else re.search(pattern, name):
                out[name] = role
                break
        else:
            raise ValueError(f"models/mup.py: parameter {name!r} has no μP role; add it to ROLES")
    return out


def parametrize(model: nn.Module) -> None:
    """μP's init (the standard draws, rescaled: no extra random numbers) and 1/d dot-attention logits."""
    m = width_mult(model.config)
    by_name = dict(model.named_parameters())
    with torch.no_grad():
        for name, role in roles(model).items():
            rule, p = RULES[role], by_name[name]
            if rule.init and not p.is_meta and (p.ndim == 2 or not rule.init_linear_only):
                p.mul_(m**rule.init)
    for module in model.modules():
        if isinstance(module, DotSimilarity):
            module.per_dim = True


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: (decayed or not, as the standard rule decides) x (the role's LR exponent), decayed first
    and the standard LR first within each, so the order is fixed; empty groups left out. Each group holds its
    `lr`, `weight_decay` and `lr_scale`."""
    m, skip = width_mult(model.config), model.no_weight_decay()
    by_name, groups = dict(model.named_parameters()), {}
    for name, role in roles(model).items():
        p = by_name[name]
        decay = not (p.ndim <= 1 or name in skip)
        groups.setdefault((decay, RULES[role].lr), []).append(p)
    out = []
    for decay, exponent in sorted(groups, key=lambda k: (not k[0], k[1] != 0, k[1])):
        scale = m**exponent
        out.append({"params": groups[decay, exponent], "lr": lr * scale,
                    "weight_decay": weight_decay / scale if decay else 0.0, "lr_scale": scale})
    return out


def describe_groups(model: nn.Module) -> list[dict]:
    """What `param_groups` gives, per role: parameter count, tensors and multipliers (for tables and tests)."""
    m, named, rows = width_mult(model.config), dict(model.named_parameters()), {}
    for name, role in roles(model).items():
        row = rows.setdefault(role, {"role": role, "tensors": 0, "params": 0, "lr_x": m ** RULES[role].lr,
                                     "init_x": m ** RULES[role].init})
        row["tensors"] += 1
        row["params"] += named[name].numel()
    return list(rows.values())
