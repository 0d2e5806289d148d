"""The power-law fit recovers known a, alpha, c, and its bootstrap intervals cover them; on size means, the
trend's interval and lack of fit, the held-out check against naive predictors (inside its interval about as often
as its level says, "predicts" only when it beats both), and the best size at a budget."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import stats

from hiir.platform.results.scaling import (
    PAIRS_MIN_SIZES,
    _fit_many,
    _fit_once,
    _grid_starts,
    fit_power_law,
    mse_to_psnr,
    psnr_to_mse,
)
from hiir.platform.results.sizes import best_size, held_out, size_trend

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
    assert d["log_residuals"] == list(fit.log_residuals) and len(d["log_residuals"]) == 5
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


def test_the_replicate_fitter_finds_what_curve_fit_finds():
    """The bootstrap fits every replicate at once (a profile over alpha, then Levenberg-Marquardt); on noisy
    data its optimum is the one curve_fit reaches from a grid of starts."""
    rng = np.random.default_rng(5)
    n = np.geomspace(1e4, 1e6, 5)
    x = n / np.exp(np.log(n).mean())
    log_y = np.log(_law(n)) + rng.normal(0.0, 0.01, (8, n.size))
    _, costs = _fit_many(np.broadcast_to(x, log_y.shape).copy(), log_y)
    for row, cost in zip(log_y, costs):
        best = _fit_once(x, row, _grid_starts(x, np.exp(row)), float(np.exp(row).max()))
        assert cost <= best[1] * (1 + 1e-6) + 1e-14


def _psnr_study(sizes, seeds, rng, *, flat=False, departure=0.02, seed_sd=0.02):
    """Per-trial (body count, PSNR, seed): the law's PSNR (or a flat one), a per-size departure shared by its
    seeds, a seed offset shared by every size, and trial noise."""
    n = np.geomspace(1e4, 1.6e5, sizes)
    truth = np.full(sizes, 34.0) if flat else mse_to_psnr(_law(n))
    psnr = (truth + rng.normal(0.0, departure, sizes))[:, None] + rng.normal(0.0, 0.05, seeds) + \
        rng.normal(0.0, seed_sd, (sizes, seeds))
    return np.repeat(n, seeds), psnr.ravel(), np.tile(np.arange(seeds), sizes)


def test_held_out_gives_the_law_and_both_naive_predictors_on_the_size_means():
    n, psnr, seeds = _psnr_study(5, 2, np.random.default_rng(1))
    h = held_out(n, psnr, seeds, n_boot=200)
    means = psnr.reshape(5, 2).mean(axis=1)
    assert h.n_params == n.max() and h.n_replicates == 2 and h.fit.n_sizes == 4 and h.fit.n_points == 4
    assert h.measured_psnr == pytest.approx(means[-1])
    assert h.se_db == pytest.approx(np.std(psnr[-2:], ddof=1) / math.sqrt(2))
    assert h.mean_psnr == pytest.approx(means[:4].mean())
    line = np.polyfit(np.log2(n[::2][:4]), means[:4], 1)
    assert h.line_psnr == pytest.approx(np.polyval(line, math.log2(n.max())))
    assert h.predicted_psnr == pytest.approx(mse_to_psnr(h.fit.predict(n.max())))
    assert h.error_db == pytest.approx(h.measured_psnr - h.predicted_psnr)
    lo, hi = h.interval_psnr
    assert h.inside == (lo <= h.measured_psnr <= hi) and lo < h.predicted_psnr < hi
    d = json.loads(json.dumps(h.to_dict()))
    assert d["fit"]["n_sizes"] == 4 and len(d["interval_psnr"]) == 2 and d["predicts"] == h.predicts


def test_predicts_needs_an_identified_law_that_beats_both_naive_predictors_by_the_seed_se():
    # A clear law (little departure and noise): identified, and the curve beats the mean and the line.
    n, psnr, seeds = _psnr_study(6, 3, np.random.default_rng(2), departure=0.002, seed_sd=0.002)
    h = held_out(n, psnr, seeds, n_boot=200)
    margin = abs(h.error_db) + h.se_db
    assert h.predicts == (not h.unidentified and margin < abs(h.mean_error_db) and margin < abs(h.line_error_db))
    assert h.predicts and h.sentence.endswith(
        f"**the law predicts**: it beats both naive predictors by more than the seed SE ({h.se_db:.2f} dB)")
    # A flat truth: the smaller sizes do not rise, so the law is not identified and claims nothing.
    n, psnr, seeds = _psnr_study(5, 2, np.random.default_rng(3), flat=True)
    flat = held_out(n, psnr, seeds, n_boot=200)
    assert not flat.predicts and flat.unidentified
    assert "the law is not identified (" in flat.sentence and flat.sentence.endswith("): no prediction claim")
    # One seed at the held-out size: no standard error to beat the naive predictors by.
    n, psnr, seeds = _psnr_study(5, 1, np.random.default_rng(4), departure=0.002, seed_sd=0.002)
    one = held_out(n, psnr, seeds, n_boot=200)
    assert math.isnan(one.se_db) and not one.predicts and "(one seed)" in one.sentence
    assert one.sentence.endswith("no standard error to beat the naive predictors by: no prediction claim")


def test_held_out_sentence_without_an_interval_says_so_and_never_prints_nan():
    n, psnr, seeds = _psnr_study(5, 2, np.random.default_rng(0))
    h = held_out(n, psnr, seeds, n_boot=0)
    assert h.inside is None and all(math.isnan(v) for v in h.interval_psnr)
    assert "(no interval: too few points to estimate noise)" in h.sentence
    assert "nan" not in h.sentence and "inside" not in h.sentence and "outside" not in h.sentence
    assert "alpha has no interval" in h.sentence  # and so the law is not identified
    json.dumps(h.to_dict())


def test_held_out_prediction_intervals_cover_at_their_level():
    """Coverage over 60 synthetic studies of 5 sizes x 2 seeds with per-size departures: the binomial sd at 95%
    is 2.8%, so 85% is 3.5 sd below (bench/stats_calibration.py measures it over 500)."""
    rng = np.random.default_rng(11)
    inside = [held_out(*_psnr_study(5, 2, rng), n_boot=100, seed=i).inside for i in range(60)]
    assert np.mean(inside) >= 0.85, np.mean(inside)


def test_a_law_needs_five_sizes():
    n, psnr, seeds = _psnr_study(4, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 5 model sizes"):
        held_out(n, psnr, seeds)


def test_the_trend_is_fitted_on_size_means_with_a_lack_of_fit_test():
    """Seeds of one size share its departure from the line: 2 seeds x 4 sizes regressed trial by trial (6 dof)
    call a rise the 4 size means (2 dof) cannot; the lack-of-fit F is the means' departures against the seeds."""
    rng = np.random.default_rng(7)
    n = np.repeat(1e4 * 2.0 ** np.arange(4), 2)
    departure = np.repeat([0.0, 0.25, -0.15, 0.2], 2)
    psnr = 33.0 + 0.2 * np.log2(n / 1e4) + departure + rng.normal(0.0, 0.02, n.size)
    t = size_trend(n, psnr)
    x = np.log2(n)
    per_trial = np.polyfit(x, psnr, 1)[0]
    resid = psnr - np.polyval(np.polyfit(x, psnr, 1), x)
    per_trial_half = stats.t.ppf(0.975, 6) * math.sqrt((resid**2).sum() / 6 / ((x - x.mean()) ** 2).sum())
    assert per_trial - per_trial_half > 0  # trial by trial: "rises"
    assert t.per_doubling == pytest.approx(per_trial) and (t.n_sizes, t.dof, t.n_trials) == (4, 2, 8)
    assert t.direction == "flat" and t.ci[0] < 0 < t.ci[1]
    assert t.detectable_db == pytest.approx((t.ci[1] - t.ci[0]) / 2)
    assert "the smallest slope it could detect is ±" in t.slope_words and "on 4 size means (2 dof" in t.slope_words
    # The F test, computed as the line against one mean per size (nested least squares on the 8 trials).
    sizes = np.unique(x)
    full = np.column_stack([x == s for s in sizes]).astype(float)
    line = np.column_stack([np.ones_like(x), x])
    rss = [float(np.linalg.lstsq(m, psnr, rcond=None)[1][0]) for m in (line, full)]
    f = ((rss[0] - rss[1]) / 2) / (rss[1] / 4)
    lof = t.lack_of_fit
    assert not lof.blocked and (lof.dof_num, lof.dof_den) == (2, 4) and lof.f == pytest.approx(f)
    assert lof.p == pytest.approx(stats.f.sf(f, 2, 4)) and lof.p < 0.01
    assert size_trend(n[:4], psnr[:4]) is None  # 2 sizes: no dof left


def test_the_lack_of_fit_blocks_on_seed_when_every_size_has_the_same_seeds():
    rng = np.random.default_rng(8)
    n = np.repeat(1e4 * 2.0 ** np.arange(5), 3)
    seeds = np.tile(np.arange(3), 5)
    offset = np.array([0.0, 0.5, -0.5])[seeds]  # a seed's offset, in every size alike
    psnr = 33.0 + 0.2 * np.log2(n / 1e4) + offset + rng.normal(0.0, 0.02, n.size)
    lof = size_trend(n, psnr, seeds).lack_of_fit
    assert lof.blocked and (lof.dof_num, lof.dof_den) == (3, 8) and lof.p > 0.01  # the offsets are not lack of fit
    assert size_trend(n, psnr).lack_of_fit.dof_den == 10  # without seeds: one-way pure error


def test_the_best_size_is_a_parabolas_peak_and_ties_are_a_range():
    n = 1e4 * 2.0 ** np.arange(5)
    peak = 1e4 * 2.0**2.3
    truth = 33.0 - 0.3 * (np.log2(n) - math.log2(peak)) ** 2
    exact = best_size(np.repeat(n, 3), np.repeat(truth, 3) + np.tile([0.0, 0.01, -0.01], 5), np.tile(range(3), 5))
    assert exact.peak == pytest.approx(peak, rel=1e-6) and exact.argmax == n[2]
    assert exact.ties == (n[2],)
    assert "the best size is 0.04M: it beats every other size beyond seed noise" in exact.words
    rng = np.random.default_rng(9)
    noisy = best_size(np.repeat(n, 3), np.repeat(truth, 3) + rng.normal(0.0, 0.3, 15), np.tile(range(3), 5))
    assert len(noisy.ties) > 1 and f"sizes {noisy.ties[0] / 1e6:.4g}M to {noisy.ties[-1] / 1e6:.4g}M tie" in noisy.words
    lo, hi = noisy.peak_ci or (0, math.inf)
    assert lo <= noisy.peak <= hi
    one = best_size(n, truth)
    assert one.ties is None and one.peak_ci is None
    assert one.words.startswith("the largest mean is 0.04M; one seed, so no noise verdict is possible")
