"""μP, the maximal-update parametrization (Yang et al., "Tensor Programs V", 2022), for the Hi-IR networks.

Under the standard parametrization the best Adam learning rate drifts as a model widens: a search on a
small model does not hold for a large one. Under μP the best learning rate found at one width stays the
best at the other widths of a size family (`families.py`), so the search is done once, small.
`model.parametrization: mup` turns it on; `model.mup_base_dim` is the base width B. At C = B the model,
its init and its learning rates are exactly the standard ones, so a recipe tuned there carries over.

Roles come from shapes, as the `mup` package's `set_base_shapes` reads them: each parameter's shape in
this model against its shape in the base model (`base_config`: the same config at width B, under the
shape rule its width-following fields follow: a size family's, or, for a preset, C alone moves). Fan-in
is a weight's dim 1 (times the kernel), fan-out its dim 0; a 1-D tensor (bias, norm gain) has a fan-out
only. m is the parameter's own fan-in ratio to the base model's (1 where the fan-in stays), so a part whose
input grows otherwise than C (b's position-bias MLP below B: 512 C/180 from 32) gets its own ratio, not C / B.
`ROLES` names the role, `RULES` what it gets, both as in Tensor Programs V's table for Adam (mup's MuAdamW and
MuReadout):

    fan-in   fan-out   role       Adam LR   init std, against the   decay     in the families
    moves    moves                          base model's
    yes      yes       hidden     x 1/m     x m^-1/2                wd x m    qkv, proj, FFN fc1/fc2, stage ends,
                                                                              the U-shape's downs/ups/reduces
    yes      no        readout    x 1/m     x m^-1                  wd x m    the head's conv onto the fixed
                                                                              upsampler (conv_before.0) or onto
                                                                              the image (conv_last at scale 1)
    no       yes       input      x 1       x 1                     as SP     conv_first, biases and norm gains,
                                                                              L3's depthwise 3x3, what has one
                                                                              entry per head when heads follow C
    no       no        standard   x 1       x 1                     as SP     the upsampler behind the readout,
                                                                              tiny's position-bias MLP

    (dot attention) logits q.k * sqrt(d_base) / d, d the layer's q/k head width and d_base the base
    model's: 1/sqrt(d) at the base width, 1/d away from it (flows.DotSimilarity)

The init is the standard draw rescaled (no extra random numbers). The standard init's own std follows the
width for convs (PyTorch's default, ~ fan_in^-1/2 for weight and bias) and not for the rest (Linear
weights trunc-normal 0.02, norms and logit scales constant), so the rescale is the table's factor over
what the standard draw already does: hidden convs x 1, hidden Linears x m^-1/2, readout convs x m^-1/2,
readout Linears x m^-1, conv biases x m_conv^1/2 (their std stays the base model's, as mup's
`rescale_linear_bias`).

Why each rule:
- hidden: both fans follow C, so an Adam step (entries ~ lr whatever the gradient's scale) moves a
  coordinate of W x by ~ lr * fan_in; lr / m keeps that fixed. Init var ~ 1/fan_in keeps W x O(1).
  Decay x m keeps AdamW's decoupled shrink lr * wd per step (as MuAdamW).
- readout: its output has a fixed width, so init var ~ 1/fan_in^2 (std ~ 1/fan_in: the init's output
  vanishes as C grows and what is learnt dominates) and lr ~ 1/fan_in. mup's MuReadout gets there as a
  1/m output multiplier on an sqrt(m)-rescaled standard init; under Adam that trains as the weights and
  LR used here, which need no change to `forward`, so a checkpoint's weights are the function's weights.
- input, standard: the fan-in stays, so each coordinate is O(1) at every width with the base model's
  init and LR. The position-bias MLP maps 2 coordinates to one bias per head (16 sigmoid): a side
  network, fixed in tiny (standard; its last layer is input where the heads grow), shrinking with C
  in b below B (its layers then take input and hidden or readout roles by the same rule).
- dot attention: in training q and k correlate, so q.k grows like d, not sqrt(d); 1/d keeps the logits
  O(1), and sqrt(d_base) makes it 1/sqrt(d) at the base width. Cosine attention normalises q and k
  (q.k is a cosine at every d) and its logit scale is a per-head constant, so it is left as it is.

`MUP_RULES_VERSION` names these rules: runs record it (platform/tracking.py), and `--transfer-from`
refuses a μP source made under other rules, whose learning rates meant something else.
`parametrize(model)` applies the init and the attention scale (`factory.build` calls it on every μP network);
`param_groups(model, lr, weight_decay)` gives the optimizer's groups, each with its `lr`, `weight_decay`
and `lr_scale` (its multiplier of `optim.lr`): the engines hand them to torch's AdamW, DeepSpeed ZeRO 0-3
keeps them, and checkpoints store them (resume rebuilds the same groups in the same order).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from .families import FAMILIES
from .flows import DotSimilarity, FlowAttention
from .networks import NETWORKS

# The rules below, as a number runs are tagged with: raise it when a rule changes what a μP run trains.
MUP_RULES_VERSION = 2

# (fan-in moves, fan-out moves) against the base model -> role, as mup's set_base_shapes decides it
ROLES: dict[tuple[bool, bool], str] = {
    (True, True): "hidden",
    (True, False): "readout",
    (False, True): "input",
    (False, False): "standard",
}


@dataclass(frozen=True)
class Rule:
    """A role's multipliers as powers of m, the parameter's fan-in ratio to the base model's: Adam learning rate
    m^lr (weight decay m^-lr, so AdamW's lr * wd stays), and the init's std m^init against the base model's."""

    lr: float
    init: float


RULES: dict[str, Rule] = {
    "hidden": Rule(lr=-1.0, init=-0.5),
    "readout": Rule(lr=-1.0, init=-1.0),
    "input": Rule(lr=0.0, init=0.0),
    "standard": Rule(lr=0.0, init=0.0),
}
# How the standard init's std goes with its module's fan-in (networks._init_weights keeps PyTorch's
# default for convs, weight and bias ~ fan_in^-1/2; every other standard init is width-constant).
STANDARD_INIT: dict[type[nn.Module], float] = {nn.Conv2d: -0.5}


@dataclass(frozen=True)
class Scaling:
    """One parameter under μP: its role, its fan-in ratio m to the base model, and its multipliers."""

    role: str
    m: float
    lr: float    # of optim.lr
    init: float  # of the standard draw at this width


def base_config(config):
    """The config at the base width B = `mup_base_dim`, by the shape rule its width-following fields follow:
    a size family's (`Family.follows`), else the preset's own (C moves, heads and the rest stay)."""
    base = config.mup_base_dim
    for family in FAMILIES.values():
        if family.follows(config):
            if family.heads_for(base) is None:
                raise ValueError(f"mup_base_dim={base} is not a usable width of family {family.name!r} (no heads "
                                 f"with a head width in {family.head_band[0]}..{family.head_band[1]}); pick another")
            return family.shape(config, base, config.stages)
    try:
        return config.replace(dim=base)
    except ValueError as exc:
        raise ValueError(f"mup_base_dim={base}: the base model does not build ({exc})") from None


@cache
def base_shapes(config) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """The base model's parameter shapes by name, and its q/k head width by attention module (a meta build)."""
    base_cfg = base_config(config).replace(parametrization="standard")
    with torch.device("meta"):
        base = NETWORKS[base_cfg.arch](base_cfg)
    return ({name: tuple(p.shape) for name, p in base.named_parameters()},
            {name: m.dq for name, m in base.named_modules() if isinstance(m, FlowAttention)})


def _fan_in(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:]) if len(shape) >= 2 else 1


def _fan_out(shape: tuple[int, ...]) -> int:
    return shape[0] if shape else 1


def scalings(model: nn.Module) -> dict[str, Scaling]:
    """Parameter name -> its role and multipliers, from its shape against the base model's."""
    shapes, _ = base_shapes(model.config)
    named, out = dict(model.named_parameters()), {}
    for name, p in named.items():
        if name not in shapes:
            raise ValueError(f"models/mup.py: parameter {name!r} is not in the base model at "
                             f"mup_base_dim={model.config.mup_base_dim}; its structure must not depend on the width")
        shape, base = tuple(p.shape), shapes[name]
        role = ROLES[_fan_in(shape) != _fan_in(base), _fan_out(shape) != _fan_out(base)]
        rule, m = RULES[role], _fan_in(shape) / _fan_in(base)
        init = m**rule.init
        owner_name, _, _ = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        exponent = next((e for kind, e in STANDARD_INIT.items() if isinstance(owner, kind)), 0.0)
        if exponent:  # divide out how the standard draw itself moved with the module's fan-in
            weight = f"{owner_name}.weight"
            init /= (_fan_in(tuple(named[weight].shape)) / _fan_in(shapes[weight])) ** exponent
        out[name] = Scaling(role, m, m**rule.lr, init)
    return out


def roles(model: nn.Module) -> dict[str, str]:
    """Parameter name -> role (`ROLES`), from its shape against the base model's."""
    return {name: s.role for name, s in scalings(model).items()}


def parametrize(model: nn.Module) -> None:
    """μP's init (the standard draws, rescaled) and dot attention's logit scale sqrt(d_base) / d."""
    named, (_, head_dims) = dict(model.named_parameters()), base_shapes(model.config)
    with torch.no_grad():
        for name, s in scalings(model).items():
            if s.init != 1.0 and not named[name].is_meta:
                named[name].mul_(s.init)
    for name, module in model.named_modules():
        if isinstance(module, FlowAttention) and isinstance(module.sim, DotSimilarity):
            d, d_base = module.dq, head_dims[name]
            module.sim.scale = None if d == d_base else math.sqrt(d_base) / d  # None: SDPA's own 1/sqrt(d)


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: (decayed or not, as the standard rule decides) x (LR multiplier), decayed first and the
    multiplier 1 first within each, so the order is fixed; empty groups left out. Each group holds its `lr`,
    `weight_decay` and `lr_scale`. At the base width these are the standard two groups, with the standard LR."""
    skip, named, groups = model.no_weight_decay(), dict(model.named_parameters()), {}
    for name, s in scalings(model).items():
        p = named[name]
        decay = not (p.ndim <= 1 or name in skip)
        groups.setdefault((decay, s.lr), []).append(p)
    out = []
    for decay, scale in sorted(groups, key=lambda k: (not k[0], k[1] != 1.0, k[1])):
        out.append({"params": groups[decay, scale], "lr": lr * scale,
                    "weight_decay": weight_decay / scale if decay else 0.0, "lr_scale": scale})
    return out


def describe_groups(model: nn.Module) -> list[dict]:
    """Per role and fan-in ratio: tensors, parameter count and multipliers (for tables and tests)."""
    named, rows = dict(model.named_parameters()), {}
    for name, s in scalings(model).items():
        row = rows.setdefault((s.role, s.m), {"role": s.role, "m": s.m, "lr_x": s.lr, "tensors": 0, "params": 0})
        row["tensors"] += 1
        row["params"] += named[name].numel()
    return list(rows.values())
