"""Seed noise: mean ± sd per cell over replicate seeds, and whether each axis's levels differ from its reference.

Conventions:

* A trial is a :class:`TrialScores`: its axes (axis -> value, with ``seed`` for a ``seeds: K``
  study) and its final headline PSNR per val image (set -> image -> dB), or only per set when
  the images were not kept. A trial with neither (failed, stopped before evaluating) is skipped.
* A trial's PSNR over some images is the mean over sets of the mean over that set's images:
  the same average as ``val_psnr``, what studies rank by, so a cell's mean matches the table.
* A *cell* is a trial's axes without ``seed``. Trials repeating a cell and seed (``num_samples``
  > 1 on a grid) are merged, image by image, into their mean.
* An axis compares each level with a reference level. A *context* fixes every other non-seed axis; for each
  context and each seed that has both levels, the pair's difference is taken over the images both trials
  have (per-set means when either lacks per-image data, counted in ``per_set_pairs``). Pairing removes what
  the two trials share: how hard each image is, and any offset a seed gives both levels.
* **The unit of replication is the seed.** A seed gives a level the same batches in every context, so a
  level's differences are averaged over contexts per seed first: contexts do not multiply the seeds (the
  level x seed interaction is a random effect that every context shares).
* **The error term** is the two-way residual of the level x seed table of those differences (the reference's
  row is 0), on ``(L - 1)(S - 1)`` degrees of freedom for L levels and S seeds (fewer where a seed lacks a
  level: the table is fitted by least squares). It assumes the levels' seed-to-seed variances are equal.
* **Family-wise control**: the L - 1 comparisons with the reference are one family, judged by Dunnett's
  procedure: simultaneous intervals ``mean ± q se``, ``q`` the quantile of max |T| under the multivariate t
  of the comparisons' correlation on the error term's dof (:func:`dunnett_critical`; ``scipy.stats.dunnett``
  computes the same quantile for a one-way layout, which would count ``L (S - 1)`` dof here).
* **Unequal variances**: the pooled error term assumes every level varies alike from seed to seed, and with
  2-3 seeds that cannot be checked (a level's own sd has S - 1 dof). So a level is also judged on its own
  variance: the Student t interval of its differences over its seeds (``own_ci_db``, S - 1 dof). A level is
  ``real`` only when both intervals exclude 0 on the same side. Simulated null studies whose levels' sds differ
  up to 10x then call any level real in at most 5% of studies (Dunnett alone: up to 12%;
  bench/stats_calibration.py). ``unequal`` names a level whose own sd is more than :data:`VARIANCE_FACTOR`
  from the median of the levels' (either way; 3+ levels, each sd on 2+ dof): there the equal-variance
  assumption is visibly wrong and its own interval is the one to read.
* The verdict is ``within seed noise`` when either interval holds 0, and ``no replicates`` below 2 seeds with
  pairs (or no dof left): one seed says nothing about seed noise, whatever the number of contexts.
  ``detectable_db`` is the larger half-width: the smallest difference this design would call real.
* :func:`seed_noise` is the pooled within-cell sd of a trial's PSNR over seeds,
  ``sqrt(sum (k_i - 1) s_i^2 / sum (k_i - 1))`` over cells of ``k_i >= 2`` seeds: the sd of
  one trial's PSNR from seed to seed. A paired difference of independent trials has about
  ``sqrt(2)`` times that sd, less when the seeds' offsets are shared.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, stats

from hiir.platform.study.axes import SEED_AXIS

__all__ = ["TrialScores", "CellStats", "AxisEffect", "SeedNoise", "cell_stats", "axis_effects", "seed_noise",
           "dunnett_critical", "two_way", "VARIANCE_FACTOR"]

REAL, WITHIN_NOISE, NO_REPLICATES = "real", "within seed noise", "no replicates"
VARIANCE_FACTOR = 4.0  # a level whose own sd is this far from the others' (either way) is named

Key = tuple[tuple[str, Any], ...]  # a cell or a context: sorted (axis, value) pairs


@dataclass(frozen=True)
class TrialScores:
    """One trial: its axes (with ``seed``) and its headline PSNR per val image or, failing that, per set."""

    axes: Mapping[str, Any]
    per_image: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # set -> image -> dB
    per_set: Mapping[str, float] = field(default_factory=dict)  # set -> dB; used where per_image lacks a set


@dataclass(frozen=True)
class CellStats:
    """Mean ± sd (ddof 1, NaN for one seed) over seeds of a cell's mean PSNR, in dB."""

    cell: dict[str, Any]
    mean_db: float
    sd_db: float
    n_seeds: int

    @property
    def sentence(self) -> str:
        sd = "n/a" if math.isnan(self.sd_db) else f"{self.sd_db:.2f}"
        return f"{self.mean_db:.2f} ± {sd} dB ({self.n_seeds} seed{'s' * (self.n_seeds != 1)})"


@dataclass(frozen=True)
class AxisEffect:
    """``level`` minus ``reference`` on ``axis``, paired by seed and val image and averaged over contexts, in dB.

    ``ci_db`` is the Dunnett interval at level ``ci`` over the axis's ``family`` comparisons on the two-way
    residual's ``dof``; ``own_ci_db`` the level's own t interval over its seeds; ``detectable_db`` the larger
    half-width. ``sd_db`` is the sd over seeds of the level's own differences and ``pooled_sd_db`` the sd a
    difference has under the equal-variance error term; ``unequal`` names a level whose sd is out of line.
    ``n_pairs`` (context, seed) pairs over ``n_seeds`` seeds and ``n_contexts`` contexts; ``per_set_pairs`` of
    them were compared on per-set means.
    """

    axis: str
    level: Any
    reference: Any
    mean_db: float
    ci_db: tuple[float, float]
    sd_db: float
    n_pairs: int
    n_seeds: int
    n_contexts: int
    per_set_pairs: int
    verdict: str
    ci: float = 0.95
    own_ci_db: tuple[float, float] = (math.nan, math.nan)
    detectable_db: float = math.nan
    dof: int = 0
    family: int = 1
    unequal: bool = False
    pooled_sd_db: float = math.nan

    @property
    def sentence(self) -> str:
        """One line, e.g. ``attention cosine vs dot: -0.12 dB [-0.20, -0.04], own [-0.25, +0.01], over 3 seeds
        (2 contexts): within seed noise``."""
        head = f"{self.axis} {self.level} vs {self.reference}: "
        if self.n_pairs == 0:
            return head + f"no paired trials: {self.verdict}"
        seeds = f"{self.n_seeds} seed{'s' * (self.n_seeds != 1)}"
        where = f" ({self.n_contexts} contexts)" if self.n_contexts > 1 else ""
        note = f" ({self.per_set_pairs} pairs on per-set means: no per-image data)" if self.per_set_pairs else ""
        if self.verdict == NO_REPLICATES:
            return head + f"{self.mean_db:+.2f} dB from {seeds}{where}{note}: {self.verdict} (needs 2+ seeds per cell)"
        (lo, hi), (own_lo, own_hi) = self.ci_db, self.own_ci_db
        unequal = f"; its sd is over {VARIANCE_FACTOR:g}x from the levels' median" if self.unequal else ""
        return (head + f"{self.mean_db:+.2f} dB [{lo:+.2f}, {hi:+.2f}], own [{own_lo:+.2f}, {own_hi:+.2f}], over "
                f"{seeds}{where}{note}{unequal}: {self.verdict}")


@dataclass(frozen=True)
class SeedNoise:
    """Pooled within-cell sd of a trial's PSNR over seeds (dB; NaN without replicates)."""

    sd_db: float
    dof: int  # sum over cells of (seeds - 1)
    n_cells: int  # cells with 2+ seeds

    @property
    def sentence(self) -> str:
        if self.dof == 0:
            return "seed noise: no replicates (seeds: 1), so no difference can be called real"
        return f"seed noise: sd {self.sd_db:.3f} dB per trial (pooled over {self.n_cells} cells, {self.dof} dof)"


def cell_stats(trials: Iterable[TrialScores]) -> list[CellStats]:
    """Per cell (all axes but seed), mean ± sd over seeds of the trial mean PSNR, in first-seen order."""
    by_cell: dict[Key, list[float]] = {}
    for (cell, _seed), scores in _by_cell_and_seed(trials).items():
        by_cell.setdefault(cell, []).append(_mean_psnr(scores))
    rows = []
    for cell, values in by_cell.items():
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        rows.append(CellStats(dict(cell), float(np.mean(values)), sd, len(values)))
    return rows


def seed_noise(trials: Iterable[TrialScores]) -> SeedNoise:
    """The pooled within-cell sd over seeds (see the module docstring), once per study."""
    rows = [r for r in cell_stats(trials) if r.n_seeds > 1]
    dof = sum(r.n_seeds - 1 for r in rows)
    if dof == 0:
        return SeedNoise(math.nan, 0, 0)
    pooled = sum((r.n_seeds - 1) * r.sd_db**2 for r in rows) / dof
    return SeedNoise(math.sqrt(pooled), dof, len(rows))


def axis_effects(
    trials: Iterable[TrialScores], reference: Mapping[str, Any] | None = None, *, ci: float = 0.95
) -> list[AxisEffect]:
    """Every non-seed axis's levels against its reference level (``reference[axis]``, else the first seen).

    Axes with one level give no effect. See the module docstring for pairing, the error term and verdicts.
    """
    merged = _by_cell_and_seed(trials)
    effects = []
    for axis, levels in _levels(merged).items():
        ref = (reference or {}).get(axis, levels[0])
        if ref not in levels:
            raise ValueError(f"reference level {ref!r} of axis {axis!r} is not among its levels {levels}")
        by_level = {level: _pairs(merged, axis, level, ref) for level in levels if level != ref}
        effects += _judge(axis, ref, by_level, ci)
    return effects


# ------------------------------------------------------------------------------------------- the error term


@dataclass(frozen=True)
class TwoWay:
    """The level x seed table of differences from the reference fitted by least squares (levels + seeds)."""

    means: np.ndarray       # per compared level, its estimated difference from the reference
    cov: np.ndarray         # their covariance, per unit of the residual variance
    residual_var: float     # the two-way residual mean square (NaN without dof)
    dof: int


def two_way(table: np.ndarray) -> TwoWay:
    """Fit ``d[l, s] = theta_l + beta_s`` to ``table`` (levels x seeds, NaN where a seed lacks a level), with
    a reference row of zeros added: the difference table's residuals are those of the PSNR table itself, since a
    seed's reference value is a seed effect. Returns each ``theta_l``, their covariance per unit variance and
    the residual mean square on ``cells - levels - seeds + 1`` dof."""
    m, s = table.shape
    full = np.vstack([np.zeros((1, s)), table])
    rows, cols = np.nonzero(np.isfinite(full))
    x = np.zeros((rows.size, m + s))
    x[rows > 0, rows[rows > 0] - 1] = 1.0
    x[np.arange(rows.size), m + cols] = 1.0
    y = full[rows, cols]
    xtx_inv = np.linalg.pinv(x.T @ x)
    coef = xtx_inv @ x.T @ y
    dof = int(rows.size - np.linalg.matrix_rank(x))
    residual = y - x @ coef
    var = float(residual @ residual / dof) if dof > 0 else math.nan
    return TwoWay(coef[:m], xtx_inv[:m, :m], var, dof)


def dunnett_critical(corr: np.ndarray, dof: int, ci: float = 0.95, *, two_sided: bool = True) -> float:
    """The ``ci`` quantile of max |T_i| (or max T_i, one-sided) for T multivariate t with correlation ``corr`` on
    ``dof`` degrees of freedom: Dunnett's critical value. One comparison is Student's t."""
    key = tuple(tuple(round(float(v), 3) for v in row) for row in np.atleast_2d(corr))
    return _critical(key, int(dof), float(ci), two_sided)


@functools.lru_cache(maxsize=512)
def _critical(corr: tuple[tuple[float, ...], ...], dof: int, ci: float, two_sided: bool) -> float:
    m = len(corr)
    one = float(stats.t.ppf(0.5 + ci / 2 if two_sided else ci, dof))
    if m == 1:
        return one
    bonferroni = float(stats.t.ppf(1 - (1 - ci) / (2 if two_sided else 1) / m, dof))
    # scipy's randomised QMC integral, seeded so that a study's report is the same every time it is written
    mvt = stats.multivariate_t(shape=np.asarray(corr), df=dof, allow_singular=True)

    def excess(c: float) -> float:
        upper = np.full(m, c)
        return float(mvt.cdf(upper, lower_limit=-upper if two_sided else None, random_state=0)) - ci

    return float(optimize.brentq(excess, 0.95 * one, 1.05 * bonferroni, xtol=1e-4))


def _judge(axis: str, ref: Any, by_level: dict[Any, list[tuple[Key, Any, float, bool]]], ci: float
           ) -> list[AxisEffect]:
    """One axis's family of comparisons with the reference (see the module docstring)."""
    levels = list(by_level)
    table = _seed_table(by_level)
    counts = np.isfinite(table).sum(axis=1)
    own_mean = np.array([np.nanmean(row) if n else math.nan for row, n in zip(table, counts)])
    means = own_mean.copy()
    own_sd = np.array([np.nanstd(row, ddof=1) if n > 1 else math.nan for row, n in zip(table, counts)])
    own_half = np.array([float(stats.t.ppf(0.5 + ci / 2, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
                         for sd, n in zip(own_sd, counts)])
    judged = counts > 0
    m = int(judged.sum())  # the family: every level with a pair
    half, pooled_sd, dof = np.full(len(levels), math.nan), math.nan, 0
    fit = two_way(table[judged]) if judged.any() else None
    if fit is not None and fit.dof > 0:
        se = np.sqrt(np.diag(fit.cov) * fit.residual_var)
        corr = fit.cov / np.sqrt(np.outer(np.diag(fit.cov), np.diag(fit.cov)))
        half[judged] = dunnett_critical(corr, fit.dof, ci) * se
        means[judged] = fit.means  # least squares: balanced over seeds where a seed lacks a level
        pooled_sd, dof = math.sqrt(2 * fit.residual_var), fit.dof
    unequal = _unequal(own_sd, counts)
    out = []
    for i, level in enumerate(levels):
        pairs = by_level[level]
        ci_db = (means[i] - half[i], means[i] + half[i])
        own_ci = (own_mean[i] - own_half[i], own_mean[i] + own_half[i])
        if counts[i] < 2 or not math.isfinite(half[i]):
            verdict, ci_db, own_ci = NO_REPLICATES, (math.nan, math.nan), (math.nan, math.nan)
        else:
            above, below = min(ci_db[0], own_ci[0]) > 0.0, max(ci_db[1], own_ci[1]) < 0.0
            verdict = REAL if above or below else WITHIN_NOISE
        out.append(AxisEffect(axis, level, ref, float(means[i]) if pairs else math.nan,
                              tuple(float(v) for v in ci_db), float(own_sd[i]), len(pairs), int(counts[i]),
                              len({p[0] for p in pairs}), sum(p[3] for p in pairs), verdict, float(ci),
                              tuple(float(v) for v in own_ci), float(max(half[i], own_half[i])), dof, m,
                              bool(unequal[i]), pooled_sd))
    return out


def _seed_table(by_level: dict[Any, list[tuple[Key, Any, float, bool]]]) -> np.ndarray:
    """Levels x seeds: each level's difference from the reference averaged over the contexts of that seed (NaN
    where the seed has no pair for the level). The seed is the unit: its contexts share its batches."""
    seeds = sorted({p[1] for pairs in by_level.values() for p in pairs}, key=str)
    table = np.full((len(by_level), len(seeds)), np.nan)
    for i, pairs in enumerate(by_level.values()):
        per_seed: dict[Any, list[float]] = {}
        for _context, seed, diff, _on_means in pairs:
            per_seed.setdefault(seed, []).append(diff)
        for seed, diffs in per_seed.items():
            table[i, seeds.index(seed)] = float(np.mean(diffs))
    return table


def _unequal(own_sd: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Levels whose own sd is more than VARIANCE_FACTOR from the median of the levels' sds (either way), where 3+
    levels have an sd on 2+ dof (3+ seeds): with 2 seeds an sd on 1 dof cannot show a factor, and with 2 levels
    neither is the odd one out."""
    ok = (counts >= 3) & np.isfinite(own_sd)
    if ok.sum() < 3 or np.median(own_sd[ok]) <= 0:
        return np.zeros(own_sd.size, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = own_sd / float(np.median(own_sd[ok]))
    return ok & ((ratio > VARIANCE_FACTOR) | (ratio < 1 / VARIANCE_FACTOR))


# ------------------------------------------------------------------------------------------- pairing


def _by_cell_and_seed(trials: Iterable[TrialScores]) -> dict[tuple[Key, Any], TrialScores]:
    """(cell, seed) -> the trial, repeats merged into their mean; trials without scores dropped."""
    groups: dict[tuple[Key, Any], list[TrialScores]] = {}
    for t in trials:
        if _set_means(t):
            cell = _key({k: v for k, v in t.axes.items() if k != SEED_AXIS})
            groups.setdefault((cell, t.axes.get(SEED_AXIS)), []).append(t)
    return {key: ts[0] if len(ts) == 1 else _merge(ts) for key, ts in groups.items()}


def _merge(trials: list[TrialScores]) -> TrialScores:
    """Mean per image and per set over repeats of one cell and seed."""
    images: dict[str, dict[str, list[float]]] = {}
    sets: dict[str, list[float]] = {}
    for t in trials:
        for name, per in _finite_images(t).items():
            for image, value in per.items():
                images.setdefault(name, {}).setdefault(image, []).append(value)
        for name, value in _set_means(t).items():
            sets.setdefault(name, []).append(value)
    per_image = {s: {i: float(np.mean(v)) for i, v in per.items()} for s, per in images.items()}
    return TrialScores(trials[0].axes, per_image, {s: float(np.mean(v)) for s, v in sets.items()})


def _key(axes: Mapping[str, Any]) -> Key:
    """A cell or context as a hashable key (axis values must be hashable; MLflow's are strings)."""
    return tuple(sorted(axes.items(), key=lambda kv: kv[0]))


def _finite_images(t: TrialScores) -> dict[str, dict[str, float]]:
    """set -> image -> dB, without NaN/inf values or empty sets."""
    out = {s: {i: float(v) for i, v in per.items() if math.isfinite(v)} for s, per in t.per_image.items()}
    return {s: per for s, per in out.items() if per}


def _set_means(t: TrialScores) -> dict[str, float]:
    """set -> mean PSNR: over its images where there are some, else the trial's per-set value."""
    out = {s: float(v) for s, v in t.per_set.items() if math.isfinite(v)}
    out.update({s: float(np.mean(list(per.values()))) for s, per in _finite_images(t).items()})
    return out


def _mean_psnr(t: TrialScores) -> float:
    """The trial's PSNR: mean over sets of the per-set mean (as ``val_psnr``)."""
    return float(np.mean(list(_set_means(t).values())))


def _levels(merged: Mapping[tuple[Key, Any], TrialScores]) -> dict[str, list[Any]]:
    """Non-seed axis -> its levels in first-seen order (every axis, single-level ones dropped)."""
    levels: dict[str, list[Any]] = {}
    for cell, _seed in merged:
        for axis, value in cell:
            if value not in levels.setdefault(axis, []):
                levels[axis].append(value)
    return {axis: values for axis, values in levels.items() if len(values) > 1}


def _pairs(
    merged: Mapping[tuple[Key, Any], TrialScores], axis: str, level: Any, ref: Any
) -> list[tuple[Key, Any, float, bool]]:
    """(context, seed, level - reference in dB, compared on per-set means) for every context and seed with both."""
    out = []
    for (cell, seed), trial in merged.items():
        values = dict(cell)
        if values.get(axis) != level:
            continue
        other = merged.get((_key({**values, axis: ref}), seed))
        if other is not None:
            diff = _paired_difference(trial, other)
            if diff is not None:
                context = tuple((k, v) for k, v in cell if k != axis)
                out.append((context, seed, *diff))
    return out


def _paired_difference(t: TrialScores, ref: TrialScores) -> tuple[float, bool] | None:
    """Mean over common sets of the per-set difference on common images (per-set means where
    either lacks the set's images); None without a common set. Second value: any set on means."""
    t_images, r_images, t_sets, r_sets = _finite_images(t), _finite_images(ref), _set_means(t), _set_means(ref)
    diffs, on_means = [], False
    for name in t_sets.keys() & r_sets.keys():
        common = t_images.get(name, {}).keys() & r_images.get(name, {}).keys()
        if common:
            diffs.append(float(np.mean([t_images[name][i] - r_images[name][i] for i in common])))
        else:
            diffs.append(t_sets[name] - r_sets[name])
            on_means = True
    return (float(np.mean(diffs)), on_means) if diffs else None
