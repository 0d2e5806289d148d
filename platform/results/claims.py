"""The paper's directions beside ours: each claim a study carries (`expected.claims`) checked against its trials.

A claim compares two sides (`level` against `reference`, picked by config keys) or states the size axis's
direction (`trend`). The paper's number is the difference of the two `expected.rows` the claim names, per
val set. Ours is judged under the report's verdict rules:

* **A pair claim** is an effect as `noise.axis_effects` computes one: the two sides' trials paired by seed and
  val image, averaged over the other axes' contexts per seed (an axis whose levels differ between the sides,
  such as the preset that names a depth, is part of the side, not a context), judged by both the simultaneous
  interval and the side's own t interval over its seeds. The claims of one study are one family: each is
  judged at 1 - 0.05/m for m pair claims (Bonferroni), so a null study calls any claim decided at most 5% of
  the time.
* **A trend claim** reads the size trend on the size means (its 95% interval on sizes - 2 dof).

Verdicts: `agrees` or `contradicts` (beyond noise, by sign against the paper's), else `not resolved` with
why: within seed noise (and the smallest effect the design could detect), one seed, a side with no trials at
this scale (or both sides the same trials), or trials at or below the baseline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hiir.platform.results.analysis import Analysis
from hiir.platform.results.noise import NO_REPLICATES, REAL, TrialScores, axis_effects
from hiir.platform.results.trials import Trial
from hiir.platform.study.axes import SEED_AXIS
from hiir.platform.study.spec import Claim, StudySpec, expected_values

__all__ = ["ClaimCheck", "check_claims", "paper_difference", "headline_claims", "AGREES", "CONTRADICTS",
           "UNRESOLVED"]

AGREES, CONTRADICTS, UNRESOLVED = "agrees", "contradicts", "not resolved"
FAMILY_LEVEL = 0.95  # the claims of a study together
SIDE = "claim"  # the axis the two sides are put on


@dataclass(frozen=True)
class ClaimCheck:
    """One claim: the paper's difference per set (dB), ours on the headline PSNR with its interval, the
    verdict and, when not resolved, why."""

    says: str
    paper: dict[str, float]            # val set -> the paper's level minus reference (dB); empty without rows
    ours_db: float = math.nan          # ours (dB; dB per doubling for a trend claim)
    ci_db: tuple[float, float] = (math.nan, math.nan)
    detectable_db: float = math.nan    # the smallest difference (slope) this design would call real
    n_seeds: int = 0
    verdict: str = UNRESOLVED
    why: str = ""
    unit: str = "dB"
    level: float = FAMILY_LEVEL        # the claim's own interval level (Bonferroni within the study)

    @property
    def paper_words(self) -> str:
        if not self.paper:
            return "no number"
        sets = ", ".join(f"{k} {v:+.2f}" for k, v in self.paper.items())
        return f"{sets} dB" if len(self.paper) == 1 else f"mean {np.mean(list(self.paper.values())):+.2f} dB ({sets})"

    @property
    def ours_words(self) -> str:
        if not math.isfinite(self.ours_db):
            return "-"
        lo, hi = self.ci_db
        ci = f" [{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
        return f"{self.ours_db:+.2f} {self.unit}{ci}"

    @property
    def verdict_words(self) -> str:
        if self.verdict != UNRESOLVED:
            return f"{self.verdict} beyond noise"
        return f"{UNRESOLVED} at this scale ({self.why})"

    @property
    def sentence(self) -> str:
        return (f"Paper: {self.says} ({self.paper_words}). Ours: {self.ours_words}"
                + (f" over {self.n_seeds} seeds" if self.n_seeds else "") + f": **{self.verdict_words}**")


def check_claims(spec: StudySpec, analysis: Analysis) -> list[ClaimCheck]:
    """Every claim of the study, judged on its finished trials (see the module docstring)."""
    claims = spec.claims
    pairs = sum(c.trend is None for c in claims)
    level = 1 - (1 - FAMILY_LEVEL) / max(pairs, 1)
    aliases = _preset_aliases(spec)
    return [_trend(c, spec, analysis) if c.trend else _pair(c, spec, analysis, aliases, level) for c in claims]


def _pair(claim: Claim, spec: StudySpec, a: Analysis, aliases: dict[str, set[str]], level: float) -> ClaimCheck:
    paper = paper_difference(spec, claim)
    done = [t for t in a.trials if t.done and _matches(t, claim.where, aliases)]
    sides = {"level": [t for t in done if _matches(t, claim.level, aliases)],
             "reference": [t for t in done if _matches(t, claim.reference, aliases)]}
    missing = [side for side, trials in sides.items() if not trials]
    if missing:
        return ClaimCheck(claim.says, paper, why=f"no finished trial of the {' or the '.join(missing)} at this scale",
                          level=level)
    if {t.run_id for t in sides["level"]} & {t.run_id for t in sides["reference"]}:
        return ClaimCheck(claim.says, paper, why="its two sides are the same trials at this scale (a scale mapped "
                          "both to one preset)", level=level)
    trials = sides["level"] + sides["reference"]
    below = [t for t in trials if t in a.below_baseline]
    context = [k for k in {k for t in trials for k in t.axes} - {SEED_AXIS}
               if {t.axes.get(k) for t in sides["level"]} == {t.axes.get(k) for t in sides["reference"]}]
    scores = []
    for side, group in sides.items():
        for t in group:
            s = t.scores()
            axes = {**{k: t.axes.get(k) for k in context}, SIDE: side}
            if SEED_AXIS in t.axes:
                axes[SEED_AXIS] = t.axes[SEED_AXIS]
            scores.append(TrialScores(axes, s.per_image, s.per_set))
    effect = next(e for e in axis_effects(scores, {SIDE: "reference"}, ci=level) if e.axis == SIDE)
    check = ClaimCheck(claim.says, paper, effect.mean_db, effect.ci_db, effect.detectable_db, effect.n_seeds,
                       level=level)
    if below:
        return _unresolved(check, f"{len(below)} of its trials at or below {a.baseline_name}")
    if effect.verdict == NO_REPLICATES:
        return _unresolved(check, "one seed: no noise verdict")
    if effect.verdict != REAL:
        return _unresolved(check, f"within seed noise; detectable ±{effect.detectable_db:.2f} dB")
    if not paper:
        return _unresolved(check, "its expected rows give no PSNR to compare the sign with")
    return _decided(check, effect.mean_db, float(np.mean(list(paper.values()))))


def _trend(claim: Claim, spec: StudySpec, a: Analysis) -> ClaimCheck:
    paper = paper_difference(spec, claim)
    laws = [law for law in a.laws if law.trend is not None]
    if not laws:
        return ClaimCheck(claim.says, paper, why="fewer than 3 sizes: no trend", unit="dB per doubling")
    t = laws[0].trend
    n_seeds = max((s["seeds"] for s in laws[0].sizes), default=0)
    check = ClaimCheck(claim.says, paper, t.per_doubling, t.ci, t.detectable_db, n_seeds, unit="dB per doubling",
                       level=t.level)
    if a.below_baseline:
        return _unresolved(check, f"{len(a.below_baseline)} trials at or below {a.baseline_name}")
    if t.direction == "flat":
        return _unresolved(check, f"flat within the size means' scatter; detectable ±{t.detectable_db:.2f} "
                                  "dB per doubling")
    return _decided(check, t.per_doubling, 1.0 if claim.trend == "rises" else -1.0)


def _decided(check: ClaimCheck, ours: float, paper_sign: float) -> ClaimCheck:
    agree = np.sign(ours) == np.sign(paper_sign)
    return replace(check, verdict=AGREES if agree else CONTRADICTS)


def _unresolved(check: ClaimCheck, why: str) -> ClaimCheck:
    return replace(check, verdict=UNRESOLVED, why=why)


def paper_difference(spec: StudySpec, claim: Claim) -> dict[str, float]:
    """The paper's level minus reference per val set, from the two expected rows the claim names."""
    if not claim.paper:
        return {}
    rows = [expected_values(spec, match) for match in claim.paper]
    if any(r is None for r in rows):
        return {}
    level, reference = rows
    return {k: float(level[k]) - float(reference[k]) for k in level
            if k in reference and k != "params_M" and isinstance(level[k], (int, float))}


def _preset_aliases(spec: StudySpec) -> dict[str, set[str]]:
    """A preset -> itself and every preset a scale block puts in its place (`presets`)."""
    out: dict[str, set[str]] = {}
    for block in spec.scale.values():
        for big, small in block.presets.items():
            out.setdefault(big, {big}).add(small)
    return out


def _matches(t: Trial, select: dict[str, Any], aliases: dict[str, set[str]]) -> bool:
    for key, wanted in select.items():
        allowed = set()
        for value in wanted if isinstance(wanted, list) else [wanted]:
            allowed |= aliases.get(str(value), {str(value)})
        if _value(t, key) not in allowed:
            return False
    return True


def _value(t: Trial, key: str) -> str | None:
    """A trial's value of a config key: its resolved model's for a model field, else its axis or param."""
    if key.startswith("model.") and f"resolved_{key}" in t.params:
        return t.params[f"resolved_{key}"]
    value = t.axes.get(key, t.params.get(key))
    return None if value is None else str(value)


def headline_claims(checks: list[ClaimCheck]) -> dict[str, float]:
    """Counts for the study run's metrics: claims that agree, contradict, and are not resolved."""
    return {f"claims_{name.replace(' ', '_')}": float(sum(c.verdict == name for c in checks))
            for name in (AGREES, CONTRADICTS, UNRESOLVED)} if checks else {}

