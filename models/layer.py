"""One Hi-IR layer in the paper's three layouts (the Version 1/2/3 ablation).

    v1 alternating  even layers: L1; odd layers: the dispersed levels (L2, and L2b at depth 4)
    v2 sequential   L1, then L2 (then L2b), each with its own qkv, proj and residual
    v3 unified      L1 -> L2 (-> L2b) in one flow: q and k C/2 wide, v C wide, no projection
                    between the levels, one output projection, one residual (the paper's choice)

Every layout ends with the FFN (L3's conv FFN at tree depth 3/4, a plain MLP at depth 2;
`config.TREE_DEPTHS` says what each depth builds). Residual
branches are res-post-norm `x + LN(f(x))` or pre-norm `x + f(LN(x))` (`NORMS`).
Tokens are (B, H, W, C) in and out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import TREE_DEPTHS
from .flows import FFNS, Disperse, DropPath, FlowAttention, Window, make_mixer

NORMS = {
    "post": lambda x, f, norm, drop: x + drop(norm(f(x))),
    "pre": lambda x, f, norm, drop: x + drop(f(norm(x))),
}
LEVELS = {depth: tree.attention for depth, tree in TREE_DEPTHS.items()}  # attention levels of the tree


@dataclass(frozen=True)
class LayerSpec:
    """Plain arguments of one layer (one stage's slice of `HiIRConfig`)."""

    dim: int
    heads: int
    window: int
    patch: int
    patch2: int
    tree_depth: int = 3
    mixer_l2: str = "permute"
    attention: str = "dot"
    ffn_ratio: float = 3.0
    mlp_ratio: float = 2.0
    norm: str = "post"
    drop_path: float = 0.0
    cpb_hidden: int = 512
    qkv_bias: bool = True
    seed: int = 0


def make_partition(level: str, spec: LayerSpec) -> nn.Module:
    """The token grouping of one tree level: l1 windows, l2 the mixer, l2b disperse over P2."""
    partitions = {
        "l1": lambda: Window(spec.window),
        "l2": lambda: make_mixer(spec.mixer_l2, spec.window, spec.patch, spec.seed),
        "l2b": lambda: Disperse(spec.patch, spec.patch2),
    }
    return partitions[level]()


def make_ffn(spec: LayerSpec) -> nn.Module:
    """The layer's FFN: L3's conv FFN at `ffn_ratio`, or at tree depth 2 a plain MLP at `mlp_ratio`."""
    tree = TREE_DEPTHS[spec.tree_depth]
    return FFNS[tree.ffn](spec.dim, getattr(spec, tree.ratio))


def make_flow(level: str, spec: LayerSpec, **kwargs) -> FlowAttention:
    return FlowAttention(spec.dim, spec.heads, make_partition(level, spec), spec.attention,
                         cpb_hidden=spec.cpb_hidden, qkv_bias=spec.qkv_bias, **kwargs)


class SequentialLayer(nn.Module):
    """v1 and v2: each attention level in `levels` is its own residual branch
    (own qkv, proj and norm), then the FFN."""

    def __init__(self, spec: LayerSpec, levels: tuple[str, ...]):
        super().__init__()
        self.levels = levels
        for level in levels:
            setattr(self, level, make_flow(level, spec))
            setattr(self, f"norm_{level}", nn.LayerNorm(spec.dim))
        self.ffn = make_ffn(spec)
        self.norm_ffn = nn.LayerNorm(spec.dim)
        self.drop_path = DropPath(spec.drop_path)
        self.residual = NORMS[spec.norm]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, H, W, C
        for level in self.levels:
            x = self.residual(x, getattr(self, level), getattr(self, f"norm_{level}"), self.drop_path)
        return self.residual(x, self.ffn, self.norm_ffn, self.drop_path)


class UnifiedLayer(nn.Module):
    """v3: L1 then L2 (then L2b) in one flow, q/k halved, no projection in between."""

    def __init__(self, spec: LayerSpec, levels: tuple[str, ...]):
        super().__init__()
        self.levels = levels
        for level in levels:
            setattr(self, level, make_flow(level, spec, qk_dim=spec.dim // 2, proj=False))
        self.proj = nn.Linear(spec.dim, spec.dim)
        self.norm_attn = nn.LayerNorm(spec.dim)
        self.ffn = make_ffn(spec)
        self.norm_ffn = nn.LayerNorm(spec.dim)
        self.drop_path = DropPath(spec.drop_path)
        self.residual = NORMS[spec.norm]

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        for level in self.levels:
            x = getattr(self, level)(x)
        return self.proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, H, W, C
        x = self.residual(x, self.attn, self.norm_attn, self.drop_path)
        return self.residual(x, self.ffn, self.norm_ffn, self.drop_path)


def _alternating(spec: LayerSpec, index: int) -> nn.Module:
    levels = LEVELS[spec.tree_depth]
    return SequentialLayer(spec, (levels[:1], levels[1:])[index % 2])


LAYOUTS = {
    "v1": _alternating,
    "v2": lambda spec, index: SequentialLayer(spec, LEVELS[spec.tree_depth]),
    "v3": lambda spec, index: UnifiedLayer(spec, LEVELS[spec.tree_depth]),
}


def make_layer(layout: str, spec: LayerSpec, index: int) -> nn.Module:
    """Layer `index` (0-based, within its stage) of the given layout."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    return LAYOUTS[layout](spec, index)
