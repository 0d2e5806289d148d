"""The power-law fit recovers known a, alpha, c, and its bootstrap intervals cover them."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from hiir.platform.study.scaling import PAIRS_MIN_SIZES, fit_power_law, mse_to_psnr, psnr_to_mse

# A realistic MSE-space law: about 27 dB at 1M parameters, saturating towards 28.2 dB.
A, ALPHA, C = 0.25, 0.35, 0.0015


def _law(n):
    return A * np.power(n, -ALPHA) + C


def _assert_covers(fit):
    for name, true in (("a", A), ("alpha", ALPHA), ("c", C)):
        lo, hi = getattr(fit, f"{name}_ci")
        assert lo <= true <= hi, f"{name}={true} outside its interval ({lo}, {hi})"
        assert lo <= getattr(fit, name) <= hi


def test_noiseless_points_are_recovered_exactly():
    n = np.geomspace(2e4, 5e7, 6)
    fit = fit_power_law(n, _law(n), n_boot=0)
    assert fit.a == pytest.approx(A, rel=1e-8)
    assert fit.alpha == pytest.approx(ALPHA, rel=1e-8)
    assert fit.c == pytest.approx(C, rel=1e-8)
    assert fit.rms_log_residual < 1e-10
    assert fit.bootstrap == "none" and all(math.isnan(v) for v in fit.alpha_ci)
    np.testing.assert_allclose(fit.predict(n), _law(n), rtol=1e-10)
    assert isinstance(fit.predict(1e6), float)


def test_recovers_known_law_with_pairs_bootstrap():
    rng = np.random.default_rng(0)
    n = np.geomspace(1e5, 1e8, 8)
    assert n.size >= PAIRS_MIN_SIZES
    loss = _law(n) * np.exp(rng.normal(0.0, 0.01, n.size))  # 1% multiplicative noise
    fit = fit_power_law(n, loss, n_boot=200, seed=1)
    assert fit.bootstrap == "pairs" and fit.n_boot_ok >= 150
    assert fit.n_points == 8 and fit.n_sizes == 8
    _assert_covers(fit)
    assert fit.alpha == pytest.approx(ALPHA, abs=0.03)
    assert fit.c == pytest.approx(C, rel=0.05)
    assert fit.a == pytest.approx(A, rel=0.3)  # a trades off against alpha; loose by nature
    # The extrapolation beyond the largest size stays within a percent or two.
    assert fit.predict(1e9) == pytest.approx(_law(1e9), rel=0.02)
    lo, hi = fit.predict_interval([1e5, 1e9])
    assert np.all(lo <= hi) and lo[1] <= _law(1e9) <= hi[1]


def test_recovers_known_law_with_residual_bootstrap_on_few_sizes():
    rng = np.random.default_rng(0)
    sizes = np.geomspace(1e5, 1e8, 5)
    n = np.repeat(sizes, 2)  # two seeds per size
    loss = _law(n) * np.exp(rng.normal(0.0, 0.01, n.size))
    fit = fit_power_law(n, loss, n_boot=200, seed=0)
    assert fit.bootstrap == "residuals"
    assert fit.n_points == 10 and fit.n_sizes == 5
    _assert_covers(fit)
    assert fit.alpha == pytest.approx(ALPHA, abs=0.03)
    assert fit.c == pytest.approx(C, rel=0.05)


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(3)
    n = np.geomspace(1e5, 1e8, 5)
    loss = _law(n) * np.exp(rng.normal(0.0, 0.01, n.size))
    f1 = fit_power_law(n, loss, n_boot=50, seed=7)
    f2 = fit_power_law(n, loss, n_boot=50, seed=7)
    assert f1 == f2 and f1.alpha_ci == f2.alpha_ci


def test_fewer_than_three_sizes_is_an_error():
    with pytest.raises(ValueError, match="at least 3 model sizes"):
        fit_power_law([1e6, 2e6], [0.01, 0.009])
    # Repeated seeds of two sizes are still only two sizes.
    with pytest.raises(ValueError, match="at least 3 model sizes"):
        fit_power_law([1e6, 1e6, 2e6, 2e6], [0.01, 0.011, 0.009, 0.0091])


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="not PSNR"):
        fit_power_law([1e5, 1e6, 1e7], [28.0, -1.0, 30.0])
    with pytest.raises(ValueError, match="length"):
        fit_power_law([1e5, 1e6, 1e7], [0.01, 0.009])


def test_three_points_fit_but_have_no_intervals():
    n = np.array([1e5, 1e6, 1e7])
    fit = fit_power_law(n, _law(n) * np.array([1.01, 0.99, 1.0]), n_boot=100)
    assert fit.bootstrap == "none" and fit.n_boot_ok == 0
    assert all(math.isnan(v) for v in fit.a_ci + fit.alpha_ci + fit.c_ci)
    lo, hi = fit.predict_interval([1e6])
    assert np.isnan(lo).all() and np.isnan(hi).all()


def test_to_dict_is_json_and_the_fit_is_frozen():
    n = np.geomspace(1e5, 1e8, 5)
    fit = fit_power_law(n, _law(n) * np.exp(np.random.default_rng(0).normal(0, 0.01, 5)), n_boot=30)
    d = fit.to_dict()
    assert {"a", "alpha", "c", "a_ci", "alpha_ci", "c_ci", "n_points", "bootstrap"} <= set(d)
    assert "boot_params" not in d
    assert d["alpha"] == fit.alpha  # unrounded
    json.loads(json.dumps(d))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.alpha = 1.0  # type: ignore[misc]


def test_psnr_mse_conversions():
    assert psnr_to_mse(20.0) == pytest.approx(0.01)
    assert mse_to_psnr(0.001) == pytest.approx(30.0)
    assert mse_to_psnr(0.0) == math.inf
    x = np.array([25.0, 31.5, 40.0])
    np.testing.assert_allclose(mse_to_psnr(psnr_to_mse(x)), x, rtol=1e-14)
    with pytest.raises(ValueError):
        mse_to_psnr(-1.0)
