"""The information flows of one Hi-IR layer: L1 window attention, L2 dispersed attention, L3 FFN.

Tokens are (B, H, W, C) throughout; NCHW exists only inside convolutions (`to_nchw`/`to_nhwc`).
Alphabet of the partition patterns: b batch, c channels, h heads, d head width,
p = window side (p1 rows, p2 cols), g = P/p (g1, g2), nh/nw = patches along H/W,
r = H/g for the image-wide grid.

    L1 window     'b (nh g1 p1) (nw g2 p2) c' -> groups (b nh nw g1 g2), attends over (p1 p2)
    L2 disperse   'b (nh g1 p1) (nw g2 p2) c' -> groups (b nh nw p1 p2), attends over (g1 g2)

The two patterns differ only in which axes form the group: L2 is a reshape plus a
permutation, never a gather, and it is bounded by P. The `mixer_l2` variants that can fill
the L2 slot instead (none, shift, grid, random) live in `MIXERS`.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# ---------------------------------------------------------------------------------------------
# helpers

# Each partition is a named pair: the split and, beside it, its mirror.
WINDOW_SPLIT = "b (nh g1 p1) (nw g2 p2) (h d) -> (b nh nw g1 g2) h (p1 p2) d"
WINDOW_MERGE = "(b nh nw g1 g2) h (p1 p2) d -> b (nh g1 p1) (nw g2 p2) (h d)"
DISPERSE_SPLIT = "b (nh g1 p1) (nw g2 p2) (h d) -> (b nh nw p1 p2) h (g1 g2) d"
DISPERSE_MERGE = "(b nh nw p1 p2) h (g1 g2) d -> b (nh g1 p1) (nw g2 p2) (h d)"
GRID_SPLIT = "b (g1 r1) (g2 r2) (h d) -> (b r1 r2) h (g1 g2) d"
GRID_MERGE = "(b r1 r2) h (g1 g2) d -> b (g1 r1) (g2 r2) (h d)"


def window_partition(x: torch.Tensor, window: int, heads: int = 1) -> torch.Tensor:
    """(B, H, W, h*d) -> (B * H/p * W/p, h, p*p, d): the p x p windows."""
    return rearrange(x, WINDOW_SPLIT, g1=1, g2=1, p1=window, p2=window, h=heads)


def window_merge(x: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """(B * H/p * W/p, h, p*p, d) -> (B, H, W, h*d); the mirror of `window_partition`."""
    p = math.isqrt(x.shape[2])
    return rearrange(x, WINDOW_MERGE, b=batch, g1=1, g2=1, p1=p, nh=height // p, nw=width // p)


def disperse(x: torch.Tensor, window: int, patch: int, heads: int = 1) -> torch.Tensor:
    """(B, H, W, h*d) -> (B * H/P * W/P * p*p, h, (P/p)^2, d): per P x P patch, the tokens
    that share the same offset inside their p x p window."""
    g = patch // window
    return rearrange(x, DISPERSE_SPLIT, g1=g, g2=g, p1=window, p2=window, h=heads)


def undisperse(x: torch.Tensor, batch: int, height: int, width: int, window: int) -> torch.Tensor:
    """(B * H/P * W/P * p*p, h, (P/p)^2, d) -> (B, H, W, h*d); the mirror of `disperse`."""
    g = math.isqrt(x.shape[2])
    return rearrange(x, DISPERSE_MERGE, b=batch, g1=g, p1=window, p2=window,
                     nh=height // (g * window), nw=width // (g * window))


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W), for a convolution: a view, channels-last in memory."""
    return x.permute(0, 3, 1, 2)


def to_nhwc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C), back to tokens, contiguous: free for a channels-last conv output
    (the usual case); a copy otherwise (a conv on the NCHW image), without which the whole residual
    stream would stay strided and every linear layer, norm and add on it would pay."""
    return x.permute(0, 2, 3, 1).contiguous()


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
           scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v in every group: q, k (N, h, L, dq), v (N, h, L, dv) -> (N, h, L, dv).

    `bias` is (G, h, L, L) for the G groups of one image (G = 1: one bias for every group), the same
    for each of the N / G images. Runs `scaled_dot_product_attention`, except on the CPU where SDPA
    would take its math path anyway (no fused CPU kernel takes a bias that needs a gradient, or q/k
    narrower than v): there it is written out, without SDPA's checks for fully masked rows, which a
    finite additive bias never has, and without repeating a per-window bias over the images.
    """
    G = bias.shape[0]
    needs_math = q.shape[-1] != v.shape[-1] or (bias.requires_grad and torch.is_grad_enabled())
    if q.device.type != "cpu" or not needs_math:
        mask = bias.repeat(q.shape[0] // G, 1, 1, 1) if G > 1 else bias
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q * scale).unflatten(0, (-1, G)) @ k.unflatten(0, (-1, G)).transpose(-2, -1)  # B, G, h, L, L
    attn = attn.add_(bias).softmax(dim=-1)
    return (attn @ v.unflatten(0, (-1, G))).flatten(0, 1)


@functools.lru_cache(maxsize=4)
def shift_mask(height: int, width: int, window: int, shift: int, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """SwinIR's attention mask after a cyclic shift, (H/p * W/p, L, L): 0 within a region of the
    rolled image, -100 across regions. One cache for every layer, bounded: the masks of the four
    image sizes used last (a 1024^2 image's takes 256 MB)."""
    p, s = window, shift
    with torch.inference_mode(False):  # a plain tensor, which training may use after an eval filled the cache
        img = torch.zeros(1, height, width, 1, device=device)
        cuts = (slice(0, -p), slice(-p, -s), slice(-s, None))
        for i, (hs, ws) in enumerate((hs, ws) for hs in cuts for ws in cuts):
            img[:, hs, ws, :] = i
        ids = window_partition(img, p).flatten(1)  # (nW, L)
        diff = ids.unsqueeze(1) - ids.unsqueeze(2)
        return torch.zeros_like(diff, dtype=dtype).masked_fill(diff != 0, -100.0)


# ---------------------------------------------------------------------------------------------
# partitions: the L1 window and every variant that can fill the L2 slot (`mixer_l2`)
# Each is a parameter-free module: split(t, heads) -> (groups (N, h, L, d), ctx), merge(o, ctx),
# `grid` (the group is a grid x grid square, for the position bias), attn_bias(bias, ctx) -> the
# additive bias of one image's groups, (G, h, L, L) with G = 1 when every group has the same.


class Window(nn.Module):
    """L1: non-overlapping p x p windows, no shift, no mask. Also `mixer_l2='none'`."""

    def __init__(self, window: int, patch: int | None = None, seed: int = 0):
        super().__init__()
        self.window, self.grid, self.multiple = window, window, window

    def split(self, t, heads):
        B, H, W, _ = t.shape
        return window_partition(t, self.window, heads), (B, H, W)

    def merge(self, o, ctx):
        return window_merge(o, *ctx)

    def attn_bias(self, bias, ctx):  # (h, L, L) -> (1, h, L, L)
        return bias.unsqueeze(0)


class Disperse(nn.Module):
    """L2 (`mixer_l2='permute'`, Hi-IR): inside each P x P patch, the (P/p)^2 tokens that share
    their offset inside the p x p windows. Also the second dispersed level of tree depth 4,
    with (window, patch) = (P1, P2)."""

    def __init__(self, window: int, patch: int, seed: int = 0):
        super().__init__()
        self.window, self.patch, self.grid, self.multiple = window, patch, patch // window, patch

    def split(self, t, heads):
        B, H, W, _ = t.shape
        return disperse(t, self.window, self.patch, heads), (B, H, W)

    def merge(self, o, ctx):
        return undisperse(o, *ctx, window=self.window)

    attn_bias = Window.attn_bias


class ShiftedWindow(Window):
    """`mixer_l2='shift'` (SwinIR): p x p windows after a cyclic shift of p/2, with the mask
    that keeps regions that were not neighbours before the roll apart."""

    def __init__(self, window: int, patch: int | None = None, seed: int = 0):
        super().__init__(window)
        self.shift = window // 2

    def split(self, t, heads):
        t = torch.roll(t, shifts=(-self.shift, -self.shift), dims=(1, 2))
        return super().split(t, heads)

    def merge(self, o, ctx):
        return torch.roll(super().merge(o, ctx), shifts=(self.shift, self.shift), dims=(1, 2))

    def attn_bias(self, bias, ctx):  # (h, L, L) + mask (nW, L, L) -> (nW, h, L, L)
        B, H, W = ctx
        return self.mask(H, W, bias.device, bias.dtype).unsqueeze(1) + bias.unsqueeze(0)

    def mask(self, H: int, W: int, device, dtype) -> torch.Tensor:
        """SwinIR's attention mask, (nW, L, L), from the cache that all layers share."""
        return shift_mask(H, W, self.window, self.shift, torch.device(device), dtype)


class Grid(nn.Module):
    """`mixer_l2='grid'` (Shuffle Transformer): an image-wide dilated grid. Groups of
    (P/p)^2 tokens (the size of an L2 group) spaced H/g and W/g apart, so the spacing grows
    with the image instead of staying inside P."""

    def __init__(self, window: int, patch: int, seed: int = 0):
        super().__init__()
        self.grid = self.multiple = patch // window

    def split(self, t, heads):
        B, H, W, _ = t.shape
        return rearrange(t, GRID_SPLIT, g1=self.grid, g2=self.grid, h=heads), (B, H, W)

    def merge(self, o, ctx):
        B, H, W = ctx
        return rearrange(o, GRID_MERGE, b=B, g1=self.grid, r1=H // self.grid, r2=W // self.grid)

    attn_bias = Window.attn_bias


class RandomShuffle(Window):
    """`mixer_l2='random'` (ShuffleFormer): a random permutation of all H*W positions, then
    p x p windows. A new permutation per forward in training (from torch's global RNG, so
    `torch.manual_seed` makes it reproducible and activation checkpointing replays it); a
    fixed one, from `seed`, in eval. This is the only variant that needs a gather."""

    def __init__(self, window: int, patch: int | None = None, seed: int = 0):
        super().__init__(window)
        self.seed = seed

    def split(self, t, heads):
        B, H, W, C = t.shape
        perm = self.permutation(H * W, t.device)
        t = t.reshape(B, H * W, C).index_select(1, perm).reshape(B, H, W, C)
        groups, ctx = super().split(t, heads)
        return groups, (ctx, perm)

    def merge(self, o, ctx):
        ctx, perm = ctx
        B, H, W = ctx
        t = super().merge(o, ctx)
        return t.reshape(B, H * W, -1).index_select(1, torch.argsort(perm)).reshape(B, H, W, -1)

    def attn_bias(self, bias, ctx):
        return bias.unsqueeze(0)

    def permutation(self, n: int, device) -> torch.Tensor:
        if self.training:  # drawn on the device itself: no host round trip per layer on a GPU
            return torch.randperm(n, device=device)
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).to(device)


MIXERS: dict[str, type[nn.Module]] = {
    "permute": Disperse, "none": Window, "shift": ShiftedWindow, "grid": Grid, "random": RandomShuffle,
}


def make_mixer(name: str, window: int, patch: int, seed: int = 0) -> nn.Module:
    if name not in MIXERS:
        raise ValueError(f"mixer_l2={name!r} is not one of {', '.join(MIXERS)}")
    return MIXERS[name](window, patch, seed)


# ---------------------------------------------------------------------------------------------
# attention


class ContinuousPositionBias(nn.Module):
    """Swin-V2 continuous position bias over a grid x grid group: a 2-layer MLP over
    log-spaced relative coordinates, 16 * sigmoid. Returns (heads, grid^2, grid^2).
    In eval without grad it depends on the weights alone: computed once, and again only when
    they change (in place or replaced) or after `train()`."""

    def __init__(self, grid: int, heads: int, hidden: int = 512):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, heads, bias=False))
        r = torch.arange(-(grid - 1), grid, dtype=torch.float32)
        table = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1) / max(grid - 1, 1) * 8  # (2g-1, 2g-1, 2)
        table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
        pos = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")).flatten(1)  # 2, L
        rel = (pos[:, :, None] - pos[:, None, :]).permute(1, 2, 0) + (grid - 1)  # L, L, 2
        self.register_buffer("coords_table", table.reshape(-1, 2), persistent=False)
        self.register_buffer("index", rel[..., 0] * (2 * grid - 1) + rel[..., 1], persistent=False)
        self._cached: tuple | None = None  # eval only: (key of the weights, bias)

    def forward(self) -> torch.Tensor:
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self.compute()
        device = self.coords_table.device.type
        key = (tuple((p.data_ptr(), p._version, p.dtype) for p in self.parameters()), device,
               torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self.compute())
        return self._cached[1]

    def compute(self) -> torch.Tensor:
        # DeepSpeed's bf16 casts parameters but not buffers: follow the MLP's dtype.
        table = self.mlp(self.coords_table.to(self.mlp[0].weight.dtype))  # ((2g-1)^2, h)
        return (16 * torch.sigmoid(table)).t()[:, self.index]  # h, L, L: gathered after the sigmoid

    def train(self, mode: bool = True):
        self._cached = None
        return super().train(mode)


class DotSimilarity(nn.Module):
    """q.k scaled by d^-0.5 (SDPA's default), or under μP by sqrt(d_base) / d (`scale`, set by models/mup.py)."""

    scale: float | None = None  # μP away from its base width: q.k grows like d in training (q and k correlate)

    def __init__(self, heads: int):
        super().__init__()

    def forward(self, q, k):
        return q, k, self.scale


class CosineSimilarity(nn.Module):
    """cos(q, k) times a learnable per-head logit scale (init log 10, clamped at log 100)."""

    def __init__(self, heads: int):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.full((heads, 1, 1), math.log(10.0)))

    def forward(self, q, k):
        scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        return F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1), 1.0


SIMILARITIES: dict[str, type[nn.Module]] = {"dot": DotSimilarity, "cosine": CosineSimilarity}


class FlowAttention(nn.Module):
    """Multi-head self-attention inside the groups of `partition`; (B, H, W, C) -> (B, H, W, C).

    q and k are `qk_dim` wide (C/2 in the unified v3 layer), v is C wide. The position bias
    enters `scaled_dot_product_attention` as an additive mask. `proj=False` leaves out the
    output projection (v3 chains L1 into L2 with no projection between them).
    """

    def __init__(self, dim: int, heads: int, partition: nn.Module, attention: str = "dot",
                 qk_dim: int | None = None, proj: bool = True, cpb_hidden: int = 512, qkv_bias: bool = True):
        super().__init__()
        qk_dim = qk_dim or dim
        assert dim % heads == 0 and qk_dim % heads == 0, f"heads={heads} must divide dim={dim} and qk_dim={qk_dim}"
        if attention not in SIMILARITIES:
            raise ValueError(f"attention={attention!r} is not one of {', '.join(SIMILARITIES)}")
        self.heads, self.dq = heads, qk_dim // heads
        self.partition = partition
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=qkv_bias)  # per head: [q | k | v]
        self.sim = SIMILARITIES[attention](heads)
        self.cpb = ContinuousPositionBias(partition.grid, heads, cpb_hidden)
        self.proj = nn.Linear(dim, dim) if proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        groups, ctx = self.partition.split(self.qkv(x), self.heads)  # N, h, L, 2dq+dv
        q, k, v = groups.split([self.dq, self.dq, groups.shape[-1] - 2 * self.dq], dim=-1)
        q, k, scale = self.sim(q, k)
        bias = self.partition.attn_bias(self.cpb().to(q.dtype), ctx)  # G, h, L, L
        out = attend(q, k, v, bias, scale)  # N, h, L, dv
        return self.proj(self.partition.merge(out, ctx))


class WindowAttention(FlowAttention):
    """L1 window flow: attention inside non-overlapping p x p windows."""

    def __init__(self, dim: int, heads: int, window: int, attention: str = "dot", **kwargs):
        super().__init__(dim, heads, Window(window), attention, **kwargs)


class DispersedAttention(FlowAttention):
    """L2 dispersed flow: inside each P x P patch, attention among the tokens with the same
    offset in their p x p window. `mixer` swaps in a reviewer's alternative (see `MIXERS`)."""

    def __init__(self, dim: int, heads: int, window: int, patch: int, attention: str = "dot",
                 mixer: str = "permute", seed: int = 0, **kwargs):
        super().__init__(dim, heads, make_mixer(mixer, window, patch, seed), attention, **kwargs)


# ---------------------------------------------------------------------------------------------
# L3 and residual helpers


class ConvFFN(nn.Module):
    """L3 information-flow FFN: 1x1 (C -> rC), GELU, 3x3 depthwise, GELU, 1x1 (rC -> C).
    The depthwise 3x3 carries information across window and patch borders."""

    def __init__(self, dim: int, ratio: float = 3.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1, self.act = nn.Linear(dim, hidden), nn.GELU()
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):  # B, H, W, C
        x = self.act(self.fc1(x))
        x = self.act(to_nhwc(self.dwconv(to_nchw(x))))
        return self.fc2(x)


class Mlp(nn.Module):
    """Plain MLP (tree depth 2, no L3): Linear, GELU, Linear. No spatial reach: each token alone."""

    def __init__(self, dim: int, ratio: float = 2.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


FFNS: dict[str, type[nn.Module]] = {"conv": ConvFFN, "mlp": Mlp}  # by `TreeDepth.ffn` (config.TREE_DEPTHS)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability `p`."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)
