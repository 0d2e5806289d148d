"""Restore image files with exported weights (`hiir restore`). Output is written atomically."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from hiir.data_prep import DatasetError, load_image
from hiir.data_prep.files import atomic_path
from hiir.platform.errors import HiirError
from hiir.platform.evaluation.evaluate import restore_array
from hiir.platform.evaluation.metrics import to_uint8


def restore_files(model: nn.Module, path: Path, out_dir: Path, *, tile: int = 0, overlap: int = 16,
                  self_ensemble: bool = False) -> Path:
    """Restore one image file into `out_dir/<stem>.png`. The image is read as training data is
    (`data_prep.load_image`: 16-bit scaled to 8, alpha dropped, decompression bombs refused)."""
    try:
        lq = load_image(path)
    except DatasetError as exc:
        raise HiirError(str(exc)) from None
    if model.config.in_channels == 1:
        lq = np.asarray(Image.fromarray(lq).convert("L"))[..., None]
    out = to_uint8(restore_array(model, lq, tile=tile, overlap=overlap, self_ensemble=self_ensemble))
    target = out_dir / (path.stem + ".png")
    with atomic_path(target) as tmp:
        Image.fromarray(out[..., 0] if out.shape[-1] == 1 else out).save(tmp, format="PNG")
    return target
