"""Seed-noise verdicts on synthetic studies: real effects are found, and a study with no effect calls any level
real at most 5% of the time (family-wise), whatever its number of levels, contexts or its levels' variances.

Throughout, ``SD`` is the seed noise as :func:`seed_noise` defines it: the sd, from seed to seed,
of one trial's mean PSNR within a cell. The synthetic PSNR of an image is
``30 + image offset + seed offset + level shift + trial noise + image noise``: the image and seed
offsets are shared by both levels (what pairing removes), the trial noise ~ N(0, SD_T) and the
image noise ~ N(0, SD_I) are drawn per trial, and ``SD_T**2 + SD_I**2 / IMAGES == SD**2``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
from scipy import stats

from hiir.platform.results.noise import (
    NO_REPLICATES,
    REAL,
    WITHIN_NOISE,
    TrialScores,
    axis_effects,
    cell_stats,
    dunnett_critical,
    seed_noise,
)

SD = 0.05  # dB
IMAGES = 6
SD_I = 0.04
SD_T = math.sqrt(SD**2 - SD_I**2 / IMAGES)


def _study(effect, *, seed=0, seeds=5, contexts=("2", "3"), image_spread=0.0, seed_spread=0.0, sd_t=SD_T):
    """Trials of an ``attention`` axis (dot, cosine = dot + effect) in each ``depth`` context."""
    rng = np.random.default_rng(seed)
    image_offset = rng.normal(0.0, image_spread, IMAGES)
    seed_offset = rng.normal(0.0, seed_spread, seeds)
    trials = []
    for depth in contexts:
        for level, shift in (("dot", 0.0), ("cosine", effect)):
            for s in range(seeds):
                psnr = 30.0 + image_offset + seed_offset[s] + shift + rng.normal(0.0, sd_t) \
                    + rng.normal(0.0, SD_I, IMAGES)
                per_image = {"val": {f"img{i}": float(v) for i, v in enumerate(psnr)}}
                trials.append(TrialScores({"attention": level, "depth": depth, "seed": s}, per_image))
    return trials


def _attention(effects):
    (effect,) = [e for e in effects if e.axis == "attention"]
    return effect


def test_an_effect_of_3_sd_is_real_and_one_of_0_3_sd_is_within_seed_noise():
    big = _attention(axis_effects(_study(3 * SD, seed=1)))
    small = _attention(axis_effects(_study(0.3 * SD, seed=1)))
    assert big.verdict == REAL and big.ci_db[0] > 0
    assert big.mean_db == pytest.approx(3 * SD, abs=1.5 * SD)
    assert small.verdict == WITHIN_NOISE and small.ci_db[0] < 0 < small.ci_db[1]
    assert (big.n_pairs, big.n_seeds, big.n_contexts, big.per_set_pairs) == (10, 5, 2, 0)
    assert (big.level, big.reference) == ("cosine", "dot")  # the first level seen is the reference
    # Per seed, the difference averaged over 2 contexts: sqrt(2) SD / sqrt(2) of seed noise.
    assert big.sd_db == pytest.approx(SD, rel=0.6)
    assert big.sentence.startswith("attention cosine vs dot: +0.1") and big.sentence.endswith(
        "over 5 seeds (2 contexts): real")
    lo, hi = big.ci_db
    assert big.detectable_db == pytest.approx(max(hi - lo, big.own_ci_db[1] - big.own_ci_db[0]) / 2)


def _bound(rate: float, n: int) -> float:
    """A rate of at most `rate` measured over `n` draws stays below this but for a 0.1% chance (3.1 sd)."""
    return rate + 3.1 * math.sqrt(rate * (1 - rate) / n)


def test_an_effect_of_3_sd_is_found_in_nearly_every_study_and_no_effect_in_at_most_5_percent():
    """Over 300 studies of 5 seeds x 2 contexts. The false 'real' rate is one-sided: it must not exceed 5%
    (an interval that calls less real is conservative, not wrong)."""
    def rate(effect):
        return np.mean([_attention(axis_effects(_study(effect, seed=s))).verdict == REAL for s in range(300)])

    assert rate(3 * SD) >= 0.95
    assert rate(0.0) <= _bound(0.05, 300)


def test_seed_noise_is_the_pooled_within_cell_sd():
    noise = seed_noise(_study(0.0, seed=2, seeds=8, contexts=("2", "3", "4", "5")))
    assert (noise.n_cells, noise.dof) == (8, 8 * 7)
    assert noise.sd_db == pytest.approx(SD, rel=0.25)  # relative sd of s with 56 dof is about 10%
    assert "pooled over 8 cells" in noise.sentence
    trials = [TrialScores({"depth": "2", "seed": s}, per_set={"val": v}) for s, v in enumerate((30.0, 30.2, 30.4))]
    trials += [TrialScores({"depth": "3", "seed": s}, per_set={"val": v}) for s, v in enumerate((31.0, 31.4))]
    # cells' variances 0.04 (2 dof) and 0.08 (1 dof): pooled (2 * 0.04 + 0.08) / 3
    assert seed_noise(trials).sd_db == pytest.approx(math.sqrt(0.16 / 3))


def test_cell_stats_are_mean_and_sd_over_seeds_of_the_mean_psnr():
    trials = [
        TrialScores({"depth": "2", "seed": 0}, {"a": {"x": 30.0, "y": 32.0}, "b": {"z": 20.0}}),  # (31 + 20) / 2
        TrialScores({"depth": "2", "seed": 1}, {"a": {"x": 30.0, "y": 34.0}, "b": {"z": 21.0}}),  # (32 + 21) / 2
        TrialScores({"depth": "3", "seed": 0}, per_set={"a": 30.0, "b": 22.0}),
        TrialScores({"depth": "3", "seed": 1}),  # failed before evaluating: skipped
    ]
    rows = {r.cell["depth"]: r for r in cell_stats(trials)}
    assert rows["2"].mean_db == pytest.approx(26.0) and rows["2"].n_seeds == 2
    assert rows["2"].sd_db == pytest.approx(math.sqrt(0.5))
    assert rows["3"].mean_db == pytest.approx(26.0) and rows["3"].n_seeds == 1 and math.isnan(rows["3"].sd_db)
    assert rows["2"].sentence == "26.00 ± 0.71 dB (2 seeds)" and "n/a" in rows["3"].sentence
    assert rows["2"].cell == {"depth": "2"}


def test_pairing_by_seed_and_image_finds_an_effect_that_the_unpaired_spread_hides():
    """Images differ by 3 dB and seeds shift both levels by 1 dB; the effect is 0.1 dB."""
    trials = _study(0.1, seed=3, image_spread=3.0, seed_spread=1.0, sd_t=0.02)
    # One trial lost its hardest image: its mean rises by about half a dB, its paired difference does not.
    hard = min(trials[0].per_image["val"], key=trials[0].per_image["val"].get)
    lost = next(t for t in trials if t.axes == {"attention": "cosine", "depth": "2", "seed": 0})
    del lost.per_image["val"][hard]
    effect = _attention(axis_effects(trials))
    assert effect.verdict == REAL and effect.mean_db == pytest.approx(0.1, abs=0.03)
    # Unpaired: the two levels' trial means as two samples (Welch), and the seed noise of a cell.
    per_trial = {lvl: [np.mean(list(t.per_image["val"].values())) for t in trials if t.axes["attention"] == lvl]
                 for lvl in ("dot", "cosine")}
    unpaired = stats.ttest_ind(per_trial["cosine"], per_trial["dot"], equal_var=False)
    assert unpaired.pvalue > 0.05, "the unpaired comparison should not see a 0.1 dB effect under 1 dB seed offsets"
    assert seed_noise(trials).sd_db > 5 * 0.1  # the seed offsets dominate the unpaired spread
    # The same trials without the image pairing (per-set means only) are biased by the lost image.
    by_set = [TrialScores(t.axes, per_set={"val": float(np.mean(list(t.per_image["val"].values())))})
              for t in trials]
    on_means = _attention(axis_effects(by_set))
    assert on_means.per_set_pairs == 10 and "10 pairs on per-set means: no per-image data" in on_means.sentence
    assert abs(on_means.mean_db - 0.1) > abs(effect.mean_db - 0.1)


def test_missing_trials_leave_too_few_pairs_for_a_verdict():
    trials = _study(3 * SD, seed=4, seeds=3, contexts=("2",))
    # cosine seeds 1 and 2 failed (no scores) or never ran: one pair is left.
    kept = [t for t in trials if not (t.axes["attention"] == "cosine" and t.axes["seed"] == 2)]
    kept = [TrialScores(t.axes) if t.axes["attention"] == "cosine" and t.axes["seed"] == 1 else t for t in kept]
    effects = axis_effects(kept)
    assert [e.axis for e in effects] == ["attention"]  # depth has one level: no effect
    (effect,) = effects
    assert effect.n_pairs == 1 and effect.verdict == NO_REPLICATES and math.isnan(effect.ci_db[0])
    assert "from 1 seed:" in effect.sentence and effect.sentence.endswith("(needs 2+ seeds per cell)")
    # A context whose other level never ran gives no pair at all.
    only_dot = [t for t in trials if t.axes["attention"] == "dot"] + [
        TrialScores({"attention": "cosine", "depth": "9", "seed": 0}, per_set={"val": 30.0})]
    (none,) = [e for e in axis_effects(only_dot) if e.axis == "attention"]
    assert none.n_pairs == 0 and none.verdict == NO_REPLICATES and "no paired trials" in none.sentence


def test_a_single_seed_study_has_no_replicates_whatever_its_contexts():
    trials = [TrialScores({k: v for k, v in t.axes.items() if k != "seed"}, t.per_image)
              for t in _study(10 * SD, seed=5, seeds=1, contexts=("2", "3", "4", "5"))]
    effect = _attention(axis_effects(trials))
    assert effect.n_pairs == 4 and effect.n_seeds == 1 and effect.verdict == NO_REPLICATES
    noise = seed_noise(trials)
    assert noise.dof == 0 and math.isnan(noise.sd_db) and "no replicates" in noise.sentence
    assert all(r.n_seeds == 1 for r in cell_stats(trials))


def test_levels_against_a_chosen_reference_and_repeats_merged():
    trials = [TrialScores({"lr": lr, "seed": s}, per_set={"val": 30.0 + d + 0.01 * s * (lr == "2e-4")})
              for lr, d in (("1e-4", 0.0), ("2e-4", 0.5), ("4e-4", -0.3)) for s in range(3)]
    trials.append(TrialScores({"lr": "4e-4", "seed": 0}, per_set={"val": 29.9}))  # a repeat of a cell and seed
    effects = {e.level: e for e in axis_effects(trials, reference={"lr": "2e-4"})}
    assert set(effects) == {"1e-4", "4e-4"} and all(e.reference == "2e-4" for e in effects.values())
    assert effects["1e-4"].mean_db == pytest.approx(-0.51) and effects["1e-4"].verdict == REAL
    assert effects["4e-4"].n_pairs == 3 and effects["4e-4"].mean_db == pytest.approx((-0.70 - 0.81 - 0.82) / 3)
    assert [r.n_seeds for r in cell_stats(trials)] == [3, 3, 3]
    with pytest.raises(ValueError, match="not among its levels"):
        axis_effects(trials, reference={"lr": "3e-4"})
    json.dumps([asdict(e) for e in effects.values()])


def _sizes(shifts, *, seed, seeds=2):
    """A 4-level size axis with `seeds` seeds each; per-set PSNR = 30 + shift + a seed's offset (shared by every
    size) + trial noise (SD)."""
    rng = np.random.default_rng(seed)
    offset = rng.normal(0.0, 0.1, seeds)
    return [TrialScores({"size": name, "seed": s},
                        per_set={"val": 30.0 + shift + offset[s] + float(rng.normal(0.0, SD))})
            for name, shift in shifts.items() for s in range(seeds)]


def test_a_null_size_axis_calls_any_level_real_in_at_most_5_percent_of_studies():
    """The family-wise property itself: 600 null studies of 4 sizes x 2 seeds, any of 3 levels called real.
    Judging each level at 95% alone called some level real in 13% of such studies."""
    flat = {"0.05M": 0.0, "0.1M": 0.0, "0.2M": 0.0, "0.4M": 0.0}
    any_real = [any(e.verdict == REAL for e in axis_effects(_sizes(flat, seed=s))) for s in range(600)]
    assert np.mean(any_real) <= _bound(0.05, 600), np.mean(any_real)
    step = {"0.05M": 0.0, "0.1M": 0.0, "0.2M": 8 * SD, "0.4M": 8 * SD}
    found = [e.verdict == REAL for s in range(200) for e in axis_effects(_sizes(step, seed=s, seeds=3))
             if e.level != "0.1M"]
    assert np.mean(found) >= 0.9, np.mean(found)


def test_levels_whose_variances_differ_10x_still_hold_the_family_wise_rate():
    """One level 10x noisier than the others: the pooled error term alone calls it real far too often; its own
    interval keeps the study's rate within 5%, and with 5 seeds the level is named."""
    def study(seed, seeds):
        rng = np.random.default_rng(seed)
        sds = {"a": SD, "b": SD, "c": 10 * SD, "d": SD}
        offset = rng.normal(0.0, 0.1, seeds)
        return [TrialScores({"lr": lvl, "seed": s}, per_set={"val": 30.0 + offset[s] + float(rng.normal(0, sd))})
                for lvl, sd in sds.items() for s in range(seeds)]

    any_real = [any(e.verdict == REAL for e in axis_effects(study(s, 3))) for s in range(400)]
    assert np.mean(any_real) <= _bound(0.05, 400), np.mean(any_real)
    named = [{e.level for e in axis_effects(study(s, 5)) if e.unequal} for s in range(100)]
    assert np.mean(["c" in n for n in named]) >= 0.7 and np.mean([bool(n - {"c"}) for n in named]) <= 0.1


def test_contexts_do_not_multiply_the_seeds():
    """2 seeds x 5 contexts of 2 levels: the seed is the unit, so the error term has (2-1)(2-1) = 1 dof, not the
    9 that counting each context x seed pair as independent gave."""
    effect = _attention(axis_effects(_study(3 * SD, seed=6, seeds=2, contexts=tuple("23456"))))
    assert (effect.n_pairs, effect.n_seeds, effect.n_contexts, effect.dof) == (10, 2, 5, 1)
    lo, hi = effect.ci_db
    se = effect.pooled_sd_db / math.sqrt(2)  # a mean of 2 seeds' differences
    assert (hi - lo) / 2 == pytest.approx(stats.t.ppf(0.975, 1) * se, rel=1e-6)


def test_dunnett_critical_value_is_scipys_for_a_one_way_layout():
    """scipy.stats.dunnett's interval for 3 groups and a control of 4 each (12 dof, correlation 1/2) has the
    half-width our critical value gives; one comparison is Student's t."""
    rng = np.random.default_rng(0)
    control, *groups = (rng.normal(0.0, 1.0, 4) for _ in range(4))
    res = stats.dunnett(*groups, control=control, rng=1)
    half = (res.confidence_interval().high - res.confidence_interval().low) / 2
    pooled = np.sqrt(np.mean([np.var(g, ddof=1) for g in (control, *groups)]))
    q = dunnett_critical(np.full((3, 3), 0.5) + 0.5 * np.eye(3), 12)
    np.testing.assert_allclose(half, q * pooled * math.sqrt(2 / 4), rtol=0.01)
    assert dunnett_critical(np.eye(1), 5) == pytest.approx(stats.t.ppf(0.975, 5))
