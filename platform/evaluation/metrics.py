"""PSNR and SSIM exactly as BasicSR's ``calculate_psnr`` / ``calculate_ssim`` compute them.

Conventions (``basicsr/metrics/psnr_ssim.py``, ``metric_util.py``, ``utils/color_util.py``):

* Inputs are ``uint8`` images on the [0, 255] scale, HxWx3 **RGB** (BasicSR's are BGR; the
  Y coefficients below are in RGB order), or grey HxW / HxWx1. Network outputs in [0, 1] are
  turned into such images with :func:`to_uint8`, which rounds like BasicSR's ``tensor2img``.
* Step 1: ``crop_border`` pixels are removed from every edge (before any colour conversion).
* Step 2 (only with ``y_channel=True`` on 3-channel input): Y of ITU-R BT.601 *studio* range,
  as MATLAB's ``rgb2ycbcr``: ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with R, G, B in [0, 1],
  giving Y in [16, 235]. Y is not rounded. Grey input is left as it is.
* Step 3: everything in float64. PSNR is ``10 log10(255^2 / MSE)``, ``inf`` when MSE is 0.
  SSIM is Wang et al.'s: 11x11 Gaussian window with sigma 1.5, C1 = (0.01*255)^2,
  C2 = (0.03*255)^2, evaluated on the "valid" region only (5 px lost on each side), averaged
  over channels.

One deliberate difference: BasicSR's ``to_y_channel`` passes through float32 on its way to
float64, so its Y-channel numbers carry float32 rounding (relative 1e-7, far below the 4
decimals anyone reports). Here the Y conversion is done in float64 throughout, as the platform's
spec asks.

SSIM uses no OpenCV: BasicSR runs ``cv2.filter2D`` (a correlation with replicated-101 borders)
and then keeps ``[5:-5, 5:-5]``. Inside that valid region the border mode never matters, so the
same values are computed here as a separable correlation over exactly the interior pixels.
OpenCV itself evaluates 11x11 float64 kernels through a DFT, so the two agree to float64
rounding (~1e-15 relative), not bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = [
    "psnr",
    "ssim",
    "rgb_to_y",
    "to_uint8",
    "shave_y_metrics",
    "sr_convention",
    "gaussian_window_1d",
]

# Wang et al.'s constants for 8-bit data (data range L = 255).
_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2
_WIN = 11
_SIGMA = 1.5
_HALF = _WIN // 2  # 5 px lost on each side by the valid region

# ITU-R BT.601 studio-range luma, RGB order, for RGB in [0, 1] -> Y in [16, 235].
_Y_COEFFS_RGB = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_Y_OFFSET = 16.0


def gaussian_window_1d(size: int = _WIN, sigma: float = _SIGMA) -> np.ndarray:
    """The 1-D Gaussian that ``cv2.getGaussianKernel(size, sigma)`` returns, as float64 of shape (size,).

    Reproduced operation for operation (``exp(-x^2 / (2 sigma^2))`` for x centred on the middle
    tap, summed left to right, then multiplied by the reciprocal of the sum) so the taps are
    bit-identical to OpenCV's for sigma > 0. The SSIM window is its outer product with itself.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"Gaussian window size must be a positive odd integer, got {size}")
    if sigma <= 0:
        raise ValueError(f"Gaussian sigma must be positive, got {sigma}")
    scale2x = -0.5 / (sigma * sigma)
    taps = [math.exp(scale2x * (i - (size - 1) * 0.5) ** 2) for i in range(size)]
    total = 0.0
    for t in taps:  # sequential sum, as OpenCV's loop does (np.sum would pair-wise sum)
        total += t
    inv = 1.0 / total
    return np.array([t * inv for t in taps], dtype=np.float64)


_KERNEL_1D = gaussian_window_1d()


def _as_hwc(img: np.ndarray) -> np.ndarray:
    """HxW -> HxWx1, so that grey and colour images share one code path (BasicSR's reorder_image)."""
    return img[..., None] if img.ndim == 2 else img


def _check_pair(img: np.ndarray, ref: np.ndarray, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a metric's inputs and return both images as HxWxC uint8, border already cropped."""
    img = np.asarray(img)
    ref = np.asarray(ref)
    if img.shape != ref.shape:
        raise ValueError(f"image shapes differ: img {img.shape} vs ref {ref.shape}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
        raise ValueError(f"expected an HxW, HxWx1 or HxWx3 image, got shape {img.shape}")
    for name, a in (("img", img), ("ref", ref)):
        if a.dtype != np.uint8:
            # Metrics are defined on the rounded 8-bit image a user would save; a float image
            # would silently be scored on the wrong scale. to_uint8 makes the conversion explicit.
            raise ValueError(
                f"{name} must be uint8 in [0, 255], got dtype {a.dtype}; "
                "convert network outputs in [0, 1] with hiir.platform.evaluation.metrics.to_uint8"
            )
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative integer, got {crop_border!r}")
    h, w = img.shape[:2]
    if 2 * crop_border >= h or 2 * crop_border >= w:
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
    img, ref = _as_hwc(img), _as_hwc(ref)
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border, :]
        ref = ref[crop_border:-crop_border, crop_border:-crop_border, :]
    return img, ref


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Y (luma) of ITU-R BT.601 studio range, as MATLAB's ``rgb2ycbcr`` / BasicSR's ``rgb2ycbcr(y_only=True)``.

    ``img`` is HxWx3 **RGB**. A ``uint8`` image is read on [0, 255] and gives Y in [16, 235];
    a float image is read on [0, 1] and gives Y in [16/255, 235/255] (the output is on the
    input's scale, as in BasicSR). Returns float64 of shape HxW, not rounded.
    """
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects an HxWx3 RGB image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        rgb01 = arr.astype(np.float64) / 255.0
        return rgb01 @ _Y_COEFFS_RGB + _Y_OFFSET
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"rgb_to_y expects uint8 on [0, 255] or float on [0, 1], got dtype {arr.dtype}")
    return (arr.astype(np.float64) @ _Y_COEFFS_RGB + _Y_OFFSET) / 255.0


def _prepare(img: np.ndarray, ref: np.ndarray, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """BasicSR's steps 1-3: crop, optionally take Y, then float64. Returns HxWxC float64 on [0, 255]."""
    img, ref = _check_pair(img, ref, crop_border)
    if y_channel and img.shape[2] == 3:
        return rgb_to_y(img)[..., None], rgb_to_y(ref)[..., None]
    return img.astype(np.float64), ref.astype(np.float64)


def psnr(img: np.ndarray, ref: np.ndarray, crop_border: int, y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB, as BasicSR's ``calculate_psnr`` (see the module docstring).

    ``crop_border`` is the SR scale by convention (0 for denoising / JPEG). ``y_channel`` scores the
    BT.601 studio-range Y of an RGB image. Returns ``inf`` for identical (cropped) images.
    """
    a, b = _prepare(img, ref, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(255.0 * 255.0 / mse))


def _filter_valid(x: np.ndarray) -> np.ndarray:
    """The Gaussian-weighted local mean over the valid region: ``cv2.filter2D(x, -1, w)[5:-5, 5:-5]``.

    The 11x11 window is separable, so two 1-D correlations give the same sums; the result is
    cropped to the pixels whose window lies entirely inside ``x``, where the border mode of the
    correlation is never consulted.
    """
    out = ndimage.correlate1d(x, _KERNEL_1D, axis=0, mode="constant", cval=0.0)
    out = ndimage.correlate1d(out, _KERNEL_1D, axis=1, mode="constant", cval=0.0)
    return out[_HALF:-_HALF, _HALF:-_HALF]


def _ssim_channel(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM of one float64 channel, Wang et al.'s formula over the valid region (BasicSR's ``_ssim``)."""
    mu1 = _filter_valid(x)
    mu2 = _filter_valid(y)
    mu1_sq = mu1 * mu1
    mu2_sq = mu2 * mu2
    mu1_mu2 = mu1 * mu2
    sigma1_sq = _filter_valid(x * x) - mu1_sq
    sigma2_sq = _filter_valid(y * y) - mu2_sq
    sigma12 = _filter_valid(x * y) - mu1_mu2
    ssim_map = ((2.0 * mu1_mu2 + _C1) * (2.0 * sigma12 + _C2)) / (
        (mu1_sq + mu2_sq + _C1) * (sigma1_sq + sigma2_sq + _C2)
    )
    return float(ssim_map.mean())


def ssim(img: np.ndarray, ref: np.ndarray, crop_border: int, y_channel: bool = False) -> float:
    """Structural similarity, as BasicSR's ``calculate_ssim`` (see the module docstring).

    Gaussian 11x11 window (sigma 1.5), valid region only, averaged over channels. The image left
    after cropping must be at least 11x11, since the valid region is otherwise empty (BasicSR
    would return NaN there).
    """
    a, b = _prepare(img, ref, crop_border, y_channel)
    h, w = a.shape[:2]
    if h < _WIN or w < _WIN:
        raise ValueError(
            f"SSIM needs at least {_WIN}x{_WIN} pixels after cropping {crop_border} px of border, got {h}x{w}"
        )
    return float(np.mean([_ssim_channel(a[..., i], b[..., i]) for i in range(a.shape[2])]))


def to_uint8(img_float01: np.ndarray) -> np.ndarray:
    """A [0, 1] float image to uint8 as BasicSR's ``tensor2img``: clip to [0, 1], times 255, round.

    The arithmetic is float32, as ``tensor2img`` does it after ``.float()``, so ties fall the same
    way (round half to even, like ``torch.round``). The layout is kept (HxWxC or HxW; channel order
    untouched). Non-finite values raise ValueError rather than becoming arbitrary bytes.
    """
    arr = np.asarray(img_float01)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"to_uint8 expects a float image on [0, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError("to_uint8 got NaN or inf values; the model output is not a valid image")
    arr = np.clip(arr, np.float32(0.0), np.float32(1.0))
    return np.round(arr * np.float32(255.0)).astype(np.uint8)


def shave_y_metrics(sr_uint8: np.ndarray, gt_uint8: np.ndarray, crop_border: int) -> dict[str, float]:
    """PSNR and SSIM on all channels and on Y, with ``crop_border`` shaved, as papers report them.

    Returns ``{"psnr", "ssim", "psnr_y", "ssim_y"}``. For grey input the Y numbers equal the plain
    ones (there is nothing to convert).
    """
    return {
        "psnr": psnr(sr_uint8, gt_uint8, crop_border, y_channel=False),
        "ssim": ssim(sr_uint8, gt_uint8, crop_border, y_channel=False),
        "psnr_y": psnr(sr_uint8, gt_uint8, crop_border, y_channel=True),
        "ssim_y": ssim(sr_uint8, gt_uint8, crop_border, y_channel=True),
    }


def sr_convention(scale: int, channels: int) -> tuple[int, str]:
    """(crop_border, headline metric) of a val set, as papers report them: super-resolution (scale > 1,
    whether the LQ was made by bicubic or given as pairs) crops `scale` px and headlines Y-channel PSNR
    (RGB PSNR for grey images); restoration at scale 1 crops nothing and headlines RGB PSNR."""
    if scale > 1:
        return scale, "psnr_y" if channels == 3 else "psnr"
    return 0, "psnr"
