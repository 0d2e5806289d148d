"""Calibration of the report's verdicts: simulated studies with a known truth, run through the functions the
report itself calls, and the rate at which each verdict is right.

Every simulated study has the structure a real one has, or the rates would mean nothing:

- a seed's offset shared by every level and context (the reader gives a seed the same batches everywhere),
  and a level x seed part of the trial noise shared by every context (the same batches again);
- per-image scores with image effects (images differ in difficulty by about 1 dB);
- cell sds that differ up to 10x between levels (each level's sd drawn log-uniform over a 10x range);
- size means that depart from the true trend or law by a per-size amount (lack of fit), shared by its seeds.

The lines:

    effects    null studies (no effect at all), 4 and 6 levels x 2 and 3 seeds, 1 and 3 contexts, through
               `noise.axis_effects`: how often any level is called "real" (family-wise error; target <= 0.06)
    trend      size means on a known slope per doubling plus per-size departures, through `sizes.size_trend`:
               how often its 95% interval covers the slope (target >= 0.93)
    heldout    a true law L(N) = a N^-alpha + c with 5 sizes, through `sizes.held_out`: how often the measured
               held-out size mean falls inside its 95% prediction interval (target >= 0.90), and how often the
               report says the law predicts (its power; reported, no target)
    law        a flat truth (no size effect) with 5 sizes, through `sizes.held_out`: how often the report would
               say the law predicts (target <= 0.10)
    transfer   a known drift of the best LR with 3 seeds, through `transfer.analyse_transfer`: how often the
               drift's 95% interval covers it (target >= 0.90)
    claims     null studies of the tree-depth design (depth 2/3/4, the paper's two claims: 3 beats 2, 4 beats 3)
               x 2 and 3 seeds, through `claims.check_claims` on the shipped spec: how often any claim is called
               agreeing or contradicting (family-wise error over a study's claims; target <= 0.06)

    .venv/bin/python bench/stats_calibration.py            # the full run: 2,000 studies a line (500 for the law)
    .venv/bin/python bench/stats_calibration.py --quick    # 10x fewer, for development

The seed is fixed, so the figures reproduce. The last line is
`calibration: fwer=<max> trend_coverage=<min> heldout_coverage=<min> transfer_coverage=<min> law_false_predicts=<max>
claims_fwer=<max>`.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")  # many small numpy calls: threads only contend on 2 shared cores

import numpy as np  # noqa: E402

from hiir.platform.results.analysis import analyse  # noqa: E402
from hiir.platform.results.claims import UNRESOLVED, check_claims  # noqa: E402
from hiir.platform.results.noise import REAL, TrialScores, axis_effects  # noqa: E402
from hiir.platform.results.sizes import held_out, size_trend  # noqa: E402
from hiir.platform.results.transfer import analyse_transfer  # noqa: E402
from hiir.platform.results.trials import Trial  # noqa: E402
from hiir.platform.study.spec import load_spec  # noqa: E402

SEED = 20
IMAGES = 8
SD_RANGE = 10.0   # a level's trial sd is drawn log-uniform in [SD, SD_RANGE * SD]


def _level_sds(rng: np.random.Generator, n: int, sd: float) -> np.ndarray:
    return sd * SD_RANGE ** rng.uniform(0.0, 1.0, n)


# ------------------------------------------------------------------------------------------- effects


def effects_study(rng: np.random.Generator, levels: int, seeds: int, contexts: int) -> bool:
    """One null study; True when any level of its axis is called real."""
    sds = _level_sds(rng, levels, 0.03)                                     # per level, dB
    image = rng.normal(0.0, 1.0, IMAGES)
    seed_offset = rng.normal(0.0, 0.1, seeds)
    context = rng.normal(0.0, 0.3, contexts)
    shared = rng.normal(0.0, 1.0, (levels, seeds, 1)) * sds[:, None, None] * math.sqrt(0.5)  # level x seed
    own = rng.normal(0.0, 1.0, (levels, seeds, contexts)) * sds[:, None, None] * math.sqrt(0.5)
    trial = 30.0 + seed_offset[None, :, None] + context[None, None, :] + shared + own
    scores = trial[..., None] + image + rng.normal(0.0, 0.05, (levels, seeds, contexts, IMAGES))
    trials = [TrialScores({"level": f"l{lv}", "context": f"c{c}", "seed": s},
                          {"val": {f"i{i}": float(v) for i, v in enumerate(scores[lv, s, c])}})
              for lv in range(levels) for s in range(seeds) for c in range(contexts)]
    return any(e.verdict == REAL for e in axis_effects(trials, {"level": "l0"}) if e.axis == "level")


def claims_study(rng: np.random.Generator, spec, seeds: int) -> bool:
    """One null study of a depth axis (2/3/4) judged on the spec's claims; True when any claim is decided."""
    levels = (2, 3, 4)
    sds = _level_sds(rng, len(levels), 0.03)
    image = rng.normal(0.0, 1.0, IMAGES)
    seed_offset = rng.normal(0.0, 0.1, seeds)
    trials = []
    for i, depth in enumerate(levels):
        for s in range(seeds):
            scores = 30.0 + seed_offset[s] + rng.normal(0.0, sds[i]) + image + rng.normal(0.0, 0.05, IMAGES)
            trials.append(Trial(f"r{i}-{s}", f"t{i}-{s}", "FINISHED", {"model.tree_depth": str(depth), "seed": str(s)},
                                {"resolved_model.tree_depth": str(depth), "resolved_model.scale": "2"},
                                {"val_psnr": float(scores.mean())}, ([], []),
                                per_image={"val": {f"i{j}": float(v) for j, v in enumerate(scores)}}))
    analysis = analyse(trials, parent_metrics={}, parent_tags={})
    return any(c.verdict != UNRESOLVED for c in check_claims(spec, analysis))


# ------------------------------------------------------------------------------------------- trend


def trend_study(rng: np.random.Generator, sizes: int, seeds: int, slope: float = 0.2) -> bool:
    """Size means on a known slope plus per-size departures; True when the interval covers the slope."""
    n = 1e4 * 2.0 ** np.arange(sizes)
    departure = rng.normal(0.0, 0.05, sizes)
    sds = _level_sds(rng, sizes, 0.02)
    seed_offset = rng.normal(0.0, 0.1, seeds)
    psnr = (30.0 + slope * np.log2(n / n[0]) + departure)[:, None] + seed_offset + \
        rng.normal(0.0, 1.0, (sizes, seeds)) * sds[:, None]
    trend = size_trend(np.repeat(n, seeds), psnr.ravel(), np.tile(np.arange(seeds), sizes))
    return trend.ci[0] <= slope <= trend.ci[1]


# ------------------------------------------------------------------------------------------- the law


def _law_psnr(n: np.ndarray) -> np.ndarray:
    return -10.0 * np.log10(1.5e-2 * n**-0.4 + 2.5e-4)   # 33.5 dB at 1e4 body parameters, 35.4 at 1.6e5


def law_study(rng: np.random.Generator, seeds: int, flat: bool) -> tuple[bool | None, bool]:
    """5 sizes, 2x apart: (held-out size inside its interval or None without one, the law 'predicts')."""
    n = 1e4 * 2.0 ** np.arange(5)
    truth = np.full(5, 34.5) if flat else _law_psnr(n)
    psnr = (truth + rng.normal(0.0, 0.03, 5))[:, None] + rng.normal(0.0, 0.1, seeds) + \
        rng.normal(0.0, 1.0, (5, seeds)) * _level_sds(rng, 5, 0.01)[:, None]
    h = held_out(np.repeat(n, seeds), psnr.ravel(), np.tile(np.arange(seeds), 5), seed=int(rng.integers(1 << 30)))
    return h.inside, h.predicts


# ------------------------------------------------------------------------------------------- transfer


WIDTHS = (16, 32, 64)
LRS = tuple(2.0 ** k * 1e-3 for k in range(-1, 8))  # 9 LRs, 0.5e-3 .. 0.128


def transfer_study(rng: np.random.Generator, seeds: int, drift: float = -0.5) -> bool | None:
    """Final loss = 0.03 + 0.004 (log2 lr - log2 best)^2 + a seed's offset + noise 1e-3 (the neighbour-to-
    neighbour noise measured at smoke scale); True when the drift's interval covers ``drift`` (None: none)."""
    trials = []
    start = rng.uniform(math.log2(6e-3), math.log2(1.2e-2))
    for s in range(seeds):
        offset = rng.normal(0.0, 0.002)
        for w in WIDTHS:
            best = start + drift * math.log2(w / WIDTHS[0])
            for lr in LRS:
                final = 0.03 + 0.004 * (math.log2(lr) - best) ** 2 + offset + rng.normal(0.0, 1e-3)
                trials.append(Trial(f"{s}-{w}-{lr}", "", "FINISHED", {"optim.lr": str(lr), "seed": str(s)},
                                    {"resolved_model.dim": str(w)}, {}, ([400], [final])))
    (d,) = analyse_transfer(trials)
    lo, hi = d.interval
    return None if math.isnan(lo) else lo <= drift <= hi


# ------------------------------------------------------------------------------------------- the run


def _row(name: str, results: list[bool | None]) -> float:
    """Print one line of the table: the rate over the studies that gave a verdict (None: no interval)."""
    judged = [r for r in results if r is not None]
    rate = float(np.mean(judged)) if judged else math.nan
    print(f"{name:<58} {len(results):>7} {len(judged):>7} {rate:>7.3f}", flush=True)
    return rate


def _rate(name: str, studies: int, draw: Callable[[np.random.Generator], bool | None],
          rng: np.random.Generator) -> float:
    return _row(name, [draw(rng) for _ in range(studies)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer studies a line, for development")
    args = parser.parse_args()
    per_line, per_law = (200, 50) if args.quick else (2000, 500)
    rng = np.random.default_rng(SEED)
    start = time.time()
    print(f"{'line':<58} {'studies':>7} {'judged':>7} {'rate':>7}")
    fwer = [_rate(f"effects: null, {lv} levels x {s} seeds x {c} contexts, any real", per_line,
                  lambda r, lv=lv, s=s, c=c: effects_study(r, lv, s, c), rng)
            for lv in (4, 6) for s in (2, 3) for c in (1, 3)]
    trend = [_rate(f"trend: {k} sizes x {s} seeds, 95% interval covers", per_line,
                   lambda r, k=k, s=s: trend_study(r, k, s), rng) for k, s in ((4, 2), (6, 3))]
    heldout = []
    for s in (2, 3):
        studies = [law_study(rng, s, flat=False) for _ in range(per_law)]
        heldout.append(_row(f"law: true, 5 sizes x {s} seeds, held-out inside", [i for i, _ in studies]))
        _row(f"law: true, 5 sizes x {s} seeds, 'predicts' (power, reported)", [p for _, p in studies])
    false_predicts = [_rate(f"law: flat, 5 sizes x {s} seeds, 'predicts'", per_law,
                            lambda r, s=s: law_study(r, s, flat=True)[1], rng) for s in (2, 3)]
    transfer = [_rate("transfer: drift -0.5, 3 seeds, 95% interval covers", per_line,
                      lambda r: transfer_study(r, 3), rng)]
    depth = load_spec("paper/tree_depth", scale="smoke")
    claims = [_rate(f"claims: null, tree depth 2/3/4 x {s} seeds, any decided", per_line,
                    lambda r, s=s: claims_study(r, depth, s), rng) for s in (2, 3)]
    print(f"wall time {time.time() - start:.0f} s")
    print(f"calibration: fwer={max(fwer):.3f} trend_coverage={min(trend):.3f} heldout_coverage={min(heldout):.3f} "
          f"transfer_coverage={min(transfer):.3f} law_false_predicts={max(false_predicts):.3f} "
          f"claims_fwer={max(claims):.3f}")


if __name__ == "__main__":
    main()
