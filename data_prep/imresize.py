"""MATLAB-exact `imresize(img, scale, 'bicubic')` in vectorised numpy.

MATLAB (and BasicSR's `matlab_functions.imresize`, verified against MATLAB) resamples each
axis separately with Keys' cubic kernel (a = -0.5, support 4). When downscaling with
antialiasing the kernel is widened by 1/scale (and its height multiplied by scale). Output
pixel x (1-based) is centred at input coordinate u = x/scale + 0.5*(1 - 1/scale). Taps that
fall outside the image are mirrored symmetrically, repeating the edge pixel
(MATLAB's `aux = [1:n, n:-1:1]`), and each row of weights is normalised to sum to 1.
The output size is ceil(size*scale). PIL, OpenCV and torch `interpolate` all differ.
"""
from __future__ import annotations

import math

import numpy as np


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * (
        (ax > 1) & (ax <= 2)
    )


def output_length(in_length: int, scale: float) -> int:
    """ceil(in_length*scale), ignoring float noise such as 96*(1/3) = 32.000000000000004."""
    return math.ceil(round(in_length * scale, 9))


def resize_weights(in_length: int, out_length: int, scale: float, antialiasing: bool = True):
    """Taps of one axis: (weights, indices), both (out_length, p); indices are 0-based and in range.

    MATLAB's `contributions()`: kernel centres, widened kernel, symmetric border, normalisation.
    """
    kernel_width = 4.0
    widen = scale < 1 and antialiasing
    if widen:
        kernel_width /= scale
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # centre of output pixel x in input coordinates (1-based)
    left = np.floor(u - kernel_width / 2)
    p = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(p)[None, :]  # (out, p), 1-based, may leave [1, n]
    dist = u[:, None] - indices
    weights = scale * cubic(dist * scale) if widen else cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])  # symmetric padding
    indices = aux[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    keep = np.any(weights != 0, axis=0)  # MATLAB drops all-zero tap columns
    return weights[:, keep], indices[:, keep]


def _resize_axis(img: np.ndarray, axis: int, scale: float, antialiasing: bool) -> np.ndarray:
    """Resample one axis of a float64 array: a weighted sum over p taps, one gather per tap."""
    in_length = img.shape[axis]
    weights, indices = resize_weights(in_length, output_length(in_length, scale), scale, antialiasing)
    moved = np.moveaxis(img, axis, 0)  # (n, ...)
    shape = (-1,) + (1,) * (moved.ndim - 1)
    out = np.zeros((weights.shape[0],) + moved.shape[1:], dtype=np.float64)
    for k in range(weights.shape[1]):
        out += weights[:, k].reshape(shape) * moved[indices[:, k]]
    return np.moveaxis(out, 0, axis)


def imresize(img: np.ndarray, scale: float, antialiasing: bool = True) -> np.ndarray:
    """MATLAB `imresize(img, scale, 'bicubic')`: HxW or HxWxC, uint8 or float, returns float64.

    Values keep the input's range (uint8 in, 0..255 floats out); MATLAB's uint8 output is
    `np.clip(np.round(out), 0, 255).astype(np.uint8)` (see `degrade.to_uint8`). Rows are
    resized first, then columns, as MATLAB does when both scales are equal.
    """
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize takes HxW or HxWxC arrays, got shape {img.shape}")
    if scale <= 0:
        raise ValueError(f"imresize scale must be positive, got {scale}")
    out = np.asarray(img, dtype=np.float64)
    out = _resize_axis(out, 0, scale, antialiasing)
    return _resize_axis(out, 1, scale, antialiasing)
