"""PSNR/SSIM follow BasicSR's conventions: known values, border crop, BT.601 Y, Wang's SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hiir.platform.evaluation.metrics import (
    gaussian_window_1d,
    psnr,
    rgb_to_y,
    shave_y_metrics,
    ssim,
    to_uint8,
)


def _rand(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _noisy(img, amp=20, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(int) + rng.integers(-amp, amp + 1, img.shape), 0, 255).astype(np.uint8)


def test_identical_images_give_inf_and_one():
    img = _rand((24, 20, 3))
    for y in (False, True):
        assert psnr(img, img.copy(), 0, y_channel=y) == math.inf
        assert ssim(img, img.copy(), 2, y_channel=y) == pytest.approx(1.0, abs=1e-12)


def test_constant_offset_gives_analytic_psnr():
    ref = np.full((16, 16, 3), 100, dtype=np.uint8)
    img = ref + 1
    # MSE = 1 on the 0-255 scale: 10 log10(255^2) = 48.1308 dB.
    assert psnr(img, ref, 0) == pytest.approx(10 * math.log10(255.0**2), abs=1e-12)
    assert psnr(img, ref, 0) == pytest.approx(48.1308, abs=5e-5)
    # On Y, +1 on R, G and B moves Y by (65.481 + 128.553 + 24.966) / 255 = 219 / 255.
    dy = 219.0 / 255.0
    assert psnr(img, ref, 0, y_channel=True) == pytest.approx(10 * math.log10(255.0**2 / dy**2), abs=1e-9)
    # A known MSE: +3 on one channel of three -> MSE = 9 / 3 = 3.
    img2 = ref.copy()
    img2[..., 1] += 3
    assert psnr(img2, ref, 0) == pytest.approx(10 * math.log10(255.0**2 / 3.0), abs=1e-12)


def test_crop_border_excludes_the_border():
    ref = _rand((20, 18, 3))
    img = ref.copy()
    b = 3
    img[:b] = 255 - img[:b]
    img[-b:] = 255 - img[-b:]
    img[:, :b] = 0
    img[:, -b:] = 255
    assert psnr(img, ref, 0) < 20
    assert psnr(img, ref, b) == math.inf
    assert psnr(img, ref, b, y_channel=True) == math.inf
    # One more pixel of error just inside the border is seen again.
    img[b, b, 0] ^= 1
    assert psnr(img, ref, b) < math.inf
    # SSIM's crop happens before the window: a 27x27 image cropped by 3 leaves 21x21.
    big_ref = _rand((27, 27, 3), seed=5)
    big = big_ref.copy()
    big[:3] = 0
    assert ssim(big, big_ref, 3) == pytest.approx(1.0, abs=1e-12)
    assert ssim(big, big_ref, 0) < 0.999  # the valid windows of the first rows still see it


def test_y_matches_bt601_studio_formula_by_hand():
    px = np.array([[[255, 0, 0], [10, 200, 30], [255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    y = rgb_to_y(px)
    assert y.dtype == np.float64 and y.shape == (1, 4)
    assert y[0, 0] == pytest.approx(16 + 65.481, abs=1e-12)
    assert y[0, 1] == pytest.approx(16 + (65.481 * 10 + 128.553 * 200 + 24.966 * 30) / 255, abs=1e-12)
    assert y[0, 2] == pytest.approx(235.0, abs=1e-12)  # studio range tops out at 235
    assert y[0, 3] == pytest.approx(16.0, abs=1e-12)
    # Not rounded: 10, 200, 30 gives a fractional Y.
    assert y[0, 1] != round(y[0, 1])
    # RGB order, not BGR: pure blue is the smallest coefficient.
    assert rgb_to_y(np.array([[[0, 0, 255]]], dtype=np.uint8))[0, 0] == pytest.approx(16 + 24.966)
    # Float input is read on [0, 1] and answered on [0, 1].
    assert rgb_to_y(px.astype(np.float64) / 255)[0, 1] == pytest.approx(y[0, 1] / 255, abs=1e-14)
    # PSNR on Y equals PSNR of the hand-computed Y planes.
    a, b = _rand((12, 12, 3), 1), _rand((12, 12, 3), 2)
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    want = 10 * math.log10(255.0**2 / np.mean((ya - yb) ** 2))
    assert psnr(a, b, 0, y_channel=True) == pytest.approx(want, abs=1e-10)


def test_gaussian_window_is_opencvs():
    k = gaussian_window_1d(11, 1.5)
    raw = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    np.testing.assert_allclose(k, raw / raw.sum(), rtol=0, atol=1e-16)
    assert k.sum() == pytest.approx(1.0, abs=1e-15)
    assert np.array_equal(k, k[::-1])


def _ssim_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    """Wang's SSIM written out: every valid 11x11 window, Gaussian weights from the formula."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * (px - mx) ** 2).sum()
            vy = (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_a_straightforward_implementation():
    ref = _rand((16, 14, 3), 3)
    img = _noisy(ref, 30, 4)
    want = np.mean([_ssim_by_loops(img[..., c].astype(float), ref[..., c].astype(float)) for c in range(3)])
    assert ssim(img, ref, 0) == pytest.approx(want, abs=1e-12)
    # With a crop and on Y.
    yi, yr = rgb_to_y(img[1:-1, 1:-1]), rgb_to_y(ref[1:-1, 1:-1])
    assert ssim(img, ref, 1, y_channel=True) == pytest.approx(_ssim_by_loops(yi, yr), abs=1e-12)


def test_ssim_matches_scikit_image_gaussian_ssim():
    # scikit-image's Gaussian SSIM (truncate 3.5 -> 11 taps, population covariance, valid crop)
    # is the same definition, written independently of BasicSR.
    skm = pytest.importorskip("skimage.metrics")
    ref = _rand((40, 33, 3), 7)
    img = _noisy(ref, 15, 8)
    want = skm.structural_similarity(
        img.astype(float), ref.astype(float), channel_axis=2, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=255,
    )
    assert ssim(img, ref, 0) == pytest.approx(want, abs=1e-12)


def test_ssim_is_below_one_and_symmetric():
    ref = _rand((32, 32, 3), 9)
    img = _noisy(ref, 10, 10)
    s = ssim(img, ref, 4)
    assert 0 < s < 1
    assert ssim(ref, img, 4) == pytest.approx(s, abs=1e-14)
    assert ssim(ref, img, 4, y_channel=True) == pytest.approx(ssim(img, ref, 4, y_channel=True), abs=1e-14)
    assert psnr(ref, img, 4) == psnr(img, ref, 4)


def test_grey_inputs_work():
    ref = _rand((20, 22), 11)
    img = _noisy(ref, 12, 12)
    want = 10 * math.log10(255.0**2 / np.mean((img[2:-2, 2:-2].astype(float) - ref[2:-2, 2:-2]) ** 2))
    assert psnr(img, ref, 2) == pytest.approx(want, abs=1e-12)
    # HxW, HxWx1, and the Y flag (nothing to convert) all agree.
    assert psnr(img[..., None], ref[..., None], 2) == psnr(img, ref, 2) == psnr(img, ref, 2, y_channel=True)
    s = ssim(img, ref, 0)
    assert s == pytest.approx(_ssim_by_loops(img.astype(float), ref.astype(float)), abs=1e-12)
    assert ssim(img[..., None], ref[..., None], 0, y_channel=True) == s
    m = shave_y_metrics(img, ref, 2)
    assert m["psnr_y"] == m["psnr"] and m["ssim_y"] == m["ssim"]


def test_shape_mismatch_and_bad_inputs_raise():
    a, b = _rand((16, 16, 3)), _rand((16, 15, 3))
    for fn in (psnr, ssim):
        with pytest.raises(ValueError) as e:
            fn(a, b, 0)
        assert "(16, 16, 3)" in str(e.value) and "(16, 15, 3)" in str(e.value)
    with pytest.raises(ValueError, match="uint8"):
        psnr(a.astype(np.float32) / 255, a.astype(np.float32) / 255, 0)
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, a, 8)
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, a, -1)
    with pytest.raises(ValueError, match="11x11"):
        ssim(a, a, 3)  # 10x10 left: the valid region would be empty


def test_to_uint8_rounds_like_tensor2img():
    x = np.array([-0.3, 0.0, 0.4 / 255, 0.6 / 255, 127.5 / 255, 1.0, 1.7], dtype=np.float32)
    out = to_uint8(x)
    assert out.dtype == np.uint8
    # clip, *255, round half to even in float32 (127.5/255*255 is exactly 127.5 in float32 -> 128).
    assert out.tolist() == [0, 0, 0, 1, int(np.round(np.float32(127.5 / 255) * np.float32(255))), 255, 255]
    img = np.random.default_rng(0).random((4, 5, 3))
    u = to_uint8(img)
    assert u.shape == (4, 5, 3)
    assert np.abs(u.astype(float) - img * 255).max() <= 0.5 + 1e-4
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([0.1, np.nan]))


def test_shave_y_metrics_reports_rgb_and_y():
    gt = _rand((30, 30, 3), 13)
    sr = _noisy(gt, 8, 14)
    m = shave_y_metrics(sr, gt, 4)
    assert set(m) == {"psnr", "ssim", "psnr_y", "ssim_y"}
    assert m["psnr"] == psnr(sr, gt, 4) and m["psnr_y"] == psnr(sr, gt, 4, y_channel=True)
    assert m["ssim"] == ssim(sr, gt, 4) and m["ssim_y"] == ssim(sr, gt, 4, y_channel=True)
    assert all(isinstance(v, float) for v in m.values())
    # Y averages independent channel noise, so it scores higher than RGB.
    assert m["psnr_y"] > m["psnr"]
