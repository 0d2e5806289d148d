"""Stage 1: find the source images, pair GT with LQ, assign splits, and load one image as RGB uint8.

Every image becomes HxWx3 uint8 on load, deliberately:
- greyscale (L, 1-bit, LA) is repeated to 3 channels; palette (P) is expanded;
- RGBA / LA drop the alpha channel (as cv2.imread(IMREAD_COLOR) does in BasicSR);
- CMYK and YCbCr go through Pillow's conversion to RGB;
- 16-bit (I;16, I) is scaled to 8 bits with round(v / 257); float (F) in [0, 1] is scaled by 255.
Images larger than `max_pixels` are refused before decoding (decompression bombs).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hiir.data_prep.errors import DatasetError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_PIXELS = 1 << 28  # 268M pixels (16k x 16k); anything larger is refused as a decompression bomb


@dataclass(frozen=True)
class SourceImage:
    """One source image: its name (file stem), split, GT path and, for paired data, LQ path."""

    name: str
    split: str
    path: str
    lq_path: str | None = None


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"source folder {folder} does not exist or is not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DatasetError(f"source folder {folder} holds no images ({', '.join(IMAGE_EXTS)})")
    return files


def pair_images(gt_files: list[Path], lq_folder: str | Path) -> dict[str, Path]:
    """LQ file of each GT file, matched by stem; a GT without an LQ is an error naming both."""
    lq = {p.stem: p for p in list_images(lq_folder)}
    missing = [p for p in gt_files if p.stem not in lq]
    if missing:
        raise DatasetError(f"GT image {missing[0]} has no LQ image with the same name in {lq_folder}")
    return {p.stem: lq[p.stem] for p in gt_files}


def assign_splits(names: list[str], split: str, val_fraction: float, val_names, seed: int) -> dict[str, str]:
    """Split of each image name: all `split`, or for 'both' the held-out `val_names`
    (or else a seeded `val_fraction` of the images, at least one) go to val."""
    if split in ("train", "val"):
        return {n: split for n in names}
    if split != "both":
        raise DatasetError(f"split must be train, val or both, got {split!r}")
    if val_names:
        unknown = sorted(set(val_names) - set(names))
        if unknown:
            raise DatasetError(f"val image {unknown[0]!r} is not among the source images")
        val = set(val_names)
    else:
        k = max(1, round(len(names) * val_fraction))
        if k >= len(names):
            raise DatasetError(f"val_fraction {val_fraction} leaves no training image out of {len(names)}")
        val = set(np.random.default_rng(seed).choice(sorted(names), size=k, replace=False).tolist())
    return {n: ("val" if n in val else "train") for n in names}


def scan_source(source, split="train", *, lq_source=None, val_fraction=0.1, val_names=None, seed=0):
    """All source images with their split (and LQ path for paired data), sorted by name."""
    files = list_images(source)
    names = [p.stem for p in files]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise DatasetError(f"source folder {source} has several images named {sorted(dup)[0]!r} (different extensions)")
    lq = pair_images(files, lq_source) if lq_source is not None else {}
    splits = assign_splits(names, split, val_fraction, val_names, seed)
    return [SourceImage(p.stem, splits[p.stem], str(p), str(lq[p.stem]) if lq else None) for p in files]


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """Any Pillow mode to HxWx3 uint8 (see the module docstring for each mode)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        a = np.round(a / 257.0) if a.max() > 255 or im.mode.startswith("I;16") else a
        return np.repeat(np.clip(a, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if a.max() <= 1.0 else a
        return np.repeat(np.clip(np.round(a), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA") if im.mode != "LA" else im.convert("L")
    return np.array(im.convert("RGB"), dtype=np.uint8)


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode one image as HxWx3 uint8; raises DatasetError naming the file when it cannot."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise DatasetError(f"image {path} is {w}x{h} = {w * h} pixels, "
                                       f"over the {max_pixels}-pixel limit (decompression bomb?)")
                im.load()
                return _to_rgb8(im)
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetError(f"image {path} is refused as a decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"image {path} is unreadable or corrupt: {exc}") from None
