"""`HiIRConfig`: every study knob of the Hi-IR network, in one frozen dataclass.

Per-stage knobs (`layers_per_stage`, `heads`, `window`, `patch`, `patch2`) accept a scalar or a
tuple with one entry per stage; `per_stage(name)` broadcasts them. The raw value is what is
stored, so `dataclasses.replace(cfg, stages=4)` keeps working with scalar knobs.

What `tree_depth` means (`TREE_DEPTHS`). The paper's tree depth counts the levels of information
flow: depth 3 is L1 (window attention), L2 (dispersed attention inside P x P patches) and L3 (the
convolutional flow, here the FFN's depthwise 3x3: 1x1 C -> 3C, GELU, dw 3x3, GELU, 1x1 3C -> C).
Depth 2 drops L3, and with it the conv FFN: its FFN is a plain MLP (1x1, GELU, 1x1) at
`mlp_ratio` 2. Depth 4 adds a second dispersed level, L2b, over P2 x P2 patches (P2 = 2P).
The evidence for replacing the whole conv FFN, not just its 3x3: the paper's depth-2 model is
2.48M smaller than depth 3 (14.35M -> 11.87M), about 2.1 C^2 per layer at C = 180 over 36
layers. A ratio-3 conv FFN minus a ratio-2 MLP is (6C^2 + 9 * 3C) - 4C^2 = 2C^2 + 27C, 2.15C^2
at C = 180, per layer (plus biases): 2.53M here. Dropping only the depthwise 3x3 (and its bias)
would remove 30C = 0.17C^2 per layer, ~0.2M. So one `tree_depth` value is one model, on any
preset: the depth2 presets are depth3's config with `tree_depth=2`, nothing else.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Literal, get_args

Arch = Literal["columnar", "unet"]
Layout = Literal["v1", "v2", "v3"]
Attention = Literal["dot", "cosine"]
StageConv = Literal["conv1", "conv3", "linear"]
Norm = Literal["post", "pre"]
MixerL2 = Literal["permute", "none", "shift", "grid", "random"]
Parametrization = Literal["standard", "mup"]
PerStage = int | tuple[int, ...]

PER_STAGE = ("layers_per_stage", "heads", "window", "patch", "patch2")


@dataclass(frozen=True)
class TreeDepth:
    """What one `tree_depth` builds in every layer (models/layer.py), counts (models/families.py)
    and pads to (`HiIRConfig.pad_multiple`)."""

    levels: tuple[str, ...]  # the tree's levels, in flow order; all but l3 are attention (one FlowAttention each)
    ffn: str                 # the layer's FFN (`flows.FFNS`): conv = L3's conv FFN, mlp = a plain MLP
    ratio: str               # the config field giving that FFN's hidden width, r * C
    pad: str                 # the per-stage size the input is padded to a multiple of: the largest group

    @property
    def attention(self) -> tuple[str, ...]:
        return tuple(level for level in self.levels if level != "l3")


TREE_DEPTHS: dict[int, TreeDepth] = {
    2: TreeDepth(("l1", "l2"), ffn="mlp", ratio="mlp_ratio", pad="patch"),
    3: TreeDepth(("l1", "l2", "l3"), ffn="conv", ratio="ffn_ratio", pad="patch"),
    4: TreeDepth(("l1", "l2", "l2b", "l3"), ffn="conv", ratio="ffn_ratio", pad="patch2"),
}
# Levels with a path across P x P patch borders: L2b groups over P2 = 2P, L3's 3x3 reaches 1 px per layer.
CROSSING_LEVELS = ("l2b", "l3")

_CHOICES = {
    "arch": get_args(Arch), "layout": get_args(Layout), "attention": get_args(Attention),
    "stage_conv": get_args(StageConv), "norm": get_args(Norm), "mixer_l2": get_args(MixerL2),
    "scale": (1, 2, 3, 4), "in_channels": (1, 3), "tree_depth": tuple(TREE_DEPTHS),
    "parametrization": get_args(Parametrization),
}


@dataclass(frozen=True)
class HiIRConfig:
    # network
    arch: Arch = "columnar"          # columnar (SR, denoise/JPEG) or unet (deblur, derain, dehaze, all-in-one)
    scale: int = 2                   # 2/3/4 = SR with a pixel-shuffle upsampler; 1 = no upsampler, global residual
    in_channels: int = 3             # 1 = grey, 3 = colour
    dim: int = 180                   # embedding width C (unet: width of level 1; level l has C * 2^l)
    stages: int = 6                  # columnar: Hi-IR stages; unet: levels (always 4)
    layers_per_stage: PerStage = 6   # unet: per level, the decoder mirrors the encoder
    heads: PerStage = 6              # attention heads per stage (unet: per level)
    refine_layers: int = 4           # unet only: layers of the refinement stage
    # the information tree
    window: PerStage = 8             # p: L1 window side
    patch: PerStage = 64             # P: L2 patch side, a multiple of p; L2 groups (P/p)^2 tokens
    patch2: PerStage | None = None   # P2: second dispersed level (tree_depth 4), a multiple of P; None = 2P
    layout: Layout = "v3"            # v1 alternating, v2 sequential, v3 unified (the paper's choice)
    tree_depth: int = 3              # 2 = L1+L2, a plain MLP; 3 = + L3, the conv FFN; 4 = + L2b over P2 (TREE_DEPTHS)
    mixer_l2: MixerL2 = "permute"    # what fills the L2 slot: permute (Hi-IR), none, shift, grid, random
    attention: Attention = "dot"     # dot (scaled by d^-0.5) or cosine (learnable logit scale)
    ffn_ratio: float = 3.0           # hidden width of L3's conv FFN (tree depth 3, 4), r * C
    mlp_ratio: float = 2.0           # hidden width of the plain MLP that replaces it at tree depth 2, r * C
    norm: Norm = "post"              # post: x + LN(f(x)) (res-post-norm); pre: x + f(LN(x))
    stage_conv: StageConv = "conv1"  # stage-end op: conv1 (3x3), conv3 (3x3-1x1-3x3 at C/4), linear
    drop_path: float = 0.0           # stochastic depth, rising linearly to this value over the layers
    # how init, Adam learning rates and attention logits follow the width C (models/mup.py)
    parametrization: Parametrization = "standard"  # standard, or mup: μP, whose best LR transfers across widths
    mup_base_dim: int = 32           # mup: the width C whose LRs and init are the standard ones; set it where you tuned
    # details the paper leaves open
    cpb_hidden: int = 512            # hidden width of the continuous position bias MLP (Swin-V2: 512)
    qkv_bias: bool = True            # bias on the qkv projection
    upsampler_dim: int = 64          # width of the pixel-shuffle upsampler (SwinIR: 64)
    mean_shift: bool = False         # columnar: subtract DIV2K's RGB mean from the input, add it back (SwinIR)
    random_seed: int = 0             # mixer_l2=random: the fixed permutation used in eval
    paper_params: float | None = None  # the paper's parameter count in millions, where it gives one

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(map(str, allowed))}")
        if self.arch == "unet" and self.stages != 4:
            raise ValueError(f"stages={self.stages} must be 4 for arch='unet' (a 4-level encoder/decoder)")
        if self.arch == "unet" and self.mean_shift:  # it was silently ignored there: a run "with" it was a run without
            raise ValueError("mean_shift=True is the columnar network's (SwinIR's input shift); arch='unet' adds "
                             "its input back at the end (a global residual), where a shift only moves the first "
                             "conv's bias")
        if self.stages < 1 or self.dim < 1 or self.mup_base_dim < 1:
            raise ValueError(f"stages={self.stages}, dim={self.dim} and mup_base_dim={self.mup_base_dim} "
                             "must be positive")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path={self.drop_path} must be in [0, 1)")
        for name in ("ffn_ratio", "mlp_ratio"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        for name in PER_STAGE:
            value = getattr(self, name)
            if isinstance(value, (tuple, list)) and len(value) != self.stages:
                raise ValueError(f"{name}={tuple(value)} must have one entry per stage (stages={self.stages})")
        for s, (p, big, big2, h, c) in enumerate(zip(*map(self.per_stage, ("window", "patch", "patch2", "heads")),
                                                    self.stage_dims())):
            where = f" (stage {s})" if self.stages > 1 else ""
            if p < 1 or big % p:
                raise ValueError(f"patch={big} must be a multiple of window={p}{where}")
            if self.tree.pad == "patch2" and big2 % big:
                raise ValueError(f"patch2={big2} must be a multiple of patch={big}{where}")
            qk = c // 2 if self.layout == "v3" else c
            if c % h or qk % h:
                raise ValueError(f"heads={h} must divide the width {c} and the q/k width {qk}{where}")

    def per_stage(self, name: str) -> tuple[int, ...]:
        """The knob broadcast to one value per stage; `patch2=None` resolves to 2 * patch."""
        value = getattr(self, name)
        if name == "patch2" and value is None:
            return tuple(2 * p for p in self.per_stage("patch"))
        return tuple(value) if isinstance(value, (tuple, list)) else (value,) * self.stages

    def stage_dims(self) -> tuple[int, ...]:
        """Width of each stage: constant for columnar, doubling per level for unet."""
        grow = 2 if self.arch == "unet" else 1
        return tuple(self.dim * grow**s for s in range(self.stages))

    @property
    def tree(self) -> TreeDepth:
        """What `tree_depth` builds: its levels, FFN and pad rule (`TREE_DEPTHS`)."""
        return TREE_DEPTHS[self.tree_depth]

    @property
    def pad_multiple(self) -> int:
        """The multiple that input height and width are padded to (reflect), before the body."""
        sizes = self.per_stage(self.tree.pad)
        down = 2 if self.arch == "unet" else 1
        return math.lcm(*(size * down**s for s, size in enumerate(sizes)), down ** (self.stages - 1))

    @property
    def crosses_patches(self) -> bool:
        """Whether information can flow across P x P patch borders in the body: through L3's depthwise 3x3
        or L2b's P2 groups (tree depth 3 and 4), a 3x3 stage-end conv, an L2 mixer not bounded by P (shift,
        grid, random), or the U-shape's resampling. Tree depth 2 (whose plain MLP has no spatial reach) with
        linear stage ends and `permute`/`none` has no such path: an output pixel away from its patch's border
        then sees only its own patch, and the 1-px border that the shallow 3x3 conv adds."""
        return (self.arch == "unet" or any(level in CROSSING_LEVELS for level in self.tree.levels)
                or self.stage_conv != "linear" or self.mixer_l2 in ("shift", "grid", "random"))

    def replace(self, **overrides) -> HiIRConfig:
        """`dataclasses.replace`, with an unknown field named in a ValueError."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            near = {k: difflib.get_close_matches(k, fields, n=3) for k in unknown}
            raise ValueError("unknown config field(s): " + "; ".join(
                f"{k} (nearest: {', '.join(v) or 'none'})" for k, v in near.items()))
        return dataclasses.replace(self, **overrides)
