"""Degradations: the LQ image of each task, computed from a GT uint8 HxWx3 array.

Conventions (BasicSR / SwinIR): float images are in [0, 1]; noise sigma is given in 8-bit
levels (sigma=25 adds N(0, 25/255)); LQ images are stored as uint8, so clipping and rounding
happen once, at the end (`to_uint8`). Everything random takes an explicit numpy Generator.
"""
from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

from hiir.data_prep.imresize import imresize

# Synthetic stand-ins for the all-in-one tasks whose real data (SOTS, Rain100L, GoPro, LOL) the demo
# photos cannot supply. They are labelled `synthetic_stand_in` in the manifest and in study reports.
SYNTHETIC = ("derain", "dehaze", "deblur", "lowlight")
# online: HR-only train shards; the LQ side is made in the reader (hiir.data_prep.online).
TASKS = ("sr", "denoise", "jpeg", "paired", "online") + SYNTHETIC


def to_uint8(img: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """Round and saturate a float image whose white is `peak` to uint8 (MATLAB's uint8())."""
    return np.clip(np.round(img * (255.0 / peak)), 0, 255).astype(np.uint8)


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop H and W down to multiples of `scale` (BasicSR's mod_crop; the GT of x`scale` SR)."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def image_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of one image: depends only on the build seed and the image name."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def add_gaussian_noise(img_float: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """img (float, [0, 1]) + N(0, sigma/255), unclipped (SwinIR's `img + normal(0, sigma/255.)`)."""
    return img_float + rng.normal(0.0, sigma / 255.0, img_float.shape)


def jpeg(img_uint8: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode through Pillow's JPEG at `quality` (4:2:0 chroma, like cv2.imencode)."""
    buf = io.BytesIO()
    Image.fromarray(img_uint8).save(buf, format="JPEG", quality=int(quality))
    return np.array(Image.open(io.BytesIO(buf.getvalue())))


def _convolve_taps(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D correlation with a small kernel, symmetric borders; one shifted add per tap."""
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    pad = [(ph, ph), (pw, pw)] + [(0, 0)] * (img.ndim - 2)
    src = np.pad(np.asarray(img, dtype=np.float64), pad, mode="symmetric")
    out = np.zeros(img.shape, dtype=np.float64)
    h, w = img.shape[:2]
    for i, j in zip(*np.nonzero(kernel)):
        out += kernel[i, j] * src[i : i + h, j : j + w]
    return out


def gaussian_kernel(sigma: float, ksize: int | None = None) -> np.ndarray:
    """Normalised isotropic Gaussian, ksize odd (default 2*ceil(3*sigma)+1)."""
    ksize = ksize or 2 * int(np.ceil(3 * sigma)) + 1
    r = np.arange(ksize) - ksize // 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    k = np.outer(g, g)
    return k / k.sum()


def gaussian_blur(img: np.ndarray, sigma: float, ksize: int | None = None) -> np.ndarray:
    """Isotropic Gaussian blur (symmetric borders); float output in the input's range."""
    return _convolve_taps(img, gaussian_kernel(sigma, ksize))


def motion_kernel(length: int, angle_deg: float) -> np.ndarray:
    """A normalised line of `length` pixels through the centre at `angle_deg` (0 = horizontal)."""
    size = length if length % 2 else length + 1
    k = np.zeros((size, size))
    c = size // 2
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length)
    a = np.deg2rad(angle_deg)
    ys = np.clip(np.round(c - t * np.sin(a)).astype(int), 0, size - 1)
    xs = np.clip(np.round(c + t * np.cos(a)).astype(int), 0, size - 1)
    k[ys, xs] = 1.0
    return k / k.sum()


def motion_blur(img: np.ndarray, length: int, angle_deg: float = 0.0) -> np.ndarray:
    """Linear motion blur of `length` pixels at `angle_deg`; float output in the input's range."""
    return _convolve_taps(img, motion_kernel(length, angle_deg))


def synthetic_rain(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rain streaks: sparse drops smeared by a near-vertical motion kernel, added (Rain100L-like, light)."""
    h, w = gt.shape[:2]
    drops = (rng.random((h, w)) < rng.uniform(0.003, 0.008)) * rng.uniform(0.5, 1.0, (h, w))
    length = int(rng.integers(9, 18))
    streaks = np.clip(motion_blur(drops, length, rng.uniform(75, 105)) * length * 0.6, 0, 0.8)
    return to_uint8(gt / 255.0 + streaks[..., None], peak=1.0)


def synthetic_haze(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Atmospheric scattering I = J t + A (1 - t), t = exp(-beta d), d a smooth synthetic depth."""
    h, w = gt.shape[:2]
    coarse = Image.fromarray(rng.random((4, 4)).astype(np.float32), mode="F").resize((w, h), Image.BICUBIC)
    depth = 0.6 * np.linspace(1.0, 0.0, h)[:, None] + 0.4 * np.clip(np.asarray(coarse, np.float64), 0, 1)
    t = np.exp(-rng.uniform(0.8, 1.6) * depth)[..., None]
    return to_uint8(gt / 255.0 * t + rng.uniform(0.75, 0.95) * (1 - t), peak=1.0)


def synthetic_lowlight(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Low light: gamma, then scaling down, then a little sensor noise (LOL-like darkness)."""
    dark = (gt / 255.0) ** rng.uniform(1.2, 1.8) * rng.uniform(0.15, 0.35)
    return to_uint8(add_gaussian_noise(dark, rng.uniform(1.0, 4.0), rng), peak=1.0)


def synthetic_motion_blur(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Linear motion blur of 7-15 px at a random angle (GoPro-like blur, without the camera pipeline)."""
    return to_uint8(motion_blur(gt, int(rng.integers(7, 16)), rng.uniform(0, 180)))


SYNTHETIC_FNS = {"derain": synthetic_rain, "dehaze": synthetic_haze, "deblur": synthetic_motion_blur,
                 "lowlight": synthetic_lowlight}


def degrade_image(gt: np.ndarray, task: str, *, scale: int = 1, sigma: float | None = None,
                  quality: int | None = None, seed: int = 0, name: str = "") -> np.ndarray:
    """The LQ uint8 image of one (already mod-cropped) GT uint8 image, as the build stores it."""
    if task == "sr":
        return to_uint8(imresize(gt, 1.0 / scale))
    if task == "denoise":
        return to_uint8(add_gaussian_noise(gt / 255.0, sigma, image_rng(seed, name)), peak=1.0)
    if task == "jpeg":
        return jpeg(gt, quality)
    if task in SYNTHETIC_FNS:
        return SYNTHETIC_FNS[task](gt, image_rng(seed, name))
    raise ValueError(f"task {task!r} has no synthetic degradation; expected one of sr, denoise, jpeg")
