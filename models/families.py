"""Size families: a model family plus a target parameter count gives a config.

    solve("b", "30M") -> Solved(config, family, target, achieved, rule_note)
    solve("tiny", 2e5, scale=4)   overrides (scale, stage_conv, attention, tree_depth, layout, ...)
                                  are applied to the family's base before solving: they move the count
    parse_size("0.05M") -> 50000; format_size(14736068) -> "14.74M"; count_params(cfg), exact, no build

A family is data (`Family`): a base `HiIRConfig` (the anchor, width C0 and depth d0 x d0) and
a shape rule. `b` follows the paper's order (B -> L by depth, L -> XL by width), made continuous as
three legs, with the width C as the fine knob; `tiny` has no depth leg (d0 = d1), so it grows by
width alone: on 2 CPU cores a layer costs more time per parameter than width does (bench/RESULTS.md,
"the demo's sizes"), and a CPU study must fit its minutes.

    width leg below    C shrinks at d0 x d0, down from C0
    depth leg          d x d stages x layers for d = d0 .. d1: the square whose count at C0 is
                       nearest the target (in ratio); C then fine-tunes around C0
    width leg above    C grows at d1 x d1, up from C0

    family  anchor                        depth leg      5% range       on the path (achieved)
    b       b_x2_conv3: C 180, 6x6        6x6 -> 12x12   0.5M .. 1B     B 14.74M, L (C 180, 12x12)
                                                                        ~56M, XL 111.2M (C 256)
    tiny    tiny_x2: C 32, 2x2, p 4, P 8  none (2x2)     0.05M .. 50M   C 32 2x2 0.119M (1 head)

Heads (both families). The head width aims at 32 (XL's 256 / 8; B's 180 / 6 = 30): the heads are
the divisor of gcd(C, C/2) whose head width is nearest 32 in ratio (v3's q/k is C/2, so
2 x heads divides C; kept for a v1/v2 override too, so a layout ablation keeps its heads).
A width is usable when that head width is within 16..64, or with one head up to C = 96.
So 180 -> 6 heads, 256 -> 8, 64 -> 2, and every width below 48 runs one head.
Between 48 and ~200 the head count follows the divisors, and is not monotone (58 = 2 x 29 runs
one head of 58, 56 two of 28, 162 three of 54). That is the price of the 5%: widths with a
fixed head count come in steps of 2 x heads (12 at C = 180, 7% of the width, 14% of the count).
To keep heads near the aim anyway, among the usable widths within 3% of the target the one whose
head width is nearest 32 wins (this halves the off-aim heads); beyond 3%, the nearest count wins.

Rounding. Any usable width: odd ones too below 48, where one head is the rule (q/k then take
floor(C/2)), because one step of 2 at C = 30 moves the count by 14%. The usable widths are
dense enough that neighbours are at most 8.7% apart in count over each family's range, so
the achieved count is within 4.3% of any target there (measured over every width, also with
overrides of scale, stage_conv, layout, tree_depth, attention; the widest gap is 144 -> 150,
where 146 and 148 have no heads in 16..64). tests/test_families.py checks 5% on a log grid.
A target outside the range that would miss by more than 5% is a ValueError naming the range.
The ranges are for x2: the x3 and x4 upsamplers are twice x2's, which moves tiny's floor (its
upsampler keeps 32 channels) from 0.04M to ~0.09M; b's upsampler shrinks, so its range holds.

What shrinks and grows with C (`Family.shape`); everything else is the anchor's:
- b below B: the position-bias MLPs (2 per layer; hidden 512 C / 180 as a multiple of 8, from
  32 up to Swin-V2's 512 at B and above) and the upsampler (min(C, 64), SwinIR's 64 from C = 64).
  At their B sizes they would hold 0.3M, most of a 0.5M model. From B (and C 64) on they are fixed.
- tiny: neither; the position-bias hidden width is 64 and the upsampler 32 at every width. Tiny is
  the μP transfer family (studies/transfer_*.yaml), and μP reads each tensor's role from how its shape
  moves between two widths (models/mup.py): with both fixed, the position-bias MLP is a finite side
  network at every width (2 coordinates in, a bias per head out) and the head's first conv is the
  readout at every width. When they grew with C inside bounds (hidden 2C from 64, upsampler C in
  32..64), a part grew between some widths and not others, so one tensor changed role inside a
  transfer study (on base 32, the head's first conv was a readout at C 16 and hidden at C 64 and 128),
  and at C 64 the upsampler held 0.19M of 0.46M. Kept small, they also set the family's floor at
  ~0.04M (shrinking with C, one width step at C ~ 15 would move the count by more than 10%).
- Window p and patch P carry no parameters: they stay the anchor's at every size (b 8 / 64,
  tiny 4 / 8), so the size axis never changes the tree's receptive field or the pad multiple.
- Never changed by the rule: FFN ratio (b 3, tiny 2), stage ends (b conv3, tiny conv1), layout
  v3, tree depth 3, x2. The fields the rule sets (dim, heads, stages, layers_per_stage,
  cpb_hidden, upsampler_dim) cannot be overridden.

Counts come from `count_params`, analytic and exact for columnar configs (tests compare it with
meta-device builds of every columnar preset), so a dozen targets solve in ~0.15 s.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from functools import cache

import torch

from .config import TREE_DEPTHS, HiIRConfig
from .networks import NETWORKS
from .presets import PRESETS

# ---------------------------------------------------------------------------------------------
# helpers: parameter counts without building anything

_SIZE = re.compile(r"(?P<num>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)\s*(?P<unit>[kmbg]?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


def parse_size(value: str | float | int) -> int:
    """A parameter count written as `30M`, `0.05M`, `500k`, `1.2B`, `2e6` or a number -> int."""
    match = _SIZE.fullmatch(str(value).strip().replace("_", ""))
    size = float(match["num"]) * _UNITS[match["unit"].lower()] if match else math.nan
    if not size >= 1:  # also NaN
        raise ValueError(f"bad parameter count {value!r}: write a positive count like 30M, 0.05M, 500k, 1.2B or 2e6")
    return round(size)


def format_size(count: float) -> str:
    """A parameter count for people: 14.74M, 0.12M, 1.2B (M from 10k up, as the preset table)."""
    return f"{count / 1e9:.4g}B" if count >= 1e9 else f"{count / 1e6:.4g}M" if count >= 1e4 else f"{count:g}"


def _linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + o * bias


def _conv(i: int, o: int, k: int, groups: int = 1) -> int:
    return i // groups * o * k * k + o


_STAGE_CONVS = {
    "conv1": lambda c: _conv(c, c, 3),
    "conv3": lambda c: _conv(c, c // 4, 3) + _conv(c // 4, c // 4, 1) + _conv(c // 4, c, 3),
    "linear": lambda c: _linear(c, c),
}


def _flow(cfg: HiIRConfig, c: int, heads: int, qk: int, proj: bool) -> int:
    """FlowAttention: qkv, the position-bias MLP, a cosine logit scale, the output projection."""
    n = _linear(c, 2 * qk + c, cfg.qkv_bias) + _linear(2, cfg.cpb_hidden) + _linear(cfg.cpb_hidden, heads, False)
    return n + heads * (cfg.attention == "cosine") + _linear(c, c) * proj


def _layer(cfg: HiIRConfig, c: int, heads: int, index: int) -> int:
    """One layer (layer.py): its attention flows, norms and FFN (`TREE_DEPTHS`: L3's conv FFN, with its
    depthwise 3x3, at ffn_ratio; at depth 2 a plain MLP at mlp_ratio)."""
    tree = TREE_DEPTHS[cfg.tree_depth]
    levels, norm, hidden = len(tree.attention), 2 * c, int(c * getattr(cfg, tree.ratio))
    if cfg.layout == "v3":
        attn = levels * _flow(cfg, c, heads, c // 2, proj=False) + _linear(c, c) + norm
    else:  # v2: every level in every layer; v1: l1 on even layers, the dispersed levels on odd ones
        n = levels if cfg.layout == "v2" else 1 if index % 2 == 0 else levels - 1
        attn = n * (_flow(cfg, c, heads, c, proj=True) + norm)
    ffn = _linear(c, hidden) + _linear(hidden, c) + _conv(hidden, hidden, 3, groups=hidden) * (tree.ffn == "conv")
    return attn + ffn + norm


def count_params(cfg: HiIRConfig) -> int:
    """Exact parameter count of `build(cfg)`, without building it (analytic for columnar
    configs; the U-shape is built on the meta device, without μP's rescaling, which moves no count)."""
    if cfg.arch != "columnar":
        with torch.device("meta"):
            return NETWORKS[cfg.arch](cfg).num_params()
    c, ch, stage_conv = cfg.dim, cfg.in_channels, _STAGE_CONVS[cfg.stage_conv]
    n = _conv(ch, c, 3) + 2 * c + stage_conv(c)  # conv_first, the body-end norm and stage conv
    for layers, heads in zip(cfg.per_stage("layers_per_stage"), cfg.per_stage("heads")):
        pair = _layer(cfg, c, heads, 0) + _layer(cfg, c, heads, 1)  # v1 alternates, v2/v3 repeat
        n += layers // 2 * pair + layers % 2 * _layer(cfg, c, heads, 0) + stage_conv(c)
    if cfg.scale == 1:
        return n + _conv(c, ch, 3)
    w, steps = cfg.upsampler_dim, {2: [2], 3: [3], 4: [2, 2]}[cfg.scale]
    return n + _conv(c, w, 3) + sum(_conv(w, s * s * w, 3) for s in steps) + _conv(w, ch, 3)


# ---------------------------------------------------------------------------------------------
# families


@dataclass(frozen=True)
class Family:
    """A base config plus its shape rule (the module docstring states both rules in words)."""

    name: str
    base: HiIRConfig                   # the anchor: width C0, depth d0 x d0, everything else
    depths: tuple[int, ...]            # the depth leg: d x d stages x layers, d0 first
    params_range: tuple[float, float]  # where every target is met within 5% (tested)
    cpb_per_width: float               # cpb_hidden = this * C, a multiple of 8 ...
    cpb_bounds: tuple[int, int]        # ... within these bounds
    upsampler_bounds: tuple[int, int]  # upsampler_dim = C within these bounds
    path: str                          # one line: what grows, in which order
    head_width: int = 32               # heads make C / heads nearest this ...
    head_band: tuple[int, int] = (16, 64)  # ... and a width is usable with C / heads in this band
    single_head_max: int = 96          # or with one head up to this width

    def heads_for(self, dim: int) -> int | None:
        """Heads at width `dim`: the divisor of gcd(C, C // 2) whose head width is nearest
        `head_width` (ties: more heads); None when the width is not usable. v3's condition,
        also for v1/v2 (which need only heads | C), so a layout override keeps the heads."""
        g = math.gcd(dim, dim // 2)
        heads = min((h for h in range(1, g + 1) if g % h == 0),
                    key=lambda h: (abs(math.log(dim / h / self.head_width)), -h))
        lo, hi = self.head_band
        return heads if lo <= dim / heads <= hi or (heads == 1 and dim <= self.single_head_max) else None

    def head_miss(self, dim: int) -> float:
        """|log(head width / aim)| at a usable width: how far its heads are from the rule's aim."""
        return abs(math.log(dim / self.heads_for(dim) / self.head_width))

    def shape(self, base: HiIRConfig, dim: int, depth: int) -> HiIRConfig:
        """`base` at width `dim` and depth `depth` x `depth`, with the rule's heads and hidden widths."""
        (c_lo, c_hi), (u_lo, u_hi) = self.cpb_bounds, self.upsampler_bounds
        cpb = min(max(8 * round(self.cpb_per_width * dim / 8), c_lo), c_hi)
        return dataclasses.replace(base, dim=dim, heads=self.heads_for(dim), stages=depth,
                                   layers_per_stage=depth, cpb_hidden=cpb, upsampler_dim=min(max(dim, u_lo), u_hi))

    def follows(self, cfg: HiIRConfig) -> bool:
        """Whether `cfg`'s width-following fields (heads, cpb_hidden, upsampler_dim) are this rule's at its width
        and depth, as in every config `solve` gives: μP's base model is then this family at the base width."""
        return (cfg.arch == "columnar" and cfg.stages == cfg.layers_per_stage and self.heads_for(cfg.dim) is not None
                and self.shape(cfg, cfg.dim, cfg.stages) == cfg)

    def describe(self) -> str:
        """The rule in a few lines (what `hiir models --family` prints above its table)."""
        b, (lo, hi) = self.base, self.head_band
        (c_lo, c_hi), (u_lo, u_hi) = self.cpb_bounds, self.upsampler_bounds
        cpb = f"{c_lo}" if c_lo == c_hi else f"{self.cpb_per_width:.3g}C in {c_lo}..{c_hi}"
        upsampler = f"{u_lo}" if u_lo == u_hi else f"C in {u_lo}..{u_hi}"
        return "\n".join([
            f"family {self.name}: {self.path}",
            f"  heads: head width nearest {self.head_width}, within {lo}..{hi} "
            f"(one head up to C={self.single_head_max}); widths: any usable one (odd ones with one head), "
            f"so the count is within 5% "
            f"from {format_size(self.params_range[0])} to {format_size(self.params_range[1])}",
            f"  cpb_hidden {cpb}, upsampler {upsampler}; fixed: window {b.window}, "
            f"patch {b.patch}, ffn {b.ffn_ratio:g}, {b.stage_conv}, {b.layout}, tree depth {b.tree_depth}"])


FAMILIES: dict[str, Family] = {
    "b": Family(
        name="b", base=PRESETS["b_x2_conv3"].replace(paper_params=None), depths=tuple(range(6, 13)),
        params_range=(0.5e6, 1000e6), cpb_per_width=512 / 180, cpb_bounds=(32, 512), upsampler_bounds=(1, 64),
        path="width at 6x6 up to B (C=180); depth 6x6 -> 12x12 at C~180 (B -> L); width at 12x12 "
             "(L -> XL at C=256, and on)"),
    "tiny": Family(
        name="tiny", base=PRESETS["tiny_x2"], depths=(2,),
        # cpb_hidden and the upsampler fixed at every width: the module docstring says why (μP's roles)
        params_range=(0.05e6, 50e6), cpb_per_width=0.0, cpb_bounds=(64, 64), upsampler_bounds=(32, 32),
        path="width at 2x2 all the way (on 2 CPU cores, width costs less time per parameter than depth)"),
}

# Among the usable widths within this of the target (|log ratio|), the one whose heads are nearest
# the aim wins; when none is this close, the nearest count does. It halves the off-aim heads.
TIE_TOLERANCE = 0.03
MAX_MISS = 0.05  # solve() refuses a target it would miss by more than 5% (outside the family's range)
# What `Family.shape` sets: an override would be silently replaced, so solve() refuses it.
SOLVED_FIELDS = ("dim", "heads", "stages", "layers_per_stage", "cpb_hidden", "upsampler_dim")


@dataclass(frozen=True)
class Solved:
    """What `solve` returns: the config, the target and the count the config achieves."""

    config: HiIRConfig
    family: str
    target: int
    achieved: int
    rule_note: str  # the leg of the rule the config sits on

    @property
    def error(self) -> float:
        """achieved / target - 1."""
        return self.achieved / self.target - 1

    def row(self) -> dict:
        """A flat summary for tables and JSON."""
        cfg = self.config
        return {"family": self.family, "target": self.target, "achieved": self.achieved,
                "error_pct": round(100 * self.error, 2), "dim": cfg.dim, "stages": cfg.stages,
                "layers_per_stage": cfg.layers_per_stage, "heads": cfg.heads, "head_width": cfg.dim // cfg.heads,
                "window": cfg.window, "patch": cfg.patch, "cpb_hidden": cfg.cpb_hidden,
                "upsampler_dim": cfg.upsampler_dim, "rule": self.rule_note}


def get_family(name: str | Family) -> Family:
    """A family by name; an unknown name is a one-line ValueError listing the families."""
    if isinstance(name, Family):
        return name
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


@cache
def _usable_widths(fam: Family, limit: int = 4096) -> tuple[int, ...]:
    return tuple(c for c in range(1, limit + 1) if fam.heads_for(c))


def _miss(count: int, target: int) -> float:
    return abs(math.log(count / target))


def solve(family: str | Family, params: str | float | int, **overrides) -> Solved:
    """The config of `family` whose parameter count is nearest `params` (`30M`, `0.05M`, 2e6 ...).

    `overrides` (scale, stage_conv, attention, tree_depth, layout, ffn_ratio, window, ...) are
    applied to the family's base first, since they move the count. Raises ValueError for a
    target the family misses by more than 5% (outside its range).
    """
    fam, target = get_family(family), parse_size(params)
    taken = sorted(set(overrides) & set(SOLVED_FIELDS))
    if taken:
        raise ValueError(f"{', '.join(taken)} is set by the size rule of family {fam.name!r}; "
                         f"override only what the rule keeps (scale, stage_conv, attention, ...)")
    base = fam.base.replace(**overrides)
    if base.arch != "columnar":
        raise ValueError(f"family {fam.name!r} is columnar; arch={base.arch!r} has no size family")
    widths, c0, first, last = _usable_widths(fam), base.dim, fam.depths[0], fam.depths[-1]
    anchors = {d: count_params(fam.shape(base, c0, d)) for d in fam.depths}
    if target <= anchors[first]:
        depth, note = first, f"width leg at {first}x{first}, C <= {c0}"
    elif target >= anchors[last]:
        depth, note = last, f"width leg at {last}x{last}, C >= {c0}"
    else:
        depth = min(anchors, key=lambda d: _miss(anchors[d], target))
        note = f"depth leg: {depth}x{depth} (nearest square at C={c0}), C fine-tunes"

    def count(i: int) -> int:
        return count_params(fam.shape(base, widths[i], depth))

    lo, hi = 0, len(widths) - 1  # counts rise with the width: bisect, then weigh the neighbours
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= target else (lo, mid)
    near = {i: count(i) for i in range(max(lo - 4, 0), min(hi + 5, len(widths)))}
    best_miss = min(_miss(n, target) for n in near.values())
    nearest = min(near.values(), key=lambda n: _miss(n, target))
    if abs(nearest / target - 1) > MAX_MISS:
        raise ValueError(f"family {fam.name!r} cannot reach {format_size(target)} within 5% (nearest: "
                         f"{format_size(nearest)}); its range is {format_size(fam.params_range[0])} to "
                         f"{format_size(fam.params_range[1])}")
    close = [i for i, n in near.items() if _miss(n, target) <= max(best_miss, TIE_TOLERANCE)]
    best = min(close, key=lambda i: (fam.head_miss(widths[i]), _miss(near[i], target)))
    return Solved(fam.shape(base, widths[best], depth), fam.name, target, near[best], note)
