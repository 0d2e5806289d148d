"""Sample strips for validation logging: `LQ | output | GT` side by side, as one uint8 image."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from hiir.data_prep.files import atomic_path
from hiir.platform.evaluation.metrics import to_uint8


def _strip_panel(img: np.ndarray, name: str) -> np.ndarray:
    """One panel as uint8 HxWx3: uint8 kept, float read on [0, 1] (BasicSR rounding), grey tripled."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name} must be uint8 or float on [0, 1], got dtype {arr.dtype}")
        arr = to_uint8(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name} must be HxW, HxWx1 or HxWx3, got shape {np.asarray(img).shape}")
    return arr


def plot_strip(
    lq: np.ndarray,
    out: np.ndarray,
    gt: np.ndarray,
    path: str | os.PathLike[str] | None,
) -> np.ndarray:
    """``LQ | output | GT`` side by side as one uint8 HxWx3 image (H, W of GT; width exactly 3W).

    Images are HxWx3 RGB (or grey, repeated to 3 channels), uint8 or float on [0, 1] (rounded as
    :func:`hiir.platform.evaluation.metrics.to_uint8`). LQ is upscaled to GT's size by nearest neighbour, so
    its pixels stay visible as blocks (pixel ``i`` of the result takes LQ pixel ``i * h // H``;
    for an integer scale this is plain pixel repetition). ``out`` must have GT's size. No
    separator is drawn between panels. With ``path``, the strip is also written as a PNG
    (atomically). Returns the strip.
    """
    lq_u = _strip_panel(lq, "lq")
    out_u = _strip_panel(out, "out")
    gt_u = _strip_panel(gt, "gt")
    if out_u.shape != gt_u.shape:
        raise ValueError(f"output and GT sizes differ: out {out_u.shape} vs gt {gt_u.shape}")
    big_h, big_w = gt_u.shape[:2]
    h, w = lq_u.shape[:2]
    if h > big_h or w > big_w:
        raise ValueError(f"LQ {lq_u.shape} is larger than GT {gt_u.shape}")
    rows = np.arange(big_h) * h // big_h
    cols = np.arange(big_w) * w // big_w
    lq_up = lq_u[rows][:, cols]
    strip = np.ascontiguousarray(np.concatenate([lq_up, out_u, gt_u], axis=1))
    if path is not None:
        with atomic_path(path) as tmp:
            Image.fromarray(strip).save(tmp, format="PNG")
    return strip
