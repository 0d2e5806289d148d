"""Restoring images with exported weights: the one implementation behind `hiir restore` (files in, PNG files
out, written atomically) and the MLflow model (encoded bytes in, PNG bytes out; `evaluation.mlflow_model`).

An image is read as training data is (`data_prep.load_image`: 16-bit scaled to 8, alpha dropped,
decompression bombs refused), restored whole or tiled (`evaluate.restore_array`), rounded to uint8 and
encoded as PNG, so both paths give the same bytes for the same image.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from hiir.data_prep import DatasetError, load_image
from hiir.data_prep.files import atomic_path
from hiir.platform.errors import HiirError
from hiir.platform.evaluation.evaluate import restore_array
from hiir.platform.evaluation.metrics import to_uint8


class _Encoded(io.BytesIO):
    """Encoded image bytes that `load_image`'s errors name like a file (`image row 3 is unreadable ...`)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label


def read_image(source: Path | bytes, channels: int, *, name: str = "") -> np.ndarray:
    """A file, or an encoded image's bytes (`name` labels it in errors), as uint8 HxWxC: RGB, or grey for a
    1-channel model."""
    try:
        lq = load_image(_Encoded(source, name or "bytes") if isinstance(source, bytes) else source)
    except DatasetError as exc:
        raise HiirError(str(exc)) from None
    if channels == 1:
        lq = np.asarray(Image.fromarray(lq).convert("L"))[..., None]
    return lq


def restore_image(model: nn.Module, lq: np.ndarray, *, tile: int = 0, overlap: int = 16,
                  self_ensemble: bool = False) -> np.ndarray:
    """uint8 HxWxC -> the restored uint8 (H*scale)x(W*scale)xC: whole, or in tiles when a side exceeds `tile`."""
    return to_uint8(restore_array(model, lq, tile=tile, overlap=overlap, self_ensemble=self_ensemble))


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def restore_files(model: nn.Module, path: Path, out_dir: Path, *, tile: int = 0, overlap: int = 16,
                  self_ensemble: bool = False) -> Path:
    """Restore one image file into `out_dir/<stem>.png`."""
    out = restore_image(model, read_image(path, model.config.in_channels), tile=tile, overlap=overlap,
                        self_ensemble=self_ensemble)
    target = out_dir / (path.stem + ".png")
    with atomic_path(target) as tmp:
        tmp.write_bytes(encode_png(out))
    return target
