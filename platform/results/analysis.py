"""What a study's trials answer, computed once from what MLflow holds; `markdown` words it, `report` writes it.

- **Baseline**: the trivial restoration (bicubic for SR, the degraded input otherwise) scored on the same
  val images with the same metric, logged on the study run when it started. A trial at or below it is
  flagged: it learned nothing a fixed filter does not do.
- **Seed noise**: with `seeds: K`, each cell's mean ± sd over seeds, and each axis's effect paired by seed
  and val image against the noise of a difference (`noise`).
- **Size laws**: only where size is a family's parameter count (`model.family` + `model.params`), per
  context of the other axes: L(N) = a N^-alpha + c fitted on every replicate, and with 4+ sizes the
  largest held out and predicted from the smaller ones (`scaling.held_out`). Preset or ablation axes that
  happen to change the count (depth, layout) are not a size axis and are never fitted.
- **Budgets**: with `budget.flops`, the best size per budget (IsoFLOP).
- **Early stops**: which trials the scheduler stopped, where, and against whom (tags of `GroupedASHA`).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from hiir.platform import tracking
from hiir.platform.results.noise import (
    AxisEffect,
    CellStats,
    SeedNoise,
    axis_effects,
    cell_stats,
    seed_noise,
)
from hiir.platform.results.scaling import HeldOut, PowerLawFit, fit_power_law, held_out
from hiir.platform.results.trials import Trial
from hiir.platform.study.axes import BUDGET_AXIS, SEED_AXIS, SIZE_AXIS, size_classes


@dataclass
class SizeLaw:
    """One context's size sweep within a family: the sizes, the fit over every replicate, the held-out check."""

    context: dict[str, str]
    sizes: list[dict[str, Any]]  # {target, params, psnr, sd, seeds}, smallest first
    fit: PowerLawFit | None
    held_out: HeldOut | None
    trend: Trend | None          # dB per doubling of size, over every trial; None below 3 trials
    note: str = ""               # why no fit or no held-out prediction

    @property
    def monotonic(self) -> bool:
        """The mean PSNR grows at every step up in size."""
        return all(b["psnr"] > a["psnr"] for a, b in zip(self.sizes, self.sizes[1:]))


@dataclass(frozen=True)
class Trend:
    """The least-squares slope of every trial's PSNR against log2 of its parameter count, in dB per doubling,
    with a Student t interval on n - 2 degrees of freedom: seed noise and any curvature both widen it."""

    per_doubling: float
    ci: tuple[float, float]
    n_trials: int

    @property
    def direction(self) -> str:
        """rises or falls when the interval excludes 0, else flat (no trend beyond the trials' scatter)."""
        lo, hi = self.ci
        return "rises" if lo > 0 else "falls" if hi < 0 else "flat"


def size_trend(params: list[float], psnrs: list[float], ci: float = 0.95) -> Trend | None:
    """dB per doubling of parameters (see `Trend`); None with fewer than 3 trials or a single size."""
    x, y = np.log2(np.asarray(params, dtype=np.float64)), np.asarray(psnrs, dtype=np.float64)
    sxx = float(((x - x.mean()) ** 2).sum())
    if x.size < 3 or sxx == 0.0:
        return None
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    residual = y - y.mean() - slope * (x - x.mean())
    half = float(stats.t.ppf(0.5 + ci / 2, x.size - 2)) * math.sqrt(float((residual**2).sum()) / (x.size - 2) / sxx)
    return Trend(slope, (slope - half, slope + half), int(x.size))


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
    cells: list[CellStats]
    noise: SeedNoise | None
    effects: list[AxisEffect]
    laws: list[SizeLaw]
    budgets: list[dict[str, Any]]  # {budget, best params, best psnr, sizes}
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
    best = max(done, key=lambda t: sign * t.metrics["val_psnr"], default=None)
    below = [t for t in done if "val_psnr" in baseline and t.metrics["val_psnr"] <= baseline["val_psnr"]]
    scores = [t.scores() for t in done]
    replicated = any(SEED_AXIS in t.axes for t in done)
    return Analysis(
        trials=trials, mode=mode, baseline_name=parent_tags.get(tracking.BASELINE_TAG, "baseline"), baseline=baseline,
        best=best, below_baseline=below, cells=cell_stats(scores) if replicated else [],
        noise=seed_noise(scores) if replicated else None,
        effects=axis_effects(scores, _references(done)) if done else [],
        laws=size_laws(done) if laws else [], budgets=budget_table(done), stops=early_stops(trials),
        isolated=[t for t in trials if not t.crosses_patches])


def size_laws(done: list[Trial]) -> list[SizeLaw]:
    """Per context (the axes other than size and seed), the law over a family's sizes."""
    family = [t for t in done if SIZE_AXIS in t.axes and t.params.get("model.family") and t.n_params]
    contexts: dict[tuple, list[Trial]] = defaultdict(list)
    for t in family:
        contexts[tuple(sorted((k, v) for k, v in t.axes.items() if k not in (SIZE_AXIS, SEED_AXIS)))].append(t)
    return [_size_law(dict(key), group) for key, group in contexts.items()]


def _size_law(context: dict[str, str], trials: list[Trial]) -> SizeLaw:
    classes = size_classes([t.n_params for t in trials])
    by_size: dict[float, list[Trial]] = defaultdict(list)
    for t in trials:
        by_size[classes[t.n_params]].append(t)
    sizes = []
    for n in sorted(by_size):
        psnrs = [t.metrics["val_psnr"] for t in by_size[n]]
        sizes.append({"target": by_size[n][0].axes[SIZE_AXIS],
                      "params": float(np.mean([t.n_params for t in by_size[n]])),
                      "psnr": float(np.mean(psnrs)), "sd": float(np.std(psnrs, ddof=1)) if len(psnrs) > 1 else math.nan,
                      "seeds": len(psnrs)})
    trend = size_trend([t.n_params for t in trials], [t.metrics["val_psnr"] for t in trials])
    points = [(t.n_params, t.metrics["val_mse"]) for t in trials if t.metrics.get("val_mse")]
    law = SizeLaw(context, sizes, None, None, trend)
    if len(sizes) < 3:
        law.note = f"{len(sizes)} size(s): the law L(N) = a·N^-alpha + c needs at least 3"
        return law
    law.fit = fit_power_law(*zip(*points), n_boot=300)
    if len(sizes) < 4:
        law.note = "3 sizes: a held-out prediction needs at least 4 (3 to fit, 1 to predict)"
        return law
    try:
        law.held_out = held_out(*zip(*points), n_boot=300)
    except (ValueError, RuntimeError) as exc:
        law.note = f"no held-out prediction: {exc}"
    return law


def _references(done: list[Trial]) -> dict[str, str]:
    """The level every other is compared with: the smallest size on a size axis (else the first level seen)."""
    sized = [t for t in done if SIZE_AXIS in t.axes and t.n_params]
    return {SIZE_AXIS: min(sized, key=lambda t: t.n_params).axes[SIZE_AXIS]} if sized else {}


def budget_table(done: list[Trial]) -> list[dict[str, Any]]:
    """With compute budgets, the best size per budget (mean over seeds): what an IsoFLOP study answers."""
    by_budget: dict[str, dict[float, list[Trial]]] = defaultdict(lambda: defaultdict(list))
    for t in done:
        if BUDGET_AXIS in t.axes and t.n_params:
            by_budget[t.axes[BUDGET_AXIS]][t.n_params].append(t)
    rows = []
    for budget, sizes in sorted(by_budget.items(), key=lambda kv: float(kv[0])):
        means = {n: float(np.mean([t.metrics["val_psnr"] for t in ts])) for n, ts in sizes.items()}
        best = max(means, key=means.get)
        rows.append({"budget": float(budget), "best_params": best, "best_psnr": means[best],
                     "steps": int(sizes[best][0].metrics.get("step", 0)), "sizes": dict(sorted(means.items()))})
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
        out["best_val_psnr"] = analysis.best.metrics["val_psnr"]
    if "val_psnr" in analysis.baseline:
        out["baseline_psnr"] = analysis.baseline["val_psnr"]
        if analysis.best is not None:
            out["best_minus_baseline_db"] = out["best_val_psnr"] - out["baseline_psnr"]
    out["trials_at_or_below_baseline"] = float(len(analysis.below_baseline))
    if analysis.noise is not None and math.isfinite(analysis.noise.sd_db):
        out["seed_noise_sd_db"] = analysis.noise.sd_db
    fitted = [law for law in analysis.laws if law.fit is not None]
    if len(fitted) == 1:  # one law: its numbers are the study's; several contexts: see the report
        law = fitted[0]
        if law.trend is not None:
            out["psnr_per_doubling_db"] = law.trend.per_doubling
        out["scaling_alpha"] = law.fit.alpha
        out.update({f"scaling_alpha_ci_{e}": v for e, v in zip(("lo", "hi"), law.fit.alpha_ci) if math.isfinite(v)})
        if law.held_out is not None:
            out["heldout_predicted_psnr"] = law.held_out.predicted_psnr
            out["heldout_measured_psnr"] = law.held_out.measured_psnr
            out["heldout_error_db"] = law.held_out.error_db
    return out

