"""Report plots (PNG) for studies: a metric against size or compute, training curves, effects, and
grids of panels (a transfer study's loss against learning rate, the μP coordinate check).

Conventions:

* Headless: every figure is drawn on matplotlib's Agg canvas. ``matplotlib.use("Agg")`` is set
  inside the functions, before pyplot is imported, so importing this module never touches a
  display, and Ray workers or CI machines without one can call it.
* Every file is written atomically (``hiir.data_prep.files.atomic_path``): a report read while a
  study is still writing never sees a half-written PNG. Missing parent directories are created.
* Each function returns the written :class:`~pathlib.Path`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # figures without pyplot: no global state, no window, no backend to pick

from hiir.data_prep.files import atomic_path
from hiir.platform.results.scaling import PowerLawFit

__all__ = ["plot_curves", "plot_effects", "plot_panels", "plot_scaling"]

#: Resolution of every report PNG; a figure of size (w, h) inches is exactly (w*DPI, h*DPI) pixels
#: (constrained layout, no tight bounding box, so sizes are predictable).
DPI = 120
SCALING_FIGSIZE = (6.4, 4.6)
CURVES_FIGSIZE = (7.0, 4.4)


def _subplots(*grid: int, figsize: tuple[float, float], layout: str, **kwargs: Any) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(*grid, **kwargs)


def _save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` as PNG atomically (a Figure outside pyplot is freed with its last reference)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def _finite_number(v: Any) -> float | None:
    """``v`` as a float when it is a finite real number, else None (missing metric, failed trial)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def plot_scaling(
    points: Sequence[Mapping[str, Any]],
    x_key: str,
    y_key: str,
    path: str | os.PathLike[str],
    *,
    fit: PowerLawFit | None = None,
    label_key: str | None = None,
    group_key: str | None = None,
    logy: bool = False,
    fit_to_y: Callable[[np.ndarray], np.ndarray] | None = None,
    hlines: Mapping[str, float] | None = None,
    title: str = "Scaling",
) -> Path:
    """Scatter ``y_key`` against ``x_key`` over ``points`` (e.g. one dict per trial) and write a PNG.

    Points whose x or y is missing or not a finite number (failed trials) are left out and
    counted in the legend. ``label_key`` annotates each point (e.g. the preset name);
    ``group_key`` colours points by a series (e.g. data size), one legend entry each.
    With ``fit``, the fitted law ``a N^-alpha + c`` is drawn over the x range together with its
    pointwise bootstrap band. The fit lives in loss/MSE space; when ``y_key`` is another quantity
    pass ``fit_to_y`` to map the curve onto it (e.g. ``scaling.mse_to_psnr`` for a PSNR axis).
    The x axis is logarithmic (sizes, compute): non-positive x are skipped, and so are non-positive y
    with ``logy``.
    ``hlines`` draws labelled horizontal references (the baseline every trial must clear).
    """
    xs: list[float] = []
    ys: list[float] = []
    labels: list[str | None] = []
    groups: list[str] = []
    skipped = 0
    for p in points:
        x = _finite_number(p.get(x_key))
        y = _finite_number(p.get(y_key))
        if x is None or y is None or x <= 0 or (logy and y <= 0):
            skipped += 1
            continue
        xs.append(x)
        ys.append(y)
        labels.append(None if label_key is None or p.get(label_key) is None else str(p.get(label_key)))
        groups.append("" if group_key is None else str(p.get(group_key)))

    fig, ax = _subplots(figsize=SCALING_FIGSIZE, layout="constrained")
    if xs:
        x_arr = np.asarray(xs)
        y_arr = np.asarray(ys)
        for g in dict.fromkeys(groups):  # first-seen order, stable colours
            sel = np.asarray([gg == g for gg in groups])
            name = f"{group_key}={g}" if group_key is not None else "trials"
            ax.scatter(x_arr[sel], y_arr[sel], s=28, zorder=3, label=name)
        for x, y, lab in zip(xs, ys, labels):
            if lab:
                ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    else:
        ax.text(0.5, 0.5, "no finite points", ha="center", va="center", transform=ax.transAxes)

    if fit is not None:
        if xs:
            lo_x, hi_x = min(xs), max(xs)
        else:
            lo_x, hi_x = 1e5, 1e8
        grid = np.geomspace(lo_x / 1.5, hi_x * 1.5, 200)
        to_y = fit_to_y if fit_to_y is not None else (lambda v: v)
        curve = np.asarray(to_y(np.asarray(fit.predict(grid))), dtype=np.float64)
        law = f"fit: {fit.a:.4g}·N^-{fit.alpha:.4g} + {fit.c:.4g}"
        ax.plot(grid, curve, color="black", lw=1.4, zorder=2, label=law)
        band_lo, band_hi = fit.predict_interval(grid)
        if np.all(np.isfinite(band_lo)) and np.all(np.isfinite(band_hi)):
            b1 = np.asarray(to_y(band_lo), dtype=np.float64)
            b2 = np.asarray(to_y(band_hi), dtype=np.float64)
            # A decreasing map (MSE -> PSNR) swaps the band's edges; fill_between does not care.
            ax.fill_between(grid, b1, b2, color="grey", alpha=0.25, zorder=1,
                            label=f"{fit.ci:.0%} bootstrap band ({fit.bootstrap})")

    for (name, value), style in zip((hlines or {}).items(), ("--", ":", "-.")):
        ax.axhline(value, color="tab:red", ls=style, lw=1.1, zorder=1, label=f"{name} ({value:.2f})")
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    ax.set_title(title if not skipped else f"{title} ({skipped} point(s) without {x_key}/{y_key} left out)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _save_figure(fig, path)


def plot_curves(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    ylabel: str,
    title: str,
    logy: bool = False,
) -> Path:
    """Training curves, one line per trial: ``curves[name] = (steps, values)``; writes a PNG.

    Non-finite values (a NaN loss) break the line at that step rather than being dropped
    silently or wrecking the axis. Empty curves are listed in the title. ``logy`` suits losses
    that span decades.
    """
    fig, ax = _subplots(figsize=CURVES_FIGSIZE, layout="constrained")
    empty: list[str] = []
    for name, (steps, values) in curves.items():
        s = np.asarray(steps, dtype=np.float64)
        v = np.asarray(values, dtype=np.float64)
        if s.shape != v.shape:
            raise ValueError(f"curve {name!r}: {s.size} steps but {v.size} values")
        if s.size == 0:
            empty.append(name)
            continue
        v = np.where(np.isfinite(v), v, np.nan)
        if logy:
            v = np.where(v > 0, v, np.nan)
        ax.plot(s, v, lw=1.2, marker="." if s.size < 30 else None, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title if not empty else f"{title} (no data: {', '.join(empty)})", fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        n = len(ax.get_legend_handles_labels()[0])
        ax.legend(fontsize=7, ncol=1 if n <= 8 else 2, loc="best")
    return _save_figure(fig, path)


def plot_effects(effects: Sequence[tuple[str, float, float, float, bool]], path: str | os.PathLike[str], *,
                 unit: str = "dB", title: str = "Effects") -> Path:
    """A forest plot: one row per ``(label, mean, ci_low, ci_high, real)``, its interval as a bar, and a zero
    line; effects whose interval excludes zero are drawn solid, the others hollow (within seed noise)."""
    height = max(2.2, 0.45 * len(effects) + 1.2)
    fig, ax = _subplots(figsize=(SCALING_FIGSIZE[0], height), layout="constrained")
    for row, (_label, mean, lo, hi, real) in enumerate(reversed(effects)):
        finite = all(math.isfinite(v) for v in (lo, hi))
        if finite:
            ax.plot([lo, hi], [row, row], color="black", lw=1.4)
        ax.plot([mean], [row], "o", color="black", mfc="black" if real else "white", ms=6)
    ax.axvline(0.0, color="tab:red", lw=1.0, ls="--")
    ax.set_yticks(range(len(effects)), [e[0] for e in reversed(effects)], fontsize=7)
    ax.set_xlabel(f"effect ({unit}); filled: beyond seed noise, hollow: within it")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return _save_figure(fig, path)


def plot_panels(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
                path: str | os.PathLike[str], *, xlabel: str, ylabel: str | Mapping[str, str], title: str,
                ncols: int | None = None, logx: bool = True, logy: bool = False, sharey: bool = False,
                xticks: Sequence[float] | None = None,
                marks: Mapping[str, Mapping[str, tuple[float, float]]] | None = None) -> Path:
    """A grid of panels, ``panels[panel][series] = (xs, ys)``, one line per series; a series keeps its colour
    in every panel, and one legend names them. ``marks[panel][series] = (x, y)`` draws a star there (e.g. a
    fitted optimum). ``ylabel`` is one label, or one per panel; ``sharey`` puts all panels on one y scale;
    ``xticks`` labels those x values plainly (widths). Non-finite or (on a log axis) non-positive points are
    left out."""
    names = list(panels)
    ncols = ncols or max(1, len(names))
    nrows = max(1, math.ceil(len(names) / ncols))
    fig, axes = _subplots(nrows, ncols, figsize=(3.9 * ncols + 1.4, 3.3 * nrows), layout="constrained",
                             squeeze=False, sharey=sharey)
    series_names = list(dict.fromkeys(s for p in panels.values() for s in p))
    cmap = matplotlib.colormaps.get_cmap("tab10" if len(series_names) <= 10 else "tab20")
    colours = {s: cmap(i % cmap.N) for i, s in enumerate(series_names)}
    for ax, name in zip(axes.flat, names):
        for series, (xs, ys) in panels[name].items():
            pts = [(x, y) for x, y in zip(xs, ys) if _finite_number(x) is not None and _finite_number(y) is not None
                   and (not logx or x > 0) and (not logy or y > 0)]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3.5, lw=1.2, color=colours[series], label=series)
        for series, (x, y) in ((marks or {}).get(name) or {}).items():
            if _finite_number(x) is not None and _finite_number(y) is not None:
                ax.plot([x], [y], marker="*", ms=11, color=colours.get(series, "black"), mec="black", zorder=4)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        if xticks is not None:
            ax.set_xticks(list(xticks), [f"{v:g}" for v in xticks])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel if isinstance(ylabel, str) else ylabel.get(name, ""))
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]}
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save_figure(fig, path)
