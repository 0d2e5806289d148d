"""The size axis, answered on size means: the trend per doubling with its lack of fit, the law's held-out check
against two naive predictors, and the best size at a compute budget (IsoFLOP).

Conventions:

* The unit of replication is the seed, and a size's seeds are not independent points on a size trend: they
  share the size's departure from any line or law. Every fit here is on the size means (the mean over seeds
  of the headline PSNR), one point per size; the seeds measure noise only.
* The size is the parameter count the caller passes (a study passes the body count, `trials.Trial`), and
  sizes are told apart by exact value: the caller maps a size class to one count.
* **Trend** (:func:`size_trend`): the least-squares slope of the k size means against log2(size), in dB per
  doubling, with a Student t interval on k - 2 dof. ``detectable_db`` is that interval's half-width: the
  slope at which it would exclude 0. With replicate seeds a lack-of-fit F test sets the departures of the
  means from the line against the seed noise (blocked on seed when every size has the same seeds).
* **Law** (:func:`held_out`): only with :data:`LAW_MIN_SIZES` sizes or more, so that the law fitted without
  the largest size still has a residual degree of freedom. The largest size is predicted three ways: the
  law, the mean of the fitted sizes, and a straight line in log2 N through them. The law *predicts* only when
  it is identified (alpha's interval off its bounds, the fitted sizes rising beyond their scatter) and beats
  both naive predictors by more than the held-out size's own seed standard error.
* **Best size at a budget** (:func:`best_size`): the peak of a parabola in log2 N through the size means, with
  a t interval from the seeds' own parabolas (3+ seeds); the sizes that may be best are those Hsu's
  multiple comparisons with the best cannot exclude (one-sided Dunnett on the size x seed residual).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from scipy import stats

from hiir.models import format_size
from hiir.platform.results.noise import dunnett_critical, two_way
from hiir.platform.results.scaling import ALPHA_MAX, N_BOOT, PowerLawFit, fit_power_law, mse_to_psnr, psnr_to_mse

__all__ = ["LAW_MIN_SIZES", "MIN_INTERVAL_SEEDS", "Trend", "LackOfFit", "HeldOut", "BestSize", "size_trend",
           "held_out", "best_size", "size_means", "fmt_size"]

LAW_MIN_SIZES = 5        # 4 fitted (one residual dof for a 3-parameter law) and the largest held out
MIN_INTERVAL_SEEDS = 3   # an interval computed across seeds needs this many
_BOUND_SLACK = 0.01      # alpha this close to 0 or ALPHA_MAX is on its bound


@dataclass(frozen=True)
class SizeMeans:
    """Per size (ascending): the per-seed values, their mean and sd."""

    sizes: np.ndarray
    values: list[np.ndarray]
    seeds: list[list[Any]]

    @property
    def means(self) -> np.ndarray:
        return np.array([v.mean() for v in self.values])

    @property
    def counts(self) -> np.ndarray:
        return np.array([v.size for v in self.values])

    def table(self) -> tuple[np.ndarray, list[Any]]:
        """Sizes x seeds (NaN where a seed lacks a size), over the seeds that any size has."""
        seeds = sorted({s for row in self.seeds for s in row}, key=str)
        out = np.full((self.sizes.size, len(seeds)), np.nan)
        for i, (row, vals) in enumerate(zip(self.seeds, self.values)):
            for s, v in zip(row, vals):
                out[i, seeds.index(s)] = v
        return out, seeds


def size_means(params: Any, psnrs: Any, seeds: Any = None) -> SizeMeans:
    """Group per-trial values by exact size (ascending); ``seeds`` labels the trials (default: their order)."""
    n = np.asarray(params, dtype=np.float64).ravel()
    y = np.asarray(psnrs, dtype=np.float64).ravel()
    labels = list(range(n.size)) if seeds is None else list(seeds)
    sizes = np.unique(n)
    return SizeMeans(sizes, [y[n == s] for s in sizes], [[labels[i] for i in np.flatnonzero(n == s)] for s in sizes])


def fmt_size(count: float) -> str:
    """A size for a sentence: `models.format_size`, in M below 10k too (a body count can be that small)."""
    return format_size(count) if count >= 1e4 else f"{count / 1e6:.3g}M"


# ------------------------------------------------------------------------------------------- trend


@dataclass(frozen=True)
class LackOfFit:
    """F test of the size means' departures from the line against seed noise."""

    f: float
    dof_num: int
    dof_den: int
    p: float
    blocked: bool  # pure error from the size x seed residual (every size has the same seeds)

    @property
    def sentence(self) -> str:
        return f"lack of fit F({self.dof_num}, {self.dof_den}) = {self.f:.2f}, p = {self.p:.2g}"


@dataclass(frozen=True)
class Trend:
    """dB per doubling of size on the k size means, with a Student t interval on k - 2 dof."""

    per_doubling: float
    ci: tuple[float, float]
    n_sizes: int
    n_trials: int
    lack_of_fit: LackOfFit | None
    level: float = 0.95

    @property
    def dof(self) -> int:
        return self.n_sizes - 2

    @property
    def detectable_db(self) -> float:
        """The slope per doubling at which this design's interval would exclude 0 (its half-width)."""
        return (self.ci[1] - self.ci[0]) / 2

    @property
    def direction(self) -> str:
        """rises or falls when the interval excludes 0, else flat (no trend beyond the means' scatter)."""
        lo, hi = self.ci
        return "rises" if lo > 0 else "falls" if hi < 0 else "flat"

    @property
    def slope_words(self) -> str:
        lo, hi = self.ci
        return (f"{self.per_doubling:+.2f} dB per doubling [{lo:+.2f}, {hi:+.2f}] on {self.n_sizes} size means "
                f"({self.dof} dof; the smallest slope it could detect is ±{self.detectable_db:.2f})")


def size_trend(params: Any, psnrs: Any, seeds: Any = None, *, ci: float = 0.95) -> Trend | None:
    """The trend on size means (see the module docstring); None with fewer than 3 sizes (no dof left)."""
    groups = size_means(params, psnrs, seeds)
    k = groups.sizes.size
    if k < 3:
        return None
    x, y = np.log2(groups.sizes), groups.means
    sxx = float(((x - x.mean()) ** 2).sum())
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    residual = y - y.mean() - slope * (x - x.mean())
    half = float(stats.t.ppf(0.5 + ci / 2, k - 2)) * math.sqrt(float((residual**2).sum()) / (k - 2) / sxx)
    return Trend(slope, (slope - half, slope + half), int(k), int(groups.counts.sum()), _lack_of_fit(groups), ci)


def _lack_of_fit(groups: SizeMeans) -> LackOfFit | None:
    """Departures of the means from the (seed-weighted) line against pure error; None without replicates."""
    x, y, n = np.log2(groups.sizes), groups.means, groups.counts
    k = x.size
    w = n / n.sum()
    xm, ym = float((w * x).sum()), float((w * y).sum())
    slope = float((n * (x - xm) * (y - ym)).sum() / (n * (x - xm) ** 2).sum())
    ss_lof = float((n * (y - ym - slope * (x - xm)) ** 2).sum())
    table, _ = groups.table()
    blocked = table.shape[1] > 1 and bool(np.isfinite(table).all()) and bool((n == table.shape[1]).all())
    if blocked:  # seeds are blocks: a seed's offset is in every size's mean alike
        r = table - table.mean(1, keepdims=True) - table.mean(0, keepdims=True) + table.mean()
        ss_pe, dof_pe = float((r**2).sum()), (k - 1) * (table.shape[1] - 1)
    else:
        ss_pe = float(sum(((v - v.mean()) ** 2).sum() for v in groups.values))
        dof_pe = int(n.sum() - k)
    if dof_pe < 1 or ss_pe <= 0:
        return None
    f = (ss_lof / (k - 2)) / (ss_pe / dof_pe)
    return LackOfFit(f, k - 2, dof_pe, float(stats.f.sf(f, k - 2, dof_pe)), blocked)


# ------------------------------------------------------------------------------------------- the law, held out


@dataclass(frozen=True)
class HeldOut:
    """The largest size predicted from the smaller ones' means by the law and by two naive predictors, in dB.

    ``interval_psnr`` is the law's ``ci`` prediction interval for a new size mean (NaN without residual
    information: ``inside`` is then None). ``measured_psnr`` is the held-out size's mean over its
    ``n_replicates`` seeds and ``se_db`` its standard error (NaN with one seed). ``mean_psnr`` is the mean of
    the fitted sizes' means and ``line_psnr`` the line in log2 N through them, extrapolated. ``unidentified``
    says why the law carries no information, if it does not. ``fit`` is the law on the smaller sizes.
    """

    n_params: float
    n_replicates: int
    predicted_psnr: float
    interval_psnr: tuple[float, float]
    measured_psnr: float
    se_db: float
    mean_psnr: float
    line_psnr: float
    inside: bool | None
    unidentified: tuple[str, ...]
    ci: float
    fit: PowerLawFit = field(repr=False)

    @property
    def error_db(self) -> float:
        return self.measured_psnr - self.predicted_psnr

    @property
    def mean_error_db(self) -> float:
        return self.measured_psnr - self.mean_psnr

    @property
    def line_error_db(self) -> float:
        return self.measured_psnr - self.line_psnr

    @property
    def predicts(self) -> bool:
        """Identified, and closer than both naive predictors by more than the held-out size's seed SE."""
        margin = abs(self.error_db) + self.se_db
        return (not self.unidentified and math.isfinite(self.se_db)
                and margin < abs(self.mean_error_db) and margin < abs(self.line_error_db))

    @property
    def verdict(self) -> str:
        if self.unidentified:
            return "the law is not identified (" + "; ".join(self.unidentified) + "): no prediction claim"
        if not math.isfinite(self.se_db):
            return ("one seed at the held-out size, so no standard error to beat the naive predictors by: "
                    "no prediction claim")
        if self.predicts:
            return (f"**the law predicts**: it beats both naive predictors by more than the seed SE "
                    f"({self.se_db:.2f} dB)")
        return (f"**the law does not predict better than the naive predictors** by more than the seed SE "
                f"({self.se_db:.2f} dB)")

    @property
    def sentence(self) -> str:
        """One line for a report: the three predictions, the measurement, the errors and the verdict."""
        lo, hi = self.interval_psnr
        if self.inside is None:
            law = f"{self.predicted_psnr:.2f} dB (no interval: too few points to estimate noise)"
        else:
            where = "inside" if self.inside else "outside"
            law = f"{self.predicted_psnr:.2f} dB [{lo:.2f}, {hi:.2f}] ({where} its {self.ci:.0%} prediction interval)"
        se = (f" ± {self.se_db:.2f} (seed SE over {self.n_replicates} seeds)" if math.isfinite(self.se_db)
              else " (one seed)")
        return (f"held out {fmt_size(self.n_params)}: measured {self.measured_psnr:.2f} dB{se}; the law fitted "
                f"on the {self.fit.n_sizes} smaller sizes predicted {law}, the mean of those sizes "
                f"{self.mean_psnr:.2f} dB, a line in log2 N {self.line_psnr:.2f} dB; errors: law "
                f"{self.error_db:+.2f}, mean {self.mean_error_db:+.2f}, line {self.line_error_db:+.2f} dB: "
                f"{self.verdict}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: the figures, the interval as a 2-list, the verdict and the fit's own summary."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "fit"}
        d["interval_psnr"] = [float(v) for v in self.interval_psnr]
        d["unidentified"] = list(self.unidentified)
        d.update(error_db=self.error_db, mean_error_db=self.mean_error_db, line_error_db=self.line_error_db,
                 predicts=self.predicts, fit=self.fit.to_dict())
        return d


def held_out(params: Any, psnrs: Any, seeds: Any = None, *, ci: float = 0.95, n_boot: int = N_BOOT,
             seed: int = 0) -> HeldOut:
    """Fit the law on the size means of all but the largest size and predict it (see the module docstring).

    ``params``/``psnrs`` are per trial (a size's seeds repeat its count); the law is fitted in MSE space
    (``psnr_to_mse`` of each size's mean PSNR), so its prediction is on the same axis as the means.
    """
    groups = size_means(params, psnrs, seeds)
    k = groups.sizes.size
    if k < LAW_MIN_SIZES:
        raise ValueError(f"a held-out check needs at least {LAW_MIN_SIZES} model sizes ({LAW_MIN_SIZES - 1} to fit "
                         f"with a residual degree of freedom, 1 to predict), got {k}")
    sizes, means = groups.sizes[:-1], groups.means[:-1]
    fit = fit_power_law(sizes, psnr_to_mse(means), n_boot=n_boot, seed=seed, ci=ci)
    largest, held = float(groups.sizes[-1]), groups.values[-1]
    lo_mse, hi_mse = fit.prediction_interval(largest, n_replicates=1, seed=seed)
    interval = (float(mse_to_psnr(hi_mse[0])), float(mse_to_psnr(lo_mse[0])))  # low MSE is high PSNR
    measured = float(held.mean())
    se = float(held.std(ddof=1) / math.sqrt(held.size)) if held.size > 1 else math.nan
    line = np.polyfit(np.log2(sizes), means, 1)
    inside = None if math.isnan(interval[0]) else bool(interval[0] <= measured <= interval[1])
    trend = size_trend(np.repeat(sizes, groups.counts[:-1]), np.concatenate(groups.values[:-1]), ci=ci)
    return HeldOut(largest, int(held.size), float(mse_to_psnr(fit.predict(largest))), interval, measured, se,
                   float(means.mean()), float(np.polyval(line, math.log2(largest))), inside,
                   unidentified(fit, trend), float(ci), fit)


def unidentified(fit: PowerLawFit, trend: Trend | None) -> tuple[str, ...]:
    """Why a law carries no information: alpha on (or its interval reaching) a bound, or the fitted sizes not
    rising beyond their scatter (a flat law is a constant: the mean predictor under another name)."""
    why = []
    lo, hi = fit.alpha_ci
    if not (_BOUND_SLACK < fit.alpha < ALPHA_MAX - _BOUND_SLACK):
        why.append(f"alpha = {fit.alpha:.3g} is on its bound (0 or {ALPHA_MAX:g})")
    elif not (math.isfinite(lo) and math.isfinite(hi)):
        why.append("alpha has no interval")
    elif lo <= _BOUND_SLACK or hi >= ALPHA_MAX - _BOUND_SLACK:
        why.append(f"alpha's interval [{lo:.2g}, {hi:.2g}] reaches its bound (0 or {ALPHA_MAX:g})")
    if trend is not None and trend.direction != "rises":
        lo_t, hi_t = trend.ci
        why.append(f"the fitted sizes do not rise beyond their scatter ({trend.per_doubling:+.2f} dB per doubling "
                   f"[{lo_t:+.2f}, {hi_t:+.2f}])")
    return tuple(why)


# ------------------------------------------------------------------------------------------- IsoFLOP


@dataclass(frozen=True)
class BestSize:
    """The best size at one compute budget (see the module docstring); sizes ascending."""

    sizes: tuple[float, ...]
    means: tuple[float, ...]
    n_seeds: int
    argmax: float
    peak: float | None                      # the parabola's peak, when concave with its peak inside the sizes
    peak_ci: tuple[float, float] | None     # from the seeds' own parabolas (3+ seeds, every one peaked inside)
    ties: tuple[float, ...] | None          # the sizes that may be best; None without replicate seeds
    ci: float = 0.95

    @property
    def words(self) -> str:
        peak = (f"the parabola in log N peaks at {fmt_size(self.peak)}" if self.peak is not None else
                "the parabola in log N has no peak inside the sizes (the best may lie beyond them)")
        if self.peak is not None and self.peak_ci is not None:
            peak += (f" [{fmt_size(self.peak_ci[0])}, {fmt_size(self.peak_ci[1])}] "
                     f"({self.ci:.0%} t interval over {self.n_seeds} seeds)")
        elif self.peak is not None and self.n_seeds >= MIN_INTERVAL_SEEDS:
            peak += " (no interval: a seed's own parabola has no peak inside the sizes)"
        elif self.peak is not None:
            peak += f" (no interval: {self.n_seeds} seed{'s' * (self.n_seeds != 1)}, {MIN_INTERVAL_SEEDS}+ give one)"
        if len(self.sizes) < 3:
            peak = "too few sizes for a parabola"
        if self.ties is None:
            return (f"the largest mean is {fmt_size(self.argmax)}; one seed, so no noise verdict is possible; "
                    f"{peak}")
        if len(self.ties) == 1:
            return f"the best size is {fmt_size(self.argmax)}: it beats every other size beyond seed noise; {peak}"
        return (f"sizes {fmt_size(self.ties[0])} to {fmt_size(self.ties[-1])} tie within seed noise "
                f"({len(self.ties)} of {len(self.sizes)} may be best; the largest mean is "
                f"{fmt_size(self.argmax)}); {peak}")


def best_size(params: Any, psnrs: Any, seeds: Any = None, *, ci: float = 0.95) -> BestSize:
    """The best size at one budget from per-trial sizes and PSNRs (see the module docstring)."""
    groups = size_means(params, psnrs, seeds)
    x, means = np.log2(groups.sizes), groups.means
    table, _ = groups.table()
    complete = table[:, np.isfinite(table).all(axis=0)]  # seeds that have every size
    peak = _peak(x, means)
    peak_ci = None
    if peak is not None and complete.shape[1] >= MIN_INTERVAL_SEEDS:
        own = [_peak(x, row) for row in complete.T]
        if all(p is not None for p in own):
            logs = np.log2(own)
            half = float(stats.t.ppf(0.5 + ci / 2, logs.size - 1) * logs.std(ddof=1) / math.sqrt(logs.size))
            peak_ci = (2.0 ** (math.log2(peak) - half), 2.0 ** (math.log2(peak) + half))
    return BestSize(tuple(float(s) for s in groups.sizes), tuple(float(m) for m in means),
                    int(complete.shape[1]), float(groups.sizes[int(np.argmax(means))]), peak, peak_ci,
                    _may_be_best(groups.sizes, complete, ci), float(ci))


def _peak(x: np.ndarray, y: np.ndarray) -> float | None:
    """The size at the vertex of the parabola through (log2 size, y), when concave with the vertex inside."""
    if x.size < 3:
        return None
    a, b, _ = np.polyfit(x, y, 2)
    if a >= 0:
        return None
    vertex = -b / (2 * a)
    return float(2.0**vertex) if x.min() <= vertex <= x.max() else None


def _may_be_best(sizes: np.ndarray, complete: np.ndarray, ci: float) -> tuple[float, ...] | None:
    """Hsu's multiple comparisons with the best: size i may be best unless its mean falls below another's by
    more than the one-sided Dunnett allowance on the size x seed residual. None without 2+ complete seeds."""
    k, s = complete.shape
    if s < 2 or k < 2:
        return None
    fit = two_way(complete[1:] - complete[0])  # differences from the first size; its residual is the table's
    if fit.dof < 1:
        return None
    corr = np.full((k - 1, k - 1), 0.5) + 0.5 * np.eye(k - 1)  # a balanced table: every pair of contrasts shares one
    allowance = dunnett_critical(corr, fit.dof, ci, two_sided=False) * math.sqrt(2 * fit.residual_var / s)
    means = complete.mean(axis=1)
    return tuple(float(sizes[i]) for i in range(k) if means[i] >= np.delete(means, i).max() - allowance)
