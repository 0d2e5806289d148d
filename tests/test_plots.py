"""Report plots are valid PNGs of the documented size, written atomically; strips are LQ | out | GT."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hiir.platform.evaluation.strips import plot_strip
from hiir.platform.results.plots import CURVES_FIGSIZE, DPI, SCALING_FIGSIZE, plot_curves, plot_scaling
from hiir.platform.results.scaling import fit_power_law, mse_to_psnr


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        return im.size


def _no_temporaries(directory):
    assert not [p.name for p in directory.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]


@pytest.fixture(scope="module")
def study_points():
    n = np.geomspace(1e5, 1e8, 5)
    mse = 0.25 * n**-0.35 + 0.0015
    mse = mse * np.exp(np.random.default_rng(0).normal(0, 0.01, n.size))
    pts = [
        {"params": float(p), "val_mse": float(m), "psnr": float(mse_to_psnr(m)), "preset": f"s{i}", "data": "demo"}
        for i, (p, m) in enumerate(zip(n, mse))
    ]
    pts.append({"params": 3e6, "val_mse": None, "preset": "failed"})  # a failed trial
    return pts, fit_power_law(n, mse, n_boot=60, seed=0)


def test_plot_scaling_writes_png_with_fit_and_band(tmp_path, study_points):
    pts, fit = study_points
    out = plot_scaling(pts, "params", "val_mse", tmp_path / "sub" / "mse_vs_params.png",
                       fit=fit, label_key="preset", group_key="data", logy=True, title="MSE vs N")
    assert out == tmp_path / "sub" / "mse_vs_params.png" and out.is_file()
    w, h = _png_size(out)
    assert (w, h) == (round(SCALING_FIGSIZE[0] * DPI), round(SCALING_FIGSIZE[1] * DPI))
    _no_temporaries(out.parent)


def test_plot_scaling_psnr_axis_and_no_fit(tmp_path, study_points):
    pts, fit = study_points
    p1 = plot_scaling(pts, "params", "psnr", tmp_path / "psnr.png", fit=fit, fit_to_y=mse_to_psnr)
    p2 = plot_scaling([*pts, {"params": 0, "psnr": 30.0}], "params", "psnr", tmp_path / "plain.png")  # 0: skipped
    p3 = plot_scaling([], "params", "psnr", tmp_path / "empty.png", title="nothing yet")
    for p in (p1, p2, p3):
        assert _png_size(p)[0] > 100
    _no_temporaries(tmp_path)


def test_plot_scaling_overwrites_atomically(tmp_path, study_points):
    pts, _ = study_points
    dest = tmp_path / "p.png"
    dest.write_bytes(b"old")
    plot_scaling(pts, "params", "val_mse", dest)
    assert _png_size(dest)[0] > 100
    _no_temporaries(tmp_path)


def test_plot_curves(tmp_path):
    curves = {
        "trial_0": ([0, 10, 20, 30], [0.2, 0.1, 0.08, 0.07]),
        "trial_1": (list(range(0, 500, 10)), list(np.linspace(0.3, 0.05, 50))),
        "nan_trial": ([0, 10, 20], [0.2, float("nan"), 0.1]),
        "empty": ([], []),
    }
    out = plot_curves(curves, tmp_path / "curves.png", ylabel="L1 loss", title="training", logy=True)
    assert _png_size(out) == (round(CURVES_FIGSIZE[0] * DPI), round(CURVES_FIGSIZE[1] * DPI))
    with pytest.raises(ValueError, match="trial_x"):
        plot_curves({"trial_x": ([1, 2], [0.1])}, tmp_path / "bad.png", ylabel="l", title="t")
    assert not (tmp_path / "bad.png").exists()
    _no_temporaries(tmp_path)


def test_plot_strip_layout_and_file(tmp_path):
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (24, 16, 3), dtype=np.uint8)
    lq = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)  # x4
    out = rng.random((24, 16, 3))  # float output on [0, 1]
    strip = plot_strip(lq, out, gt, tmp_path / "strip.png")
    assert strip.dtype == np.uint8 and strip.shape == (24, 3 * 16, 3)
    # Nearest-neighbour upscale: each LQ pixel becomes a 4x4 block.
    assert np.array_equal(strip[:, :16], np.repeat(np.repeat(lq, 4, axis=0), 4, axis=1))
    assert np.array_equal(strip[:, 16:32], np.round(out * 255).astype(np.uint8))
    assert np.array_equal(strip[:, 32:], gt)
    assert _png_size(tmp_path / "strip.png") == (48, 24)
    with Image.open(tmp_path / "strip.png") as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), strip)
    _no_temporaries(tmp_path)


def test_plot_strip_without_path_grey_and_errors():
    gt = np.zeros((10, 12), dtype=np.uint8)
    strip = plot_strip(np.ones((10, 12), dtype=np.uint8), gt, gt, None)  # denoising: scale 1
    assert strip.shape == (10, 36, 3) and strip[:, :12].min() == 1
    with pytest.raises(ValueError, match="sizes differ"):
        plot_strip(gt[:5, :6], gt[:8], gt, None)
