"""Saturating power-law fits ``L(N) = a * N**-alpha + c`` with bootstrap confidence intervals.

Conventions:

* ``N`` is a parameter count (raw, not millions; a study fits the body count, see `trials.Trial.body_params`);
  ``L`` is a loss in MSE space, never PSNR: a pure power law in MSE is a straight line of PSNR against log N,
  and only the offset ``c`` (irreducible error) can bend it, so the fit has to happen where ``c`` is
  additive. A study fits ``10 ** (-psnr / 10)`` of its headline PSNR (:func:`psnr_to_mse`), so the curve
  converted back (:func:`mse_to_psnr`) is on the same axis as the table and the plotted points.
* Residuals are taken on ``log L``: for an MSE they are exactly PSNR residuals (``log mse = -psnr * ln10 /
  10``), so every size weighs alike (the Chinchilla / Besiroglu et al. practice).
* Internally ``N`` is divided by the geometric mean of the sizes, so ``a`` and ``alpha`` are well conditioned
  at any scale; the reported ``a`` is converted back to raw-parameter units, unrounded.
* Bounds: ``a > 0``, ``0 < alpha < 3``, ``0 <= c <= max(L)``. The objective has flat valleys, so a fit starts
  from the best point of a profile over alpha (for each alpha on a grid, ``a`` and ``c`` by weighted linear
  least squares, scored on the log residuals) and is polished from there (:func:`_fit_many`, all bootstrap
  replicates at once; the point fit is polished again by ``curve_fit``, from a grid of starts too if that stalls).
* Intervals are percentile bootstrap intervals over :data:`N_BOOT` draws (the one number of draws every
  bootstrap in `results` takes). With at least :data:`PAIRS_MIN_SIZES` distinct sizes whole points are
  resampled (:func:`_pairs_replicates`). With fewer, residuals are (:func:`_residual_replicates`): a pairs
  resample of a few sizes often drops whole sizes and leaves 3 parameters to 2-3 sizes. The residual
  bootstrap keeps the design and perturbs the losses with the fit's centred log residuals inflated by
  ``sqrt(n / (n - 3))``. With as many points as parameters the fit interpolates: no intervals (NaN).
* Two intervals answer two questions. :meth:`PowerLawFit.predict_interval` is the band of the mean curve.
  :meth:`PowerLawFit.prediction_interval` is where a new point will fall: each replicate's prediction plus
  resampled residuals, both scaled by ``sqrt(dof / chi2_dof)``, a draw of ``sigma / s`` for normal noise
  (the bootstrap analogue of Student's t), since with few dof the noise scale is itself uncertain.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

__all__ = ["PowerLawFit", "fit_power_law", "psnr_to_mse", "mse_to_psnr", "PAIRS_MIN_SIZES", "N_BOOT", "ALPHA_MAX"]

N_BOOT = 500  # bootstrap draws, wherever `results` draws a bootstrap
#: Minimum number of distinct sizes for which whole points are resampled (see the module docstring).
PAIRS_MIN_SIZES = 8
ALPHA_MAX = 3.0
_N_PARAMS = 3  # a, alpha, c
_A_MIN = 1e-300  # a > 0 strictly; the optimiser keeps iterates inside the box anyway
_ALPHA_STARTS = (0.05, 0.2, 0.5, 1.0, 2.0)
_C_START_FRACTIONS = (0.0, 0.5, 0.9)  # of min(L)
_ALPHA_GRID = np.linspace(0.01, ALPHA_MAX - 0.01, 150)  # the profile's alphas
_POLISH_STEPS = 30  # Levenberg-Marquardt steps after the profile
_DRAWS_PER_REPLICATE = 20  # residual draws per replicate curve in a prediction interval (smooths its tails)


def psnr_to_mse(psnr: float | np.ndarray) -> float | np.ndarray:
    """MSE of pixels in [0, 1] from PSNR in dB: ``mse = 10 ** (-psnr / 10)`` (``inf`` dB gives 0)."""
    out = np.power(10.0, -np.asarray(psnr, dtype=np.float64) / 10.0)
    return float(out) if out.ndim == 0 else out


def mse_to_psnr(mse: float | np.ndarray) -> float | np.ndarray:
    """PSNR in dB of pixels in [0, 1] from MSE: ``psnr = -10 log10(mse)`` (0 gives ``inf``)."""
    m = np.asarray(mse, dtype=np.float64)
    if np.any(m < 0):
        raise ValueError("an MSE cannot be negative")
    with np.errstate(divide="ignore"):
        out = -10.0 * np.log10(m)
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted ``L(N) = a * N**-alpha + c`` (N in raw parameters) with bootstrap intervals.

    ``*_ci`` are ``(lo, hi)`` percentile intervals at level ``ci`` (NaN when they could not be
    estimated: ``n_boot == 0``, as many points as parameters, or most replicate fits failing).
    ``bootstrap`` says how they were made: ``"pairs"``, ``"residuals"`` or ``"none"``.
    ``rms_log_residual`` is the RMS of ``log L - log L_fit`` (about the relative error; for MSE,
    multiply by 10/ln 10 for dB of PSNR). ``boot_params`` holds the replicate ``(a, alpha, c)``
    used by :meth:`predict_interval`; it is left out of :meth:`to_dict`. ``log_residuals`` are
    ``log L - log L_fit`` per point, in input order (used by :meth:`prediction_interval`).
    """

    a: float
    alpha: float
    c: float
    a_ci: tuple[float, float]
    alpha_ci: tuple[float, float]
    c_ci: tuple[float, float]
    n_points: int
    n_sizes: int
    ci: float
    n_boot: int
    n_boot_ok: int
    bootstrap: str
    rms_log_residual: float
    boot_params: tuple[tuple[float, float, float], ...] = field(default=(), repr=False, compare=False)
    log_residuals: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def predict(self, n: float | np.ndarray) -> float | np.ndarray:
        """The fitted loss at ``n`` parameters (scalar in, float out; array in, array out)."""
        n_arr = np.asarray(n, dtype=np.float64)
        out = self.a * np.power(n_arr, -self.alpha) + self.c
        return float(out) if out.ndim == 0 else out

    def predict_interval(self, n: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise ``ci`` band of the bootstrap replicate curves at ``n`` (NaN without replicates).

        Taken over whole replicate curves rather than combined from the marginal intervals,
        since a, alpha and c are strongly correlated. This is where the mean curve is; where a
        new measurement will fall is :meth:`prediction_interval`.
        """
        n_arr = np.atleast_1d(np.asarray(n, dtype=np.float64))
        if not self.boot_params or not all(math.isfinite(v) for v in self.a_ci):
            nan = np.full(n_arr.shape, np.nan)
            return nan, nan.copy()
        p = np.asarray(self.boot_params, dtype=np.float64)
        curves = p[:, 0:1] * np.power(n_arr[None, :], -p[:, 1:2]) + p[:, 2:3]
        q = (1.0 - self.ci) / 2.0
        return np.quantile(curves, q, axis=0), np.quantile(curves, 1.0 - q, axis=0)

    def prediction_interval(
        self, n: float | np.ndarray, *, n_replicates: int = 1, ci: float | None = None, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where a new measurement at ``n`` falls (the mean loss of ``n_replicates`` runs), at level ``ci``.

        ``ci`` defaults to the fit's. Per replicate curve ``b``: the fit, plus ``g_b`` times (the
        curve's deviation from the fit, plus the log of the mean of ``exp(e)`` over ``n_replicates``
        residuals ``e`` drawn from the centred, dof-inflated log residuals), where
        ``g_b = sqrt(dof / chi2_dof)`` redraws the noise scale (see the module docstring). Without
        the redraw, 95% intervals covered 89-90% at 5-6 dof and 64% at 1 dof in simulations.
        NaN where :meth:`predict_interval` is.
        """
        n_arr = np.atleast_1d(np.asarray(n, dtype=np.float64))
        dof = self.n_points - _N_PARAMS
        if np.isnan(self.predict_interval(n_arr)[0]).all() or len(self.log_residuals) != self.n_points:
            nan = np.full(n_arr.shape, np.nan)
            return nan, nan.copy()
        rng = np.random.default_rng(seed)
        p = np.repeat(np.asarray(self.boot_params, dtype=np.float64), _DRAWS_PER_REPLICATE, axis=0)
        log_curves = np.log(p[:, 0:1] * np.power(n_arr[None, :], -p[:, 1:2]) + p[:, 2:3])  # B, m
        log_fit = np.log(np.atleast_1d(self.predict(n_arr)))[None, :]
        r = np.asarray(self.log_residuals, dtype=np.float64)
        centred = (r - r.mean()) * math.sqrt(self.n_points / dof)
        e = rng.choice(centred, size=(p.shape[0], n_arr.size, n_replicates), replace=True)
        noise = np.log(np.mean(np.exp(e), axis=2))  # a mean of MSEs, averaged in MSE space
        g = np.sqrt(dof / rng.chisquare(dof, size=(p.shape[0], 1)))
        new_log = log_fit + g * (log_curves - log_fit + noise)
        q = (1.0 - (self.ci if ci is None else ci)) / 2.0
        return np.exp(np.quantile(new_log, q, axis=0)), np.exp(np.quantile(new_log, 1.0 - q, axis=0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (floats unrounded, intervals and residuals as lists, no replicate samples)."""
        d = asdict(self)
        d.pop("boot_params")
        d["log_residuals"] = [float(v) for v in d["log_residuals"]]
        for key in ("a_ci", "alpha_ci", "c_ci"):
            d[key] = [float(v) for v in d[key]]
        return d


def _log_model(x: np.ndarray, a: float, alpha: float, c: float) -> np.ndarray:
    """``log(a * x**-alpha + c)`` on normalised sizes ``x``."""
    return np.log(a * np.power(x, -alpha) + c)


def _log_model_jac(x: np.ndarray, a: float, alpha: float, c: float) -> np.ndarray:
    """Analytic Jacobian of :func:`_log_model` (much faster and steadier than finite differences)."""
    p = np.power(x, -alpha)
    m = a * p + c
    return np.column_stack([p / m, -a * p * np.log(x) / m, 1.0 / m])


def _fit_once(
    x: np.ndarray, log_y: np.ndarray, starts: list[tuple[float, float, float]], c_max: float
) -> tuple[np.ndarray, float] | None:
    """Best (params, cost) over ``starts`` by ``curve_fit`` on normalised sizes, or None when every start failed."""
    lower = [_A_MIN, 0.0, 0.0]
    upper = [np.inf, ALPHA_MAX, c_max]
    best: tuple[np.ndarray, float] | None = None
    for p0 in starts:
        p0 = np.clip(np.asarray(p0, dtype=np.float64), [1e-12, 1e-3, 0.0], [np.inf, ALPHA_MAX - 1e-3, c_max * 0.999])
        try:
            with warnings.catch_warnings():
                # The covariance is not used (intervals come from the bootstrap), and it is
                # undefined when there are as many points as parameters.
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                popt, _ = curve_fit(
                    _log_model, x, log_y, p0=p0, bounds=(lower, upper), jac=_log_model_jac,
                    method="trf", max_nfev=2000, xtol=1e-12, ftol=1e-12, gtol=1e-12,
                )
        except (RuntimeError, ValueError):
            continue
        with np.errstate(all="ignore"):
            resid = log_y - _log_model(x, *popt)
        cost = float(np.sum(resid * resid))
        if math.isfinite(cost) and (best is None or cost < best[1]):
            best = (popt, cost)
    return best


def _grid_starts(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float, float]]:
    """Starting points: for each (alpha, c) on a grid, the ``a`` that matches the data in the median."""
    starts = []
    y_min = float(np.min(y))
    for alpha in _ALPHA_STARTS:
        for frac in _C_START_FRACTIONS:
            c = frac * y_min
            a = float(np.median((y - c) * np.power(x, alpha)))
            starts.append((max(a, 1e-12), alpha, c))
    return starts


def _costs(x: np.ndarray, log_y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Sum of squared log residuals per row: ``x``, ``log_y`` (B, n); ``p`` (B, 3)."""
    with np.errstate(all="ignore"):
        model = p[:, 0:1] * np.power(x, -p[:, 1:2]) + p[:, 2:3]
        r = log_y - np.log(np.maximum(model, 1e-300))
    cost = np.sum(r * r, axis=1)
    return np.where(np.isfinite(cost), cost, np.inf)


def _profile(x: np.ndarray, log_y: np.ndarray, c_max: np.ndarray) -> np.ndarray:
    """(B, 3) starts: per row, the alpha of :data:`_ALPHA_GRID` whose ``a, c`` (weighted linear least squares
    on relative residuals, inside the bounds) leave the smallest log residuals."""
    y = np.exp(log_y)[:, None, :]                                   # B, 1, n
    w = 1.0 / (y * y)
    u = np.power(x[:, None, :], -_ALPHA_GRID[None, :, None])        # B, G, n
    s_uu, s_u, s_1 = (w * u * u).sum(-1), (w * u).sum(-1), w.sum(-1)
    s_uy, s_y = (w * u * y).sum(-1), (w * y).sum(-1)
    with np.errstate(all="ignore"):
        det = s_uu * s_1 - s_u * s_u
        a = (s_1 * s_uy - s_u * s_y) / det
        c = (s_uu * s_y - s_u * s_uy) / det
        bad = ~np.isfinite(c) | (c < 0) | (c > c_max[:, None])
        c = np.where(bad, np.clip(np.nan_to_num(c), 0.0, c_max[:, None]), c)
        a = np.where(bad, (w * u * (y - c[..., None])).sum(-1) / s_uu, a)
        a = np.maximum(np.nan_to_num(a, nan=1e-12), 1e-12)
        model = a[..., None] * u + c[..., None]
        r = log_y[:, None, :] - np.log(np.maximum(model, 1e-300))
    cost = np.where(np.isfinite(r).all(-1), (r * r).sum(-1), np.inf)
    g = np.argmin(cost, axis=1)
    rows = np.arange(x.shape[0])
    return np.column_stack([a[rows, g], _ALPHA_GRID[g], c[rows, g]])


def _polish(x: np.ndarray, log_y: np.ndarray, p: np.ndarray, c_max: np.ndarray) -> np.ndarray:
    """Levenberg-Marquardt steps on every row at once, kept inside the bounds; a step is kept where it lowers
    that row's cost."""
    lower = np.array([_A_MIN, 0.0, 0.0])
    cost, lam = _costs(x, log_y, p), np.full(p.shape[0], 1e-3)
    for _ in range(_POLISH_STEPS):
        with np.errstate(all="ignore"):
            q = np.power(x, -p[:, 1:2])
            model = p[:, 0:1] * q + p[:, 2:3]
            r = log_y - np.log(model)
            jac = np.stack([q / model, -p[:, 0:1] * q * np.log(x) / model, 1.0 / model], axis=-1)  # B, n, 3
            jtj = np.einsum("bni,bnj->bij", jac, jac)
            damp = jtj + lam[:, None, None] * (np.eye(3) * np.diagonal(jtj, axis1=1, axis2=2)[:, None, :] + 1e-30)
            grad = np.einsum("bni,bn->bi", jac, r)[..., None]
            try:
                step = np.linalg.solve(damp, grad)[..., 0]
            except np.linalg.LinAlgError:  # a row with a vanishing direction (a -> 0): least squares instead
                step = (np.linalg.pinv(damp) @ grad)[..., 0]
        trial = np.clip(p + np.nan_to_num(step), lower, np.column_stack([np.full_like(c_max, np.inf),
                                                                         np.full_like(c_max, ALPHA_MAX), c_max]))
        new = _costs(x, log_y, trial)
        better = new < cost
        p, cost = np.where(better[:, None], trial, p), np.where(better, new, cost)
        lam = np.where(better, lam / 3, lam * 4)
    return p


def _fit_many(x: np.ndarray, log_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit every row of ``x``, ``log_y`` (B, n) at once: (B, 3) parameters on normalised sizes and their costs."""
    c_max = np.exp(log_y).max(axis=1)
    p = _polish(x, log_y, _profile(x, log_y, c_max), c_max)
    return p, _costs(x, log_y, p)


def _pairs_replicates(x: np.ndarray, log_y: np.ndarray, n_boot: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Whole points drawn with replacement, ``n_boot`` times; draws with fewer than 3 distinct sizes are left
    out (3 parameters cannot be fitted to them)."""
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    distinct = np.array([np.unique(x[row]).size for row in idx])
    idx = idx[distinct >= 3]
    return x[idx], log_y[idx]


def _residual_replicates(x: np.ndarray, log_y: np.ndarray, fitted: np.ndarray, n_boot: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The fit plus its centred, dof-inflated log residuals drawn with replacement, ``n_boot`` times."""
    resid = log_y - fitted
    centred = (resid - resid.mean()) * math.sqrt(x.size / (x.size - _N_PARAMS))
    draws = rng.choice(centred, size=(n_boot, x.size), replace=True)
    return np.broadcast_to(x, draws.shape), fitted + draws


def _percentiles(samples: np.ndarray, ci: float, n_boot: int) -> list[tuple[float, float]]:
    """Percentile intervals of each parameter; NaN when fewer than half the draws gave a fit (intervals from
    a minority of replicates would be conditioned on the easy resamples only)."""
    if samples.shape[0] == 0 or samples.shape[0] < 0.5 * n_boot:
        return [(math.nan, math.nan)] * _N_PARAMS
    q = (1.0 - ci) / 2.0
    lo, hi = np.quantile(samples, q, axis=0), np.quantile(samples, 1.0 - q, axis=0)
    return [(float(lo[i]), float(hi[i])) for i in range(_N_PARAMS)]


def fit_power_law(n_params: Any, loss: Any, *, n_boot: int = N_BOOT, seed: int = 0, ci: float = 0.95) -> PowerLawFit:
    """Fit ``L(N) = a * N**-alpha + c`` to (parameters, loss) points, with bootstrap intervals.

    ``n_params`` and ``loss`` are equal-length sequences; repeated sizes are allowed, but at least 3 distinct
    sizes are needed. ``loss`` must be positive (MSE space, not PSNR; see :func:`psnr_to_mse`). See the module
    docstring for the residuals, bounds, starts and the bootstrap. Deterministic for a given ``seed``.
    """
    n, y = _checked(n_params, loss, ci, n_boot)
    n_sizes = int(np.unique(n).size)
    n_ref = float(np.exp(np.mean(np.log(np.unique(n)))))  # conditioning (see the module docstring)
    x, log_y = n / n_ref, np.log(y)
    start, start_cost = _fit_many(x[None, :], log_y[None, :])
    best = _fit_once(x, log_y, [tuple(start[0])], float(np.max(y)))
    if best is None or best[1] > start_cost[0] + 1e-12:  # a stalled polish: the old grid of starts as well
        best = _fit_once(x, log_y, [tuple(start[0]), *_grid_starts(x, y)], float(np.max(y)))
    if best is None:
        raise RuntimeError("the power-law fit failed from every starting point")
    popt = best[0]
    fitted = _log_model(x, *popt)
    resid = log_y - fitted
    method, samples = "none", np.zeros((0, _N_PARAMS))
    if n_boot > 0 and n.size > _N_PARAMS:
        rng = np.random.default_rng(seed)
        if n_sizes >= PAIRS_MIN_SIZES:
            method, (xs, ys) = "pairs", _pairs_replicates(x, log_y, n_boot, rng)
        else:
            method, (xs, ys) = "residuals", _residual_replicates(x, log_y, fitted, n_boot, rng)
        params, costs = _fit_many(np.ascontiguousarray(xs), ys)
        samples = params[np.isfinite(costs)]
        samples = np.column_stack([samples[:, 0] * n_ref ** samples[:, 1], samples[:, 1], samples[:, 2]])
    cis = _percentiles(samples, ci, n_boot)
    a, alpha, c = float(popt[0] * n_ref ** popt[1]), float(popt[1]), float(popt[2])
    return PowerLawFit(a=a, alpha=alpha, c=c, a_ci=cis[0], alpha_ci=cis[1], c_ci=cis[2], n_points=int(n.size),
                       n_sizes=n_sizes, ci=float(ci), n_boot=int(n_boot), n_boot_ok=int(samples.shape[0]),
                       bootstrap=method, rms_log_residual=float(np.sqrt(np.mean(resid * resid))),
                       boot_params=tuple(tuple(float(v) for v in row) for row in samples),
                       log_residuals=tuple(float(v) for v in resid))


def _checked(n_params: Any, loss: Any, ci: float, n_boot: int) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(n_params, dtype=np.float64).ravel()
    y = np.asarray(loss, dtype=np.float64).ravel()
    if n.shape != y.shape:
        raise ValueError(f"n_params and loss differ in length: {n.size} vs {y.size}")
    if not (np.all(np.isfinite(n)) and np.all(n > 0)):
        raise ValueError("n_params must be finite positive parameter counts")
    if not (np.all(np.isfinite(y)) and np.all(y > 0)):
        raise ValueError("loss must be finite and positive (fit MSE or loss, not PSNR; see psnr_to_mse)")
    if np.unique(n).size < 3:
        raise ValueError(f"a power-law fit needs at least 3 model sizes (distinct n_params), got {np.unique(n).size}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    return n, y
