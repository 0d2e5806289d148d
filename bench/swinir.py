"""SwinIR for classical SR (Liang et al., "SwinIR: Image Restoration Using Swin Transformer",
ICCVW 2021, arXiv 2108.10257): a bench-only comparator for Hi-IR-B, written from the paper's
description and its published classical-SR configuration.

    conv3x3 (3 -> C), LayerNorm (patch norm)
    -> 6 residual Swin transformer blocks (RSTB): 6 Swin layers, a 3x3 conv, a residual
    -> LayerNorm, 3x3 conv, long skip
    -> pixel-shuffle upsampler (conv to 64, LeakyReLU, conv + shuffle, conv to 3)

A Swin layer is pre-norm: x + attn(LN(x)), then x + MLP(LN(x)). Attention runs in p x p windows,
every second layer after a cyclic shift of p/2 with the mask that keeps regions which were not
neighbours before the roll apart (-100 across regions). The position bias is a learned table of
(2p-1)^2 entries per head, indexed by relative position (not Swin-V2's MLP). Similarity is
q.k * d^-0.5 written out (q @ k^T, + bias (+ mask), softmax, @ v), as the published network
computes it. The MLP is Linear, GELU, Linear at ratio 2. The input is shifted by the DIV2K mean.
Classical x2: C = 180, 6 x 6 layers, 6 heads, window 8, drop path 0.1: 11.75M parameters.

Tokens are (B, H, W, C), as in hiir.models; the window split/merge, the MLP, drop path and the
upsampler are hiir's own parts, which compute what SwinIR's do.
"""
from __future__ import annotations

import torch
from torch import nn

from hiir.models.flows import DropPath, Mlp, to_nchw, to_nhwc, window_merge, window_partition
from hiir.models.networks import PixelShuffleHead, pad_reflect

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


def shift_mask(H: int, W: int, window: int, shift: int) -> torch.Tensor:
    """(nW, L, L): 0 between tokens of the same region of the rolled image, -100 across regions."""
    ids = torch.zeros(1, H, W, 1)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, (hs, ws) in enumerate((hs, ws) for hs in cuts for ws in cuts):
        ids[:, hs, ws, :] = i
    ids = window_partition(ids, window).flatten(1)  # nW, L
    return (ids.unsqueeze(1) - ids.unsqueeze(2) != 0).float() * -100.0


class RelativePositionBias(nn.Module):
    """Swin's learned table: one bias per head and relative offset in a p x p window. -> (h, L, L)."""

    def __init__(self, window: int, heads: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        pos = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (pos[:, :, None] - pos[:, None, :]).permute(1, 2, 0) + (window - 1)  # L, L, 2
        self.register_buffer("index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)

    def forward(self) -> torch.Tensor:
        return self.table[self.index].permute(2, 0, 1)


class SwinAttention(nn.Module):
    """Window attention, shifted by `shift` (0 or p/2). (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, dim: int, heads: int, window: int, shift: int):
        super().__init__()
        self.heads, self.window, self.shift, self.scale = heads, window, shift, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.bias = RelativePositionBias(window, heads)
        self._mask: dict[tuple[int, int], torch.Tensor] = {}  # SwinIR keeps one per layer and size

    def mask(self, H: int, W: int, device) -> torch.Tensor:
        if (H, W) not in self._mask:
            self._mask[(H, W)] = shift_mask(H, W, self.window, self.shift).to(device)
        return self._mask[(H, W)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        q, k, v = window_partition(self.qkv(x), self.window, 3 * self.heads).chunk(3, dim=1)  # N, h, L, d
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.bias().unsqueeze(0)  # N, h, L, L
        if self.shift:
            nW = H * W // self.window**2
            attn = (attn.view(B, nW, self.heads, *attn.shape[-2:]) + self.mask(H, W, x.device).unsqueeze(1)
                    ).view(-1, self.heads, *attn.shape[-2:])
        out = self.proj(window_merge(attn.softmax(dim=-1) @ v, B, H, W))
        if self.shift:
            out = torch.roll(out, shifts=(self.shift, self.shift), dims=(1, 2))
        return out


class SwinLayer(nn.Module):
    """Pre-norm Swin transformer layer: window (or shifted-window) attention, then the MLP."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), SwinAttention(dim, heads, window, shift)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class RSTB(nn.Module):
    """Residual Swin transformer block: layers (shift on every second), a 3x3 conv, a residual."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, drop_path: list[float]):
        super().__init__()
        self.layers = nn.ModuleList(SwinLayer(dim, heads, window, (i % 2) * window // 2, mlp_ratio, drop_path[i])
                                    for i in range(depth))
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, H, W, C
        y = x
        for layer in self.layers:
            y = layer(y)
        return x + to_nhwc(self.conv(to_nchw(y)))


class SwinIR(nn.Module):
    """Classical SR SwinIR; (B, 3, h, w) in [0, 1] -> (B, 3, h*scale, w*scale)."""

    def __init__(self, scale: int = 2, dim: int = 180, depths: tuple[int, ...] = (6,) * 6, heads: int = 6,
                 window: int = 8, mlp_ratio: float = 2.0, drop_path: float = 0.1, upsampler_dim: int = 64):
        super().__init__()
        self.scale, self.window = scale, window
        self.register_buffer("mean", torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(3, dim, 3, padding=1)
        self.patch_norm = nn.LayerNorm(dim)
        rates = [drop_path * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]  # linear, as Swin
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.blocks = nn.ModuleList(RSTB(dim, d, heads, window, mlp_ratio, rates[s: s + d])
                                    for s, d in zip(starts, depths))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, padding=1)
        self.head = PixelShuffleHead(dim, 3, scale, upsampler_dim)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_reflect(x, self.window) - self.mean
        shallow = self.conv_first(x)
        y = self.patch_norm(to_nhwc(shallow))  # B, H, W, C
        for block in self.blocks:
            y = block(y)
        y = self.conv_after_body(to_nchw(self.norm(y))) + shallow
        out = self.head(y, x) + self.mean
        return out[..., : h * self.scale, : w * self.scale]
