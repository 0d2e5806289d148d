"""Restore image files with exported weights (`hiir restore`). Output is written atomically."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch import nn

from hiir.platform.errors import HiirError


def restore_files(model: nn.Module, path: Path, out_dir: Path, *, tile: int = 0, overlap: int = 16,
                  self_ensemble: bool = False) -> Path:
    from PIL import Image, UnidentifiedImageError

    from hiir.platform.evaluation.evaluate import restore_array
    from hiir.platform.evaluation.metrics import to_uint8

    try:
        with Image.open(path) as img:
            mode = "L" if model.config.in_channels == 1 else "RGB"
            lq = np.asarray(img.convert(mode))
    except (UnidentifiedImageError, OSError) as exc:
        raise HiirError(f"cannot read image {path}: {exc}") from None
    if lq.ndim == 2:
        lq = lq[..., None]
    out = to_uint8(restore_array(model, lq, tile=tile, overlap=overlap, self_ensemble=self_ensemble))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (path.stem + ".png")
    tmp = target.with_suffix(".png.tmp")
    Image.fromarray(out[..., 0] if out.shape[-1] == 1 else out).save(tmp, format="PNG")
    os.replace(tmp, target)
    return target
