"""The study report in words: the answer first, in a few lines, then the tables that back it.

Every table starts from the baseline row (bicubic for SR, the degraded input otherwise); a trial at or
below it is marked; a difference is called an effect only when it exceeds seed noise with family-wise control
(`noise`); a size trend, law or best size is stated only as far as the size means allow (`sizes`); every
verdict says what it assumed and the smallest effect its design could detect; and the report says plainly
what the data show, also where that contradicts the paper.
"""
from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any

from hiir.platform import tracking
from hiir.platform.results.analysis import HEADLINE, Analysis, SizeLaw, baseline_by_set
from hiir.platform.results.claims import ClaimCheck
from hiir.platform.results.noise import NO_REPLICATES, REAL, VARIANCE_FACTOR
from hiir.platform.results.sizes import LAW_MIN_SIZES, fmt_size
from hiir.platform.results.trials import Trial

BELOW = "✗ at or below baseline"
ISOLATED = "†"  # no path across patch borders
QUANTITY = ("PSNR here is `val_psnr`: the mean over the val sets of each set's mean headline PSNR (Y for SR), "
            "every set weighted alike; tables, trends, laws, held-out values and plots all use it")
BODY = ("body parameters: everything but the pixel-shuffle head (the input conv counts), what grows with the "
        "family's width and depth")


def render_markdown(spec, analysis: Analysis, plots: list[Path], *, more_answer: list[str] = (),
                    more_sections: list[str] = (), claims: list[ClaimCheck] = (), scale_note: str = "") -> str:
    """The report; `more_answer` joins the answer's lines and `more_sections` (markdown lines) follows the
    results table (a study kind's own analysis, e.g. `transfer`); `claims` are the paper's directions checked
    (`claims.check_claims`); `scale_note` says what the scale that ran can and cannot ask."""
    trials = analysis.trials
    lines = [f"# Study `{spec.name}`", "", spec.question or "", ""]
    if scale_note:
        lines += [f"> {scale_note}", ""]
    lines += ["## The answer", ""]
    lines += [f"- {s}" for s in [*more_answer, *answer(analysis), *(c.sentence for c in claims)]] + [""]
    lines += [_counts(trials), ""]
    lines += ["## Results", "", markdown_table(results_table(spec, analysis)), ""]
    if analysis.isolated:
        lines += [f"{ISOLATED} the model has no path for information across its P x P patch borders (tree depth 2, "
                  "linear stage ends, L2 bounded by P): each output pixel sees only its own patch.", ""]
    synthetic = sorted({s for t in trials for s in t.synthetic})
    if synthetic:
        lines += [f"\\* synthetic stand-in (not the real benchmark; numbers are not comparable with the paper's): "
                  f"{', '.join(synthetic)}. See each dataset's manifest.json (degradation.synthetic_stand_in).", ""]
    lines += list(more_sections) + _claims_section(claims)
    lines += _noise_section(analysis) + _law_section(analysis) + _budget_section(analysis) + _stop_section(analysis)
    if spec.expected:
        lines += [f"## The paper's numbers ({spec.expected.get('table', 'expected')})", "",
                  spec.expected.get("note", ""), "",
                  markdown_table([{**(r.get("match") or {}), **{k: v for k, v in r.get("values", {}).items()}}
                                  for r in spec.expected.get("rows", [])]), ""]
        if spec.expected.get("baselines"):
            lines += ["Other methods in the same table:", "", markdown_table(spec.expected["baselines"]), ""]
    failed = [t for t in trials if t.status == "FAILED"]
    if failed:
        lines += ["## Failed trials", ""]
        lines += [f"- `{t.name}` ({t.run_id}): {t.tags.get(tracking.ERROR_TAG, '')}".rstrip(": ")
                  for t in failed] + [""]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def answer(a: Analysis) -> list[str]:
    """The study's answer in a few plain sentences."""
    out = []
    base = a.baseline.get(HEADLINE)
    if a.best is not None:
        line = (f"Best trial: `{label(a.best)}`, {a.best.metrics[HEADLINE]:.2f} dB "
                "(mean headline PSNR over the val sets, each set weighted alike)")
        if base is not None:
            line += f", {a.best.metrics[HEADLINE] - base:+.2f} dB against {a.baseline_name} ({base:.2f} dB)"
        out.append(line + ".")
    elif a.trials:
        out.append("No trial finished: there is no answer yet.")
    if base is None:
        out.append("No baseline was logged for this study (run before baselines existed): compare with care.")
    elif a.below_baseline:
        done = sum(t.done for t in a.trials)
        out.append(f"**{len(a.below_baseline)} of {done} finished trials score at or below {a.baseline_name}** "
                   f"({base:.2f} dB): they learned less than a fixed filter gives; do not read effects from them.")
    elif a.best is not None:
        out.append(f"Every finished trial is above {a.baseline_name} ({base:.2f} dB).")
    out += _sets_below(a)
    out += [_law_sentence(law) for law in a.laws]
    if a.noise is not None and math.isfinite(a.noise.sd_db):
        out.append(f"Seed noise: a trial's PSNR varies by {a.noise.sd_db:.3f} dB (sd) from seed to seed "
                   f"({a.noise.n_cells} cells, {a.noise.dof} degrees of freedom).")
    real = [e for e in a.effects if e.verdict == REAL]
    noise = [e for e in a.effects if e.verdict not in (REAL, NO_REPLICATES)]
    if real or noise:
        out.append("Beyond seed noise (95% simultaneous per axis): "
                   + ("; ".join(e.sentence for e in real) if real else "no effect") + ".")
        if noise:
            out.append("Within seed noise (not a finding): " + "; ".join(e.sentence for e in noise) + ".")
    elif a.effects:
        out.append("No replicate seeds: no difference here can be told from seed noise (add `seeds: K`).")
    for budget, best in a.budgets:
        out.append(f"At {budget:.3g} training FLOPs (sizes in body parameters), {best.words}.")
    if a.stops:
        out.append(f"{len(a.stops)} trial(s) stopped early, each compared only with trials of its own size and budget "
                   "(see Early stopping).")
    if a.isolated:
        out.append(f"{len(a.isolated)} trial(s) ({ISOLATED}) have no path across patch borders.")
    return out


def _sets_below(a: Analysis) -> list[str]:
    """Each val set on which finished trials score at or below the baseline's own score there: a mean over sets
    above the baseline can hide a task the model makes worse."""
    done = sum(t.done for t in a.trials)
    return [f"On `{name}`, {count} of {done} finished trials score at or below {a.baseline_name} ({bar:.2f} dB "
            "there): the mean over sets hides that." for name, (count, bar) in a.sets_below.items()]


def _law_sentence(law: SizeLaw) -> str:
    """The size axis in words: the trend, the sizes, and the law's held-out check or why there is no law."""
    where = f" ({_context(law.context)})" if law.context else ""
    count = "body" if law.body else "total"
    sizes = ", ".join(f"{fmt_size(s['size'])} {s['psnr']:.2f}" for s in law.sizes)
    span, total = law.span
    text = (f"Size{where}: {_trend_words(law)}. Mean PSNR per size ({count} parameters): {sizes} dB; the sizes "
            f"span {span:.3g}x in {count} parameters" + (f" ({total:.3g}x in total)" if law.body else "") + ".")
    if law.fit is None:
        return text + f" **No law: {len(law.sizes)} sizes** (a law needs {LAW_MIN_SIZES}+)."
    if law.unidentified:
        text += (f" The law on the {len(law.sizes)} size means is not identified ({'; '.join(law.unidentified)}): "
                 "its coefficients are not estimates, and neither the tables nor the plots show it.")
    else:
        lo, hi = law.fit.alpha_ci
        ci = f" [{lo:.3g}, {hi:.3g}]" if math.isfinite(lo) else " (no interval: too few points)"
        text += f" Law on the {len(law.sizes)} size means: alpha = {law.fit.alpha:.3g}{ci}."
    if law.held_out is not None:
        sentence = law.held_out.sentence
        text += f" {sentence[0].upper()}{sentence[1:]}."
    elif law.note:
        text += f" ({law.note}.)"
    return text


def _trend_words(law: SizeLaw) -> str:
    """The size trend in words: its slope per doubling with the interval, and any step where PSNR fell."""
    t = law.trend
    if t is None:
        return (f"{len(law.sizes)} size{'s' * (len(law.sizes) != 1)}: too few for a trend (3+ sizes leave the "
                "means a degree of freedom); see the effects for each size against the smallest")
    slope = t.slope_words + (f"; {t.lack_of_fit.sentence}" if t.lack_of_fit is not None else "")
    if t.direction == "flat":
        return f"**PSNR does not rise with size beyond the size means' scatter at this scale**: {slope}"
    if t.direction == "falls":
        return f"**PSNR falls with size**: {slope}"
    dips = [f"{fmt_size(b['size'])} below {fmt_size(a['size'])}"
            for a, b in zip(law.sizes, law.sizes[1:]) if b["psnr"] <= a["psnr"]]
    return f"PSNR rises with size, {slope}" + (f", though not at every step ({', '.join(dips)})" if dips else "")


def results_table(spec, a: Analysis) -> list[dict[str, Any]]:
    """The baseline row, then one row per trial: axes, size, status, per-set headline PSNR, the margin over
    the baseline, and the paper's number beside it."""
    base = a.baseline
    first = a.trials[0] if a.trials else None
    order = _set_order(first) if first else {}
    rows = []
    if HEADLINE in base:
        row = {"trial": f"baseline: {a.baseline_name}"}
        for name, value in sorted(baseline_by_set(base, first).items(), key=lambda kv: (order.get(kv[0], 99), kv[0])):
            column = name + ("*" if first is not None and name in first.synthetic else "")  # as the trials' rows
            row[column] = f"{value:.2f}"
        rows.append({**row, "mean PSNR": f"{base[HEADLINE]:.2f}"})
    expected = (spec.expected or {}).get("rows", [])
    for t in a.trials:
        row: dict[str, Any] = {"trial": label(t) + (f" {ISOLATED}" if not t.crosses_patches else ""),
                               "params (M)": _fmt_m(t.n_params), "body (M)": _fmt_m(t.body_params),
                               "status": _status(t)}
        sets = t.set_psnr()
        for name in sorted(sets, key=lambda n: (_set_order(t).get(n, 99), n)):
            if sets[name] is not None:
                row[name + ("*" if name in t.synthetic else "")] = f"{sets[name]:.2f}"
        for key, value in sorted(t.metrics.items()):  # a mixture's per-task means (over its levels)
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "val_task" and parts[2] == "psnr":
                row[f"{parts[1]} (mean)"] = f"{value:.2f}"
        if HEADLINE in t.metrics:
            row["mean PSNR"] = f"{t.metrics[HEADLINE]:.2f}"
            if HEADLINE in base:
                margin = t.metrics[HEADLINE] - base[HEADLINE]
                row["vs baseline"] = f"{margin:+.2f}" + (f" {BELOW}" if t in a.below_baseline else "")
        for exp in expected:
            if all(str(t.axes.get(k, t.params.get(k))) == str(v) for k, v in (exp.get("match") or {}).items()):
                row["paper"] = ", ".join(f"{k} {v}" for k, v in exp.get("values", {}).items())
                break
        rows.append(row)
    return rows


def _claims_section(claims: list[ClaimCheck]) -> list[str]:
    if not claims:
        return []
    pairs = [c for c in claims if c.unit == "dB"]
    return ["## The paper's directions beside ours", "",
            "Each claim's paper number is the difference of its two rows in the paper's table, per val set. Ours is "
            "the same comparison on this study's headline PSNR, paired by seed and val image and averaged over the "
            "other axes' contexts per seed; it agrees or contradicts only beyond seed noise, by both the "
            "simultaneous and the own interval"
            + (f", each at {pairs[0].level:.2%} so that the study's {len(pairs)} claims together hold 95% "
               "(Bonferroni)" if len(pairs) > 1 else "")
            + ". A trend claim reads the size trend on the size means. Anything else is not resolved at this "
            "scale, with why and the smallest effect the design could detect.", "",
            markdown_table([{"paper says": c.says, "paper": c.paper_words, "ours": c.ours_words,
                             "seeds": c.n_seeds or "-", "detectable": f"±{c.detectable_db:.2f}"
                             if math.isfinite(c.detectable_db) else "-", "verdict": c.verdict_words}
                            for c in claims]), ""]


def _noise_section(a: Analysis) -> list[str]:
    if not a.cells and not a.effects:
        return []
    lines = ["## Seed noise and effects", ""]
    if a.cells:
        lines += ["Each cell over its seeds (mean ± sd of the mean PSNR):", "",
                  markdown_table([{**{k: _fmt_axis(str(v)) for k, v in c.cell.items()}, "PSNR": c.sentence}
                                  for c in a.cells]), ""]
    if a.effects:
        lines += ["Each axis level against the first (on a size axis, the smallest), paired by seed and val image and "
                  "averaged over the other axes' contexts per seed (a seed gives a level the same batches in every "
                  "context, so contexts do not multiply the seeds). Two 95% intervals judge it: the simultaneous one "
                  "(Dunnett's procedure over the axis's comparisons, on the two-way residual of the level x seed "
                  "table), which **assumes equal seed-to-seed variances within the axis**, and the level's own t "
                  "interval over its seeds, which assumes nothing about the other levels. An effect is real only "
                  "when both exclude 0, so that a study with no effect calls any level real at most 5% of the "
                  "time, even where the levels' variances differ (bench/stats_calibration.py). \"detectable\" is "
                  "the smallest difference the design could call real.", ""]
        unequal = [e for e in a.effects if e.unequal]
        if unequal:
            named = "; ".join(f"{e.axis} {e.level} (sd {e.sd_db:.3f} dB over {e.n_seeds} seeds)" for e in unequal)
            lines += [f"Unequal variances (own sd more than {VARIANCE_FACTOR:g}x from the levels' median; read "
                      f"their own interval): {named}.", ""]
        elif any(e.n_seeds == 2 for e in a.effects):
            lines += ["With 2 seeds a level's own sd has 1 degree of freedom: the equal-variance assumption cannot "
                      "be checked, and the own intervals are wide.", ""]
        lines += [markdown_table([{"axis": e.axis, "level": e.level, "vs": e.reference,
                                   "effect (dB)": f"{e.mean_db:+.3f}",
                                   "95% simultaneous": _interval(e.ci_db), "95% own": _interval(e.own_ci_db),
                                   "detectable (dB)": f"±{e.detectable_db:.3f}" if math.isfinite(e.detectable_db)
                                   else "-", "seeds": e.n_seeds, "contexts": e.n_contexts,
                                   "verdict": e.verdict + (" (unequal sd)" if e.unequal else "")}
                                  for e in a.effects]), ""]
    return lines


def _law_section(a: Analysis) -> list[str]:
    if not a.laws:
        return []
    lines = ["## Size trend and scaling law", "",
             f"{QUANTITY}. Size is the count of {BODY}; the tables give the total beside it. Seeds are not "
             "independent sizes: the trend and the law are fitted on the size means. The trend is the slope of the "
             "means against log2(size), with a t interval on (sizes - 2) dof; the lack-of-fit F test sets the means' "
             "departures from that line against the seed noise. A law L(N) = a·N^(-alpha) + c (in MSE space, on "
             f"10^(-PSNR/10) of each size mean, 95% bootstrap intervals) needs {LAW_MIN_SIZES}+ sizes: the largest "
             "is held out and predicted from the others by the law, by their mean and by a line in log2 N, and the "
             "law predicts only when it is identified and beats both by more than the held-out size's seed "
             "standard error. Assumed: the law's form, and normal size departures of equal variance.", ""]
    for law in a.laws:
        if law.context:
            lines += [f"### {_context(law.context)}", ""]
        lines += [markdown_table([{"target": s["target"], "body (M)": _fmt_m(s["body"]),
                                   "params (M)": _fmt_m(s["params"]), "seeds": s["seeds"],
                                   "PSNR": f"{s['psnr']:.2f}" + (f" ± {s['sd']:.2f}" if math.isfinite(s["sd"]) else "")}
                                  for s in law.sizes]), ""]
        if not law.body:
            lines += ["(Some trial did not log its resolved model, so sizes are total parameters here.)", ""]
        if law.identified_fit is not None:
            lines += [markdown_table([{"coef": k, "value": f"{getattr(law.fit, k):.4g}",
                                       "95% interval": _interval(getattr(law.fit, k + "_ci"), ".4g")}
                                      for k in ("a", "alpha", "c")]), ""]
        lines += [_law_sentence(law), ""]
    return lines


def _budget_section(a: Analysis) -> list[str]:
    if not a.budgets:
        return []
    rows = [{"budget (FLOPs)": f"{budget:.3g}", "largest mean": fmt_size(best.argmax),
             "may be best": "-" if best.ties is None else
             (fmt_size(best.ties[0]) if len(best.ties) == 1 else
              f"{fmt_size(best.ties[0])} to {fmt_size(best.ties[-1])}"),
             "parabola peak": "-" if best.peak is None else fmt_size(best.peak),
             "peak interval": "-" if best.peak_ci is None else
             f"[{fmt_size(best.peak_ci[0])}, {fmt_size(best.peak_ci[1])}]",
             **{fmt_size(n): f"{p:.2f}" for n, p in zip(best.sizes, best.means)}}
            for budget, best in a.budgets]
    return ["## Compute budgets", "",
            "Mean PSNR per size (body parameters) at each training-FLOP budget (IsoFLOP). The best size is the peak "
            "of a parabola in log N through the size means, with a 95% t interval from the seeds' own parabolas "
            "(3+ seeds); the sizes that may be best are those Hsu's comparisons with the best (one-sided Dunnett "
            "on the size x seed residual) cannot exclude; one seed gives the largest mean and no noise verdict.", "",
            markdown_table(rows), ""]


def _stop_section(a: Analysis) -> list[str]:
    if not a.stops:
        return []
    rows = [{"trial": label(s.trial), "stopped at step": s.step, "why": s.reason,
             "compared with": ", ".join(s.compared_with) or "-"} for s in a.stops]
    return ["## Early stopping", "", "ASHA compared each trial only with trials of its own size and budget:", "",
            markdown_table(rows), ""]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def label(t: Trial) -> str:
    return ", ".join(f"{_short(k)}={_fmt_axis(v)}" for k, v in t.axes.items()) or t.name


def _short(key: str) -> str:
    return key.split(".")[-1]


def _context(context: dict[str, str]) -> str:
    return ", ".join(f"{_short(k)}={_fmt_axis(v)}" for k, v in context.items())


def _set_order(t: Trial) -> dict[str, int]:
    """Val set name -> position in the trial's data.val (the config's order, e.g. the paper's columns)."""
    try:
        sets = ast.literal_eval(t.params.get("data.val", "[]"))
    except (ValueError, SyntaxError):
        return {}
    return {Path(str(v).rstrip("/")).name: i for i, v in enumerate(sets)}


def _counts(trials: list[Trial]) -> str:
    status = [_status(t) for t in trials]
    unfinished = (f", {status.count('running')} unfinished (the study was interrupted, or is still running)"
                  if "running" in status else "")
    return (f"{len(trials)} trials: {status.count('done')} finished, {status.count('failed')} failed, "
            f"{status.count('stopped early')} stopped early by the scheduler{unfinished}.")


def _status(t: Trial) -> str:
    return {"FINISHED": "done", "KILLED": "stopped early", "RUNNING": "running"}.get(t.status, t.status.lower())


def _interval(ci: tuple[float, float], fmt: str = "+.3f") -> str:
    return "[{}, {}]".format(*(format(v, fmt) for v in ci)) if all(math.isfinite(v) for v in ci) else "-"


def _fmt_axis(value: str) -> str:
    """Sampled floats (a loguniform learning rate) print with 4 significant digits."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() or len(value) <= 8 else f"{number:.4g}"


def _fmt_m(n: float | None) -> str:
    return f"{n / 1e6:.3f}" if n else ""
