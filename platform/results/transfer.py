"""Transfer studies (`kind: transfer`): does the best learning rate stay put as the model widens?

A transfer study sweeps `optim.lr` (a grid, log-spaced) across widths of one size family (`size: {params,
family}`, or `model.dim`), usually under both `model.parametrization`s. Per parametrization and width:

- **final loss**: a trial's mean training loss over the last quarter of its logged loss curve (`TAIL`), the
  quantity μP's transfer is stated for; averaged over seeds per (width, lr) cell;
- **optimum**: the grid's argmin, refined by the parabola in log2(lr) through it and its two neighbours
  (kept within them); an argmin on the grid's edge stays there and is flagged: the true optimum may lie beyond;
- **drift**: the least-squares slope of log2(optimum) against log2(width): how many doublings the best LR
  moves per doubling of width (0 = it transfers; standard Adam's hidden layers predict about -1);
- **censored**: an optimum on the grid's edge (either parametrization) is only a bound: it gives no point
  estimate to the slope (the drift is over the other widths), no interval, and the verdict names it;
- **interval**: only with MIN_INTERVAL_SEEDS seeds or more, computed across seeds: each seed's own optima
  give its own drift (a seed is the same init and batches at every LR), and the drift's interval is Student's t
  on their spread, ``t(S - 1) sd / sqrt(S)`` (a seed whose own optimum is on the grid's edge gives no drift, and
  the interval counts the seeds left); with fewer seeds the report gives the optima and the drift without an
  interval or a "95%". μP is called steadier only when, paired by seed, |drift| under standard
  minus |drift| under μP has a t interval above 0 and a mean of at least MATERIAL, with no width censored.

The report gains a section (`section`) and lines of its answer (`answer_lines`); `from_study` gives the best
values of a finished small study to `hiir study run --transfer-from`.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from hiir.models.mup import MUP_RULES_VERSION
from hiir.platform import tracking
from hiir.platform.errors import HiirError
from hiir.platform.results.markdown import markdown_table
from hiir.platform.results.plots import plot_panels
from hiir.platform.results.sizes import MIN_INTERVAL_SEEDS
from hiir.platform.results.trials import Trial, collect_trials
from hiir.platform.study.axes import BUDGET_AXIS, LR_AXIS, PARAM_AXIS, SEED_AXIS, WIDTH_AXES
from hiir.platform.study.spec import Transferred
from hiir.platform.study.state import find_study, study_dir

TAIL = 0.25        # the final loss: the mean over the last quarter of the logged loss curve
MATERIAL = 0.25    # log2(LR) per width doubling: a smaller difference of drifts is not called a difference
SIZE_KEYS = ("model.preset", *WIDTH_AXES, BUDGET_AXIS, SEED_AXIS)  # never transferred


# ------------------------------------------------------------------------------------------- analysis


@dataclass
class Optimum:
    width: int
    lr: float                       # refined (a bound when at_edge)
    loss: float                     # the parabola's value there (the grid's value on an edge)
    interval: tuple[float, float]   # of lr: t over the seeds' own optima (NaN below MIN_INTERVAL_SEEDS or at_edge)
    at_edge: bool                   # the grid's argmin is its first or last LR: censored


@dataclass
class Drift:
    """One parametrization in one context (the axes other than lr, width, parametrization and seed)."""

    parametrization: str
    context: dict[str, str]
    widths: list[int]
    lrs: list[float]
    loss: dict[int, dict[float, float]]   # width -> lr -> seed-mean final loss
    psnr: dict[int, dict[float, float]]   # width -> lr -> seed-mean val PSNR
    optima: list[Optimum]
    psnr_optima: dict[int, float]         # width -> refined lr by val PSNR (its maximum)
    slope: float                          # log2(optimum lr) per doubling of width, over the uncensored widths
    interval: tuple[float, float]         # t over seeds (NaN below MIN_INTERVAL_SEEDS seeds or with a censored width)
    psnr_slope: float
    seeds: int
    per_seed: dict[Any, float] = field(default_factory=dict)  # seed -> its own drift over the uncensored widths

    @property
    def censored(self) -> list[int]:
        return [o.width for o in self.optima if o.at_edge]

    @property
    def noise(self) -> str:
        if math.isfinite(self.interval[0]):
            return f"95% t interval over {len(self.per_seed)} seeds' own drifts"
        if self.censored:
            return "no interval: a censored width"
        return (f"{self.seeds} seed{'s' * (self.seeds != 1)}: no interval ({MIN_INTERVAL_SEEDS}+ seeds give one, "
                "computed across seeds)")


def final_loss(t: Trial) -> float | None:
    """Mean of the loss curve over its last TAIL of steps (at least its last point)."""
    tail = _tail(t)
    return float(np.mean(tail)) if tail else None


def _tail(t: Trial) -> list[float]:
    steps, values = t.curve
    pts = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
    if not pts:
        return []
    cut = pts[-1][0] * (1 - TAIL)
    return [v for s, v in pts if s > cut] or [pts[-1][1]]


def refine(xs: list[float], ys: list[float]) -> tuple[float, float, bool]:
    """(x, y, at_edge) of the minimum: the argmin, moved to the vertex of the parabola through it and its two
    neighbours when it is inside the grid (the vertex kept between them)."""
    i = int(np.argmin(ys))
    if i == 0 or i == len(xs) - 1:
        return xs[i], ys[i], True
    (x0, x1, x2), (y0, y1, y2) = xs[i - 1:i + 2], ys[i - 1:i + 2]
    a, b, c = np.polyfit([x0, x1, x2], [y0, y1, y2], 2)
    if a <= 0:
        return x1, y1, False
    x = float(np.clip(-b / (2 * a), x0, x2))
    return x, float(a * x * x + b * x + c), False


def _slope(widths: list[int], log2_lrs: list[float]) -> float:
    return float(np.polyfit(np.log2(widths), log2_lrs, 1)[0]) if len(widths) > 1 else math.nan


def _optima(widths: list[int], lrs: list[float], loss: dict[int, dict[float, float]]) -> list[tuple]:
    """Per width, refine() over the LRs with a finite value, in log2(lr); (nan, nan, True) with fewer than 3."""
    out = []
    for w in widths:
        have = [lr for lr in lrs if lr in loss[w] and math.isfinite(loss[w][lr])]
        out.append(refine([math.log2(lr) for lr in have], [loss[w][lr] for lr in have]) if len(have) >= 3
                   else (math.nan, math.nan, True))
    return out


def analyse_transfer(trials: list[Trial]) -> list[Drift]:
    """One Drift per (context, parametrization) with 2+ widths, each with 3+ LRs finished."""
    cells: dict[tuple, dict[tuple[int, float], list[Trial]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        if not (t.status == "FINISHED" and LR_AXIS in t.axes and t.params.get("resolved_model.dim")
                and final_loss(t) is not None):
            continue
        context = tuple(sorted((k, v) for k, v in t.axes.items()
                               if k not in (LR_AXIS, PARAM_AXIS, SEED_AXIS, *WIDTH_AXES)))
        parametrization = t.params.get("resolved_model.parametrization", t.axes.get(PARAM_AXIS, "standard"))
        cells[(context, parametrization)][(int(t.params["resolved_model.dim"]), float(t.axes[LR_AXIS]))].append(t)
    drifts = []
    for (context, parametrization), group in cells.items():
        widths = sorted({w for w, _ in group if sum(1 for ww, _ in group if ww == w) >= 3})
        if len(widths) >= 2:
            drifts.append(_drift(parametrization, dict(context), widths, group))
    return sorted(drifts, key=lambda d: (sorted(d.context.items()), d.parametrization != "standard"))


def _drift(parametrization: str, context: dict[str, str], widths: list[int],
           group: dict[tuple[int, float], list[Trial]]) -> Drift:
    lrs = sorted({lr for w, lr in group if w in widths})
    cells = {key: ts for key, ts in group.items() if key[0] in widths}
    by_seed = {key: {t.axes.get(SEED_AXIS, 0): final_loss(t) for t in ts} for key, ts in cells.items()}
    loss = {w: {lr: float(np.mean(list(by_seed[(w, lr)].values()))) for lr in lrs if (w, lr) in cells}
            for w in widths}
    psnr = {w: {lr: float(np.mean([t.metrics.get("val_psnr", math.nan) for t in cells[(w, lr)]]))
                for lr in lrs if (w, lr) in cells} for w in widths}
    found = _optima(widths, lrs, loss)
    free = [i for i, (_, _, edge) in enumerate(found) if not edge]  # uncensored widths
    seeds = sorted(set.intersection(*(set(v) for v in by_seed.values())), key=str)  # seeds with every cell
    per_seed, per_seed_opt = {}, []
    for s in seeds:
        own = _optima(widths, lrs, {w: {lr: by_seed[(w, lr)][s] for lr in loss[w]} for w in widths})
        if all(not own[i][2] for i in free):  # a seed whose own optimum is on the edge gives no drift
            per_seed[s] = _slope([widths[i] for i in free], [own[i][0] for i in free])
            per_seed_opt.append([x for x, _, _ in own])
    slope = _slope([widths[i] for i in free], [found[i][0] for i in free])
    interval = (math.nan, math.nan)
    n = len(per_seed)
    t = float(stats.t.ppf(0.975, n - 1)) if n >= MIN_INTERVAL_SEEDS else math.nan
    if n >= MIN_INTERVAL_SEEDS and len(free) == len(widths):
        half = t * float(np.std(list(per_seed.values()), ddof=1)) / math.sqrt(n)
        interval = (slope - half, slope + half)
    spread = np.std(np.asarray(per_seed_opt), axis=0, ddof=1) if n >= MIN_INTERVAL_SEEDS else None
    optima = []
    for i, (w, (x, y, edge)) in enumerate(zip(widths, found)):
        half = t * float(spread[i]) / math.sqrt(n) if spread is not None and not edge else math.nan
        optima.append(Optimum(w, 2.0**x, y, (2.0 ** (x - half), 2.0 ** (x + half)), edge))
    by_psnr = _optima(widths, lrs, {w: {lr: -v for lr, v in psnr[w].items()} for w in widths})
    return Drift(parametrization, context, widths, lrs, loss, psnr, optima,
                 {w: 2.0**x for w, (x, _, _) in zip(widths, by_psnr)}, slope, interval,
                 _slope(widths, [x for x, _, _ in by_psnr]), len(seeds), per_seed)


def verdict(drifts: list[Drift]) -> list[str]:
    """Per context with both parametrizations: did μP hold the optimum steadier than standard, in plain words
    (see the module docstring for what steadier needs)."""
    out = []
    by_context: dict[tuple, dict[str, Drift]] = defaultdict(dict)
    for d in drifts:
        by_context[tuple(sorted(d.context.items()))][d.parametrization] = d
    for context, pair in by_context.items():
        if set(pair) != {"standard", "mup"}:
            continue
        where = f" ({', '.join(f'{k}={v}' for k, v in context)})" if context else ""
        std, mup = pair["standard"], pair["mup"]
        numbers = f"|drift| {abs(mup.slope):.2f} under μP against {abs(std.slope):.2f} under standard"
        censored = [f"{d.parametrization} at C {', '.join(map(str, d.censored))}" for d in (std, mup) if d.censored]
        common = sorted(set(std.per_seed) & set(mup.per_seed), key=str)
        if censored:
            text = (f"**Not conclusive at this scale{where}**: the best LR is on the grid's edge "
                    f"({'; '.join(censored)}), so those optima are only bounds and no drift here is an estimate; "
                    "widen the grid")
        elif len(common) < MIN_INTERVAL_SEEDS:
            text = (f"**No verdict at this scale{where}**: {numbers}, from {len(common)} seed"
                    f"{'s' * (len(common) != 1)}; a difference of drifts needs {MIN_INTERVAL_SEEDS}+ seeds to be "
                    "told from noise")
        else:
            gain = np.array([abs(std.per_seed[s]) - abs(mup.per_seed[s]) for s in common])
            half = float(stats.t.ppf(0.975, gain.size - 1)) * float(gain.std(ddof=1)) / math.sqrt(gain.size)
            lo, hi = gain.mean() - half, gain.mean() + half
            numbers += (f"; standard minus μP |drift| {gain.mean():+.2f} [{lo:+.2f}, {hi:+.2f}] (95% t over "
                        f"{gain.size} seeds)")
            if lo > 0 and gain.mean() >= MATERIAL:
                text = f"μP held the optimum steadier than standard at this scale{where}: {numbers}"
            elif hi < 0 and -gain.mean() >= MATERIAL:
                text = (f"**μP did not hold the optimum steadier than standard at this scale{where}**: standard "
                        f"moved less; {numbers}")
            elif abs(gain.mean()) < MATERIAL:  # its interval may exclude 0: small, not unmeasured
                text = (f"**μP did not stabilise the optimum by a material amount at this scale{where}**: the "
                        f"drifts differ by {abs(gain.mean()):.3f}, less than {MATERIAL}; {numbers}")
            else:
                text = (f"**μP did not measurably stabilise the optimum at this scale{where}**: the difference "
                        f"is within the noise; {numbers}")
        out.append(text + ".")
    return out


# ------------------------------------------------------------------------------------------- the report


def _fmt_lr(lr: float) -> str:
    return f"{lr:.3g}"


def _name(d: Drift) -> str:
    where = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in d.context.items())
    return d.parametrization + (f" ({where})" if where else "")


def _drift_words(d: Drift, fmt: str = "+.2f") -> str:
    lo, hi = d.interval
    interval = f" [{lo:{fmt}}, {hi:{fmt}}]" if math.isfinite(lo) else ""
    over = f" over C {', '.join(str(o.width) for o in d.optima if not o.at_edge)}" if d.censored else ""
    slope = f"{d.slope:{fmt}}" if math.isfinite(d.slope) else "none (fewer than 2 uncensored widths)"
    return f"drift {slope}{interval} log2(LR) per width doubling{over} ({d.noise})"


def _optimum_words(o: Optimum) -> str:
    return f"C {o.width} {_fmt_lr(o.lr)}" + (" (censored: on the grid's edge)" if o.at_edge else "")


def answer_lines(drifts: list[Drift]) -> list[str]:
    """The drift of each parametrization and the verdict: lines for the top of the report."""
    lines = []
    for d in drifts:
        line = f"Best LR under {_name(d)}: {', '.join(_optimum_words(o) for o in d.optima)}; {_drift_words(d)}."
        if d.censored:
            line += (f" At width {', '.join(map(str, d.censored))} the best LR is on the grid's edge: censored, "
                     "only a bound; widen the grid.")
        lines.append(line)
    return lines + verdict(drifts)


def section(drifts: list[Drift]) -> list[str]:
    """The report's transfer section: the optimum per width with its interval, the drift, the verdict."""
    if not drifts:
        return ["## Learning-rate transfer", "", "No (parametrization, context) had 2+ widths with 3+ finished "
                "learning rates: there is no optimum to follow yet.", ""]
    lines = ["## Learning-rate transfer", "",
             f"Final loss = mean training loss over the last {TAIL:.0%} of each trial's logged curve, averaged over "
             "seeds. The best LR per width is the grid's argmin refined by a parabola in log2(LR) through it and "
             "its neighbours; on the grid's edge (✗) it is censored: a bound, with no interval, left out of the "
             "drift. The drift is the slope of log2(best LR) against log2(width): 0 means the best LR transfers "
             f"across widths. Intervals need {MIN_INTERVAL_SEEDS}+ seeds and are Student t intervals across seeds "
             "(each seed's own optima and drift).", ""]
    for d in drifts:
        intervals = any(math.isfinite(o.interval[0]) for o in d.optima)  # no "95%" without one
        rows = [{"width C": o.width, "best LR (loss)": _fmt_lr(o.lr) + (" ✗" if o.at_edge else ""),
                 **({"95% interval": f"[{_fmt_lr(o.interval[0])}, {_fmt_lr(o.interval[1])}]"
                     if math.isfinite(o.interval[0]) else "-"} if intervals else {}),
                 "final loss there": f"{o.loss:.4f}", "best LR (val PSNR)": _fmt_lr(d.psnr_optima[o.width]),
                 **{f"loss @ {_fmt_lr(lr)}": f"{d.loss[o.width][lr]:.4f}" for lr in d.lrs if lr in d.loss[o.width]}}
                for o in d.optima]
        lines += [f"### {_name(d)}", "", markdown_table(rows), "",
                  f"{_drift_words(d, '+.3f')[0].upper()}{_drift_words(d, '+.3f')[1:]}; by val PSNR "
                  f"{d.psnr_slope:+.3f}.", ""]
    return lines + verdict(drifts) + [""]


def headline(drifts: list[Drift]) -> dict[str, float]:
    """The drifts as metrics of the study run (one context only: several go to the report)."""
    if len({tuple(sorted(d.context.items())) for d in drifts}) != 1:
        return {}
    out = {}
    for d in drifts:
        out[f"transfer_drift_{d.parametrization}"] = d.slope
        out[f"transfer_drift_{d.parametrization}_ci_lo"], out[f"transfer_drift_{d.parametrization}_ci_hi"] = d.interval
    return {k: v for k, v in out.items() if math.isfinite(v)}


def plot(drifts: list[Drift], directory: Path, title: str) -> Path:
    """Final loss (top) and val PSNR (bottom) against LR, one line per width, one column per parametrization;
    a star at each width's refined optimum."""
    panels, marks, ylabel = {}, {}, {}
    for metric, values in (("final loss", lambda d: d.loss), ("val PSNR (dB)", lambda d: d.psnr)):
        for d in drifts:
            name = f"{_name(d)}: {metric}"
            panels[name] = {f"C {w}": (sorted(values(d)[w]), [values(d)[w][lr] for lr in sorted(values(d)[w])])
                            for w in d.widths}
            ylabel[name] = metric
            if metric == "final loss":
                marks[name] = {f"C {o.width}": (o.lr, o.loss) for o in d.optima}
    return plot_panels(panels, directory / "transfer_lr.png", xlabel="learning rate (optim.lr)", ylabel=ylabel,
                       ncols=len(drifts), marks=marks, title=f"{title}: final loss and val PSNR against LR per width")


# ------------------------------------------------------------------------------------------- --transfer-from


def from_study(ref: str, workdir: Path) -> Transferred:
    """The best finished trial of study `ref` (a name run in `workdir`, or its directory) by that study's own
    metric and mode, over all its trials (in a transfer study: whichever width and parametrization won). Its
    axis values other than size, width and seed are taken; a μP winner brings its mup_base_dim (the width its
    LRs are stated at), without which its LRs would mean something else at the new widths. A μP winner trained
    under other μP rules (`MUP_RULES_VERSION`, tagged on its run) is refused: its LRs meant another recipe."""
    found = find_study(ref, workdir)
    if found is None:
        raise HiirError(f"--transfer-from {ref}: no study of that name has run in {workdir} (no "
                        f"{study_dir(workdir, Path(ref).name)}/study.json); run it first with `hiir study run`")
    directory, state, spec = found
    status = tracking.Store(state.tracking_uri).get_run(state.parent_run_id).info.status
    if status != "FINISHED":
        raise HiirError(f"--transfer-from {spec.name}: its study run {state.parent_run_id} is {status}, not "
                        f"finished; finish it with `hiir study resume {directory}`")
    usable = [t for t in collect_trials(state.tracking_uri, state.parent_run_id)
              if t.status == "FINISHED" and math.isfinite(t.metrics.get(spec.metric, math.nan))]
    if not usable:
        raise HiirError(f"--transfer-from {spec.name}: no finished trial has its metric {spec.metric}; nothing "
                        "to transfer")
    sign = 1 if spec.mode == "max" else -1
    best = max(usable, key=lambda t: sign * t.metrics[spec.metric])
    values: dict[str, Any] = {k: v for k, v in best.axes.items() if k not in SIZE_KEYS}
    parametrization = best.params.get("resolved_model.parametrization", "standard")
    width = best.params.get("resolved_model.dim")
    rules = None
    if parametrization == "mup":
        rules = best.tags.get(tracking.MUP_RULES_TAG)
        if rules != str(MUP_RULES_VERSION):
            made = rules or "1 (untagged: from before versions were recorded)"
            raise HiirError(f"--transfer-from {spec.name}: its best trial {best.name} trained under μP rules version "
                            f"{made}; this hiir's are version {MUP_RULES_VERSION} (models/mup.py), so its learning "
                            f"rates meant another recipe; run {spec.name} again")
        values.setdefault(PARAM_AXIS, "mup")
        values["model.mup_base_dim"] = width = best.params["resolved_model.mup_base_dim"]
    if not values:
        raise HiirError(f"--transfer-from {spec.name}: its best trial {best.name} varies nothing but size and seed; "
                        "nothing to transfer")
    return Transferred(spec.name, state.parent_run_id, best.name, {k: str(v) for k, v in values.items()},
                       parametrization, int(width) if width else None, int(rules) if rules else None)
