"""Seed noise: mean ± sd per cell over replicate seeds, and whether each axis's effect exceeds it.

Conventions:

* A trial is a :class:`TrialScores`: its axes (axis -> value, with ``seed`` for a ``seeds: K``
  study) and its final headline PSNR per val image (set -> image -> dB), or only per set when
  the images were not kept. A trial with neither (failed, stopped before evaluating) is skipped.
* A trial's PSNR over some images is the mean over sets of the mean over that set's images:
  the same average as ``val_psnr``, what studies rank by, so a cell's mean matches the table.
* A *cell* is a trial's axes without ``seed``. Trials repeating a cell and seed (``num_samples``
  > 1 on a grid) are merged, image by image, into their mean.
* An axis effect compares a level with a reference level paired by seed and by val image. A
  *context* fixes every other non-seed axis; for each context and each seed that has both
  levels, the pair's difference is taken over the images both trials have (per set means when
  either lacks per-image data, counted in ``per_set_pairs``). Pairing removes what the two
  trials share: how hard each image is, and any offset a seed gives both levels (its data
  order, its val crops); what remains is the noise of a difference, ``sd_db``.
* A level's ``n`` differences get a Student t interval, ``mean ± t(dof) s / sqrt(n)``, where ``s^2``
  pools the variance of the differences over all levels of the axis (``sum (n_l - 1) s_l^2``, ``dof =
  sum (n_l - 1)``), the error term of a design blocked by seed: with 2 seeds a level alone has 1 degree of
  freedom (t = 12.7), which no size difference at demo scale could pass; pooled, 4 sizes have 3. The verdict
  is ``real`` when the interval excludes 0, ``within seed noise`` when it does not, and ``no
  replicates`` with fewer than 2 pairs or fewer than 2 seeds among them: one seed says nothing
  about seed noise, whatever the number of contexts, so nothing is called real without seeds.
* :func:`seed_noise` is the pooled within-cell sd of a trial's PSNR over seeds,
  ``sqrt(sum (k_i - 1) s_i^2 / sum (k_i - 1))`` over cells of ``k_i >= 2`` seeds: the sd of
  one trial's PSNR from seed to seed. A paired difference of independent trials has about
  ``sqrt(2)`` times that sd, less when the seeds' offsets are shared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from hiir.platform.study.axes import SEED_AXIS

__all__ = ["TrialScores", "CellStats", "AxisEffect", "SeedNoise", "cell_stats", "axis_effects", "seed_noise"]

REAL, WITHIN_NOISE, NO_REPLICATES = "real", "within seed noise", "no replicates"

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
    """``level`` minus ``reference`` on ``axis``, paired by seed and val image, in dB.

    ``ci_db`` is the Student t interval at level ``ci`` on the ``n_pairs`` paired differences and
    ``sd_db`` their sd (NaN below 2 pairs); ``n_seeds`` and ``n_contexts`` count the seeds and
    contexts that gave pairs; ``per_set_pairs`` of them were compared on per-set means.
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

    @property
    def sentence(self) -> str:
        """One line, e.g. ``attention cosine vs dot: -0.12 dB [-0.20, -0.04] over 6 seed pairs: real``."""
        head = f"{self.axis} {self.level} vs {self.reference}: "
        if self.n_pairs == 0:
            return head + f"no paired trials: {self.verdict}"
        pairs = f"{self.n_pairs} seed pair{'s' * (self.n_pairs != 1)}"
        note = f" ({self.per_set_pairs} on per-set means: no per-image data)" if self.per_set_pairs else ""
        if self.verdict == NO_REPLICATES:
            return head + f"{self.mean_db:+.2f} dB from {pairs}{note}: {self.verdict} (needs 2+ seeds per cell)"
        lo, hi = self.ci_db
        return head + f"{self.mean_db:+.2f} dB [{lo:+.2f}, {hi:+.2f}] over {pairs}{note}: {self.verdict}"


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

    Axes with one level give no effect. See the module docstring for pairing and verdicts.
    """
    merged = _by_cell_and_seed(trials)
    effects = []
    for axis, levels in _levels(merged).items():
        ref = (reference or {}).get(axis, levels[0])
        if ref not in levels:
            raise ValueError(f"reference level {ref!r} of axis {axis!r} is not among its levels {levels}")
        by_level = {level: _pairs(merged, axis, level, ref) for level in levels if level != ref}
        pooled = _pooled_variance([np.array([p[2] for p in pairs]) for pairs in by_level.values()])
        effects += [_effect(axis, level, ref, pairs, ci, pooled) for level, pairs in by_level.items()]
    return effects


def _pooled_variance(differences: list[np.ndarray]) -> tuple[float, int]:
    """The variance of a paired difference pooled over an axis's levels, and its degrees of freedom:
    ``sum (n_l - 1) s_l^2 / sum (n_l - 1)``, as a blocked design's error term (seeds are the blocks)."""
    used = [d for d in differences if d.size > 1]
    dof = sum(d.size - 1 for d in used)
    if dof == 0:
        return math.nan, 0
    return sum((d.size - 1) * float(d.var(ddof=1)) for d in used) / dof, dof


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


def _effect(axis: str, level: Any, ref: Any, pairs: list[tuple[Key, Any, float, bool]], ci: float,
            pooled: tuple[float, int]) -> AxisEffect:
    """The paired differences' mean, sd and verdict, with a t interval on the axis's pooled variance."""
    d = np.array([p[2] for p in pairs], dtype=np.float64)
    n, n_seeds = d.size, len({p[1] for p in pairs})
    mean = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    variance, dof = pooled
    lo = hi = math.nan
    if n > 1 and dof > 0:
        half = float(stats.t.ppf(0.5 + ci / 2.0, dof)) * math.sqrt(variance / n)
        lo, hi = mean - half, mean + half
    if n < 2 or n_seeds < 2:
        verdict = NO_REPLICATES
    else:
        verdict = REAL if lo > 0.0 or hi < 0.0 else WITHIN_NOISE
    return AxisEffect(axis, level, ref, mean, (lo, hi), sd, n, n_seeds, len({p[0] for p in pairs}),
                      sum(p[3] for p in pairs), verdict, float(ci))
