"""Inference helpers: tiled inference for large images and the x8 self-ensemble.

Both take float images (B, C, h, w) in [0, 1] and return (B, C, h*scale, w*scale).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .networks import pad_reflect


def _ramp(n: int, overlap: int, left: bool, right: bool) -> torch.Tensor:
    """1-D blending weight of a tile of n pixels. On a side that meets another tile, the
    weight is 0 over the outer quarter of the overlap, then a linear cross-fade over its
    middle half (two neighbours' weights sum to 1 there); 1 elsewhere. So a pixel is only
    taken from tiles where it lies at least overlap/4 inside."""
    d = torch.arange(n, dtype=torch.float32) + 0.5  # distance from the left edge
    w = torch.ones(n)
    if overlap > 0:
        fade = lambda dist: ((dist - overlap / 4) / (overlap / 2)).clamp(0, 1)  # noqa: E731
        if left:
            w = torch.minimum(w, fade(d))
        if right:
            w = torch.minimum(w, fade(n - d))
    return w


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis: every `stride`, plus a last tile flush with the end."""
    starts = list(range(0, max(size - tile, 0) + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def check_tiling(multiple: int, tile: int, overlap: int) -> None:
    """Raise ValueError unless tiles of `tile` px overlapping by `overlap` line up with the model's grid."""
    if tile % multiple or overlap % multiple or not 0 <= overlap < tile:
        raise ValueError(f"tile={tile} and overlap={overlap} must be multiples of the model's pad multiple "
                         f"{multiple} (its largest patch), with 0 <= overlap < tile")


@torch.no_grad()
def tiled_forward(model: nn.Module, x: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Run `model` on overlapping tiles of `x` and cross-fade the seams.

    `tile` and `overlap` are in input pixels and must be multiples of `model.pad_multiple`
    (the largest patch), so that every tile's windows and patches line up with the grid of
    the whole image. Each output pixel comes from tiles where it lies at least overlap/4
    inside, so where the network's receptive field is smaller than that, the result matches
    `model(x)` exactly; with a deeper network, take a larger overlap.
    """
    m = model.pad_multiple
    check_tiling(m, tile, overlap)
    h, w = x.shape[-2:]
    s = model.config.scale
    x = pad_reflect(x, m)
    H, W = x.shape[-2:]
    if H <= tile and W <= tile:
        return model(x)[..., : h * s, : w * s]
    out = x.new_zeros(x.shape[0], x.shape[1], H * s, W * s)
    weight = x.new_zeros(1, 1, H * s, W * s)
    ys, xs = _starts(H, tile, tile - overlap), _starts(W, tile, tile - overlap)
    for y0 in ys:
        for x0 in xs:
            th, tw = min(tile, H), min(tile, W)
            pred = model(x[..., y0: y0 + th, x0: x0 + tw])
            wy = _ramp(th * s, overlap * s, y0 > 0, y0 + th < H)
            wx = _ramp(tw * s, overlap * s, x0 > 0, x0 + tw < W)
            wt = (wy[:, None] * wx[None, :]).to(pred)
            out[..., y0 * s: (y0 + th) * s, x0 * s: (x0 + tw) * s] += pred * wt
            weight[..., y0 * s: (y0 + th) * s, x0 * s: (x0 + tw) * s] += wt
    return (out / weight)[..., : h * s, : w * s]


@torch.no_grad()
def self_ensemble(model: nn.Module, x: torch.Tensor,
                  forward_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """x8 self-ensemble: the mean over the 8 flips/rotations (the dihedral group), each
    mapped back. `forward_fn(model, x)` defaults to `model(x)`; pass a `tiled_forward`
    partial for large images."""
    forward_fn = forward_fn or (lambda mdl, t: mdl(t))
    total = None
    for flip in (False, True):
        for k in range(4):
            t = torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))
            y = torch.rot90(forward_fn(model, t), -k, dims=(-2, -1))
            y = y.flip(-1) if flip else y
            total = y if total is None else total + y
    return total / 8
