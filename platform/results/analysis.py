"""What a study's trials answer, computed once from what MLflow holds; `markdown` words it, `report` writes it.

- **The headline quantity** is `val_psnr`: the mean over val sets of each set's mean headline PSNR (Y for SR),
  every set weighted alike. Tables, trends, laws (fitted on `10^(-val_psnr/10)`), held-out values and plotted
  points all use it.
- **Baseline**: the trivial restoration (bicubic for SR, the degraded input otherwise) scored on the same
  val images with the same metric, logged on the study run when it started. A trial at or below it is
  flagged: it learned nothing a fixed filter does not do.
- **Seed noise**: with `seeds: K`, each cell's mean ± sd over seeds, and each axis's levels against its
  reference with family-wise control (`noise`).
- **Size**: only where size is a family's parameter count (`model.family` + `model.params`), per context of
  the other axes, on the size means and the body count (`Trial.body_params`; total where a trial lacks it):
  the trend per doubling, and with `sizes.LAW_MIN_SIZES`+ sizes the law L(N) = a N^-alpha + c and the largest
  size held out (`sizes`); below that, "no law: N sizes". Preset or ablation axes that happen to change the
  count (depth, layout) are not a size axis and are never fitted.
- **Budgets**: with `budget.flops`, the best size per budget (IsoFLOP: `sizes.best_size`), and no size law
  (at fixed compute PSNR against size is U-shaped, not a monotone law).
- **Early stops**: which trials the scheduler stopped, where, and against whom (tags of `GroupedASHA`).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from hiir.platform import tracking
from hiir.platform.results.noise import (
    AxisEffect,
    CellStats,
    SeedNoise,
    axis_effects,
    cell_stats,
    seed_noise,
)
from hiir.platform.results.scaling import PowerLawFit, fit_power_law, psnr_to_mse
from hiir.platform.results.sizes import (
    LAW_MIN_SIZES,
    BestSize,
    HeldOut,
    Trend,
    best_size,
    held_out,
    size_trend,
    unidentified,
)
from hiir.platform.results.trials import Trial
from hiir.platform.study.axes import BUDGET_AXIS, SEED_AXIS, SIZE_AXIS, size_classes

HEADLINE = "val_psnr"  # the one quantity every table, fit and plot uses (see the module docstring)


@dataclass
class SizeLaw:
    """One context's size sweep within a family: its sizes, trend, law and held-out check."""

    context: dict[str, str]
    sizes: list[dict[str, Any]]  # {target, params, body, size, psnr, sd, seeds}, smallest first
    fit: PowerLawFit | None      # on every size mean; None below LAW_MIN_SIZES sizes
    held_out: HeldOut | None
    trend: Trend | None          # on the size means; None below 3 sizes
    body: bool = True            # the size axis is the body count (False: total, some trial lacked its model)
    note: str = ""               # why no law or no held-out prediction

    @property
    def monotonic(self) -> bool:
        """The mean PSNR grows at every step up in size."""
        return all(b["psnr"] > a["psnr"] for a, b in zip(self.sizes, self.sizes[1:]))

    @property
    def unidentified(self) -> tuple[str, ...]:
        """Why the law on every size mean carries no information (empty when it does, or with no law)."""
        return () if self.fit is None else unidentified(self.fit, self.trend)

    @property
    def identified_fit(self) -> PowerLawFit | None:
        """The law on every size mean where it is identified: the only one a plot or a metric shows."""
        return None if self.fit is None or self.unidentified else self.fit

    @property
    def law_words(self) -> str:
        """"no law: N sizes" or what the law was fitted on: the words results.json and the study run carry."""
        if self.fit is None:
            return f"no law: {len(self.sizes)} sizes"
        held_unidentified = self.held_out is not None and self.held_out.unidentified
        return f"law on {len(self.sizes)} size means" + (", not identified" if self.unidentified or held_unidentified
                                                         else "")

    @property
    def span(self) -> tuple[float, float]:
        """Largest over smallest size, in the fitted count and in total parameters."""
        if len(self.sizes) < 2:
            return 1.0, 1.0
        return self.sizes[-1]["size"] / self.sizes[0]["size"], self.sizes[-1]["params"] / self.sizes[0]["params"]

    def to_dict(self) -> dict[str, Any]:
        trend = self.trend
        return {"context": self.context, "size_count": "body" if self.body else "total", "sizes": self.sizes,
                "law": self.law_words, "note": self.note,
                "trend": None if trend is None else {
                    "per_doubling_db": trend.per_doubling, "ci": list(trend.ci), "n_sizes": trend.n_sizes,
                    "detectable_db": trend.detectable_db, "direction": trend.direction,
                    "lack_of_fit": None if trend.lack_of_fit is None else vars(trend.lack_of_fit)},
                "fit": None if self.fit is None else {**self.fit.to_dict(), "unidentified": list(self.unidentified)},
                "held_out": None if self.held_out is None else self.held_out.to_dict()}


@dataclass
class Stop:
    trial: Trial
    step: str
    reason: str
    compared_with: list[str]     # names of the trials in its rung


@dataclass
class Analysis:
    trials: list[Trial]
    mode: str
    baseline_name: str
    baseline: dict[str, float]   # the baseline's metrics, val/<set>/... and val_psnr
    best: Trial | None
    below_baseline: list[Trial]
    sets_below: dict[str, tuple[int, float]]  # with 2+ val sets: set -> (finished trials at or below, the bar)
    cells: list[CellStats]
    noise: SeedNoise | None
    effects: list[AxisEffect]
    laws: list[SizeLaw]
    budgets: list[tuple[float, BestSize]]  # (budget, its best size)
    stops: list[Stop]
    isolated: list[Trial]          # trials whose model has no path across patch borders

    @property
    def seeds(self) -> int:
        return max((c.n_seeds for c in self.cells), default=1)


def analyse(trials: list[Trial], *, parent_metrics: dict[str, float], parent_tags: dict[str, str],
            mode: str = "max", laws: bool = True) -> Analysis:
    """`laws=False` skips the size laws: a transfer study's widths serve its LR sweep, not a law per LR."""
    done = [t for t in trials if t.done]
    baseline = {k[len(tracking.BASELINE_PREFIX):]: v for k, v in parent_metrics.items()
                if k.startswith(tracking.BASELINE_PREFIX)}
    sign = 1 if mode == "max" else -1
    best = max(done, key=lambda t: sign * t.metrics[HEADLINE], default=None)
    below = [t for t in done if HEADLINE in baseline and t.metrics[HEADLINE] <= baseline[HEADLINE]]
    bars = baseline_by_set(baseline, done[0]) if done else {}
    per_set = [t.set_psnr() for t in done]
    counts = {name: (sum(s.get(name) is not None and s[name] <= bar for s in per_set), bar)
              for name, bar in sorted(bars.items())} if len(bars) > 1 else {}
    sets_below = {name: count for name, count in counts.items() if count[0]}
    scores = [t.scores() for t in done]
    replicated = any(SEED_AXIS in t.axes for t in done)
    return Analysis(
        trials=trials, mode=mode, baseline_name=parent_tags.get(tracking.BASELINE_TAG, "baseline"), baseline=baseline,
        best=best, below_baseline=below, sets_below=sets_below, cells=cell_stats(scores) if replicated else [],
        noise=seed_noise(scores) if replicated else None,
        effects=axis_effects(scores, _references(done)) if done else [],
        laws=size_laws(done) if laws else [], budgets=budget_table(done), stops=early_stops(trials),
        isolated=[t for t in trials if not t.crosses_patches])


def baseline_by_set(baseline: dict[str, float], trial: Trial | None) -> dict[str, float]:
    """The baseline's headline PSNR per val set, by the trial's headline (Y for SR; its RGB PSNR where the baseline
    has no other)."""
    key = trial.headline_key if trial is not None else "psnr"
    out = {}
    for name in {k.split("/")[1] for k in baseline if k.count("/") == 2}:
        value = baseline.get(f"val/{name}/{key}", baseline.get(f"val/{name}/psnr"))
        if value is not None:
            out[name] = value
    return out


def size_laws(done: list[Trial]) -> list[SizeLaw]:
    """Per context (the axes other than size and seed), the size sweep within a family. Not at a compute budget:
    there PSNR against size is U-shaped, and `budget_table` answers with the best size."""
    family = [t for t in done if SIZE_AXIS in t.axes and BUDGET_AXIS not in t.axes and t.params.get("model.family")
              and t.n_params]
    contexts: dict[tuple, list[Trial]] = defaultdict(list)
    for t in family:
        contexts[tuple(sorted((k, v) for k, v in t.axes.items() if k not in (SIZE_AXIS, SEED_AXIS)))].append(t)
    return [_size_law(dict(key), group) for key, group in contexts.items()]


def sized(trials: list[Trial]) -> tuple[dict[int, float], bool]:
    """Trial index -> the count its size class is fitted at (the class's mean body count, or its mean total
    where any trial lacks a body count), and whether that is the body count."""
    classes = size_classes([t.n_params for t in trials])
    body = all(t.body_params is not None for t in trials)
    members: dict[float, list[int]] = defaultdict(list)
    for i, t in enumerate(trials):
        members[classes[t.n_params]].append(i)
    out = {}
    for group in members.values():
        count = float(np.mean([trials[i].body_params if body else trials[i].n_params for i in group]))
        out.update({i: count for i in group})
    return out, body


def _size_law(context: dict[str, str], trials: list[Trial]) -> SizeLaw:
    count, body = sized(trials)
    x = [count[i] for i in range(len(trials))]
    y = [t.metrics[HEADLINE] for t in trials]
    seeds = [t.axes.get(SEED_AXIS, i) for i, t in enumerate(trials)]
    sizes = []
    for n in sorted(set(x)):
        group = [t for t, c in zip(trials, x) if c == n]
        psnrs = [t.metrics[HEADLINE] for t in group]
        sizes.append({"target": group[0].axes[SIZE_AXIS], "params": float(np.mean([t.n_params for t in group])),
                      "body": float(np.mean([t.body_params for t in group])) if body else None, "size": n,
                      "psnr": float(np.mean(psnrs)), "sd": float(np.std(psnrs, ddof=1)) if len(psnrs) > 1 else math.nan,
                      "seeds": len(psnrs)})
    law = SizeLaw(context, sizes, None, None, size_trend(x, y, seeds), body)
    if len(sizes) < LAW_MIN_SIZES:
        law.note = (f"no law: {len(sizes)} sizes (a law needs {LAW_MIN_SIZES}+: {LAW_MIN_SIZES - 1} to fit with a "
                    "residual degree of freedom, and the largest held out to test it)")
        return law
    law.fit = fit_power_law([s["size"] for s in sizes], psnr_to_mse(np.array([s["psnr"] for s in sizes])))
    try:
        law.held_out = held_out(x, y, seeds)
    except (ValueError, RuntimeError) as exc:
        law.note = f"no held-out prediction: {exc}"
    return law


def _references(done: list[Trial]) -> dict[str, str]:
    """The level every other is compared with: the smallest size on a size axis (else the first level seen)."""
    sized_trials = [t for t in done if SIZE_AXIS in t.axes and t.n_params]
    return {SIZE_AXIS: min(sized_trials, key=lambda t: t.n_params).axes[SIZE_AXIS]} if sized_trials else {}


def budget_table(done: list[Trial]) -> list[tuple[float, BestSize]]:
    """With compute budgets, the best size per budget on the body count (what an IsoFLOP study answers)."""
    by_budget: dict[str, list[Trial]] = defaultdict(list)
    for t in done:
        if BUDGET_AXIS in t.axes and t.n_params:
            by_budget[t.axes[BUDGET_AXIS]].append(t)
    rows = []
    for budget, trials in sorted(by_budget.items(), key=lambda kv: float(kv[0])):
        count, _ = sized(trials)
        rows.append((float(budget), best_size([count[i] for i in range(len(trials))],
                                              [t.metrics[HEADLINE] for t in trials],
                                              [t.axes.get(SEED_AXIS, i) for i, t in enumerate(trials)])))
    return rows


def early_stops(trials: list[Trial]) -> list[Stop]:
    by_trial_id = {t.tags.get(tracking.TRIAL_TAG): t for t in trials}
    stops = []
    for t in trials:
        if t.tags.get(tracking.STOPPED_EARLY_TAG) == "true":
            ids = [i for i in t.tags.get(tracking.COMPARED_WITH_TAG, "").split(",") if i]
            stops.append(Stop(t, t.tags.get(tracking.STOPPED_AT_TAG, "?"), t.tags.get(tracking.STOP_REASON_TAG, ""),
                              [by_trial_id[i].name if i in by_trial_id else i for i in ids]))
    return stops


def headline_metrics(analysis: Analysis) -> dict[str, float]:
    """The study's answer as metrics of its MLflow run: what the runs table shows beside the trials."""
    out: dict[str, float] = {}
    if analysis.best is not None:
        out["best_val_psnr"] = analysis.best.metrics[HEADLINE]
    if HEADLINE in analysis.baseline:
        out["baseline_psnr"] = analysis.baseline[HEADLINE]
        if analysis.best is not None:
            out["best_minus_baseline_db"] = out["best_val_psnr"] - out["baseline_psnr"]
    out["trials_at_or_below_baseline"] = float(len(analysis.below_baseline))
    if analysis.noise is not None and math.isfinite(analysis.noise.sd_db):
        out["seed_noise_sd_db"] = analysis.noise.sd_db
    if len(analysis.laws) != 1:  # several contexts: their numbers are in the report
        return out
    law = analysis.laws[0]
    out["size_count"] = float(len(law.sizes))  # with the study run's hiir.scaling_law tag: "no law: N sizes"
    if law.trend is not None:
        out["psnr_per_doubling_db"] = law.trend.per_doubling
        out["psnr_per_doubling_ci_lo"], out["psnr_per_doubling_ci_hi"] = law.trend.ci
        out["psnr_per_doubling_detectable_db"] = law.trend.detectable_db
    if law.identified_fit is not None:  # an unidentified alpha is a bound of the fit, not a measurement
        out["scaling_alpha"] = law.fit.alpha
        out.update({f"scaling_alpha_ci_{e}": v for e, v in zip(("lo", "hi"), law.fit.alpha_ci) if math.isfinite(v)})
    if law.held_out is not None:
        h = law.held_out
        out.update(heldout_predicted_psnr=h.predicted_psnr, heldout_measured_psnr=h.measured_psnr,
                   heldout_error_db=h.error_db, heldout_mean_error_db=h.mean_error_db,
                   heldout_line_error_db=h.line_error_db, heldout_predicts=float(h.predicts))
    return {k: float(v) for k, v in out.items() if math.isfinite(v)}
