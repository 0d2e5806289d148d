"""The study report in words: the answer first, in a few lines, then the tables that back it.

Every table starts from the baseline row (bicubic for SR, the degraded input otherwise); a trial at or
below it is marked; a difference is called an effect only when it exceeds seed noise (`noise`), and the
report says plainly what the data show, also where that contradicts the paper.
"""
from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any

from hiir.models import format_size
from hiir.platform.results.analysis import Analysis, SizeLaw
from hiir.platform.results.noise import NO_REPLICATES, REAL
from hiir.platform.results.trials import Trial

BELOW = "✗ at or below baseline"
ISOLATED = "†"  # no path across patch borders


def render_markdown(spec, analysis: Analysis, plots: list[Path], *, more_answer: list[str] = (),
                    more_sections: list[str] = ()) -> str:
    """The report; `more_answer` joins the answer's lines and `more_sections` (markdown lines) follows the
    results table (a study kind's own analysis, e.g. `transfer`)."""
    trials = analysis.trials
    lines = [f"# Study `{spec.name}`", "", spec.question or "", "", "## The answer", ""]
    lines += [f"- {s}" for s in [*more_answer, *answer(analysis)]] + [""]
    lines += [_counts(trials), ""]
    lines += ["## Results", "", markdown_table(results_table(spec, analysis)), ""]
    if analysis.isolated:
        lines += [f"{ISOLATED} the model has no path for information across its P x P patch borders (tree depth 2, "
                  "linear stage ends, L2 bounded by P): each output pixel sees only its own patch.", ""]
    synthetic = sorted({s for t in trials for s in t.synthetic})
    if synthetic:
        lines += [f"\\* synthetic stand-in (not the real benchmark; numbers are not comparable with the paper's): "
                  f"{', '.join(synthetic)}. See each dataset's manifest.json (degradation.synthetic_stand_in).", ""]
    lines += list(more_sections)
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
        lines += [f"- `{t.name}` ({t.run_id}): {t.tags.get('hiir.error', '')}".rstrip(": ") for t in failed] + [""]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def answer(a: Analysis) -> list[str]:
    """The study's answer in a few plain sentences."""
    out = []
    base = a.baseline.get("val_psnr")
    if a.best is not None:
        line = (f"Best trial: `{label(a.best)}`, {a.best.metrics['val_psnr']:.2f} dB "
                "(mean headline PSNR over the val sets)")
        if base is not None:
            line += f", {a.best.metrics['val_psnr'] - base:+.2f} dB against {a.baseline_name} ({base:.2f} dB)"
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
    out += [_law_sentence(law) for law in a.laws]
    if a.noise is not None and math.isfinite(a.noise.sd_db):
        out.append(f"Seed noise: a trial's PSNR varies by {a.noise.sd_db:.3f} dB (sd) from seed to seed "
                   f"({a.noise.n_cells} cells, {a.noise.dof} degrees of freedom).")
    real = [e for e in a.effects if e.verdict == REAL]
    noise = [e for e in a.effects if e.verdict not in (REAL, NO_REPLICATES)]
    if real or noise:
        out.append("Beyond seed noise: " + ("; ".join(e.sentence for e in real) if real else "no effect") + ".")
        if noise:
            out.append("Within seed noise (not a finding): " + "; ".join(e.sentence for e in noise) + ".")
    elif a.effects:
        out.append("No replicate seeds: no difference here can be told from seed noise (add `seeds: K`).")
    for row in a.budgets:
        out.append(f"At {row['budget']:.3g} training FLOPs the best size is {format_size(row['best_params'])} "
                   f"({row['best_psnr']:.2f} dB, {row['steps']} steps).")
    if a.stops:
        out.append(f"{len(a.stops)} trial(s) stopped early, each compared only with trials of its own size and budget "
                   "(see Early stopping).")
    if a.isolated:
        out.append(f"{len(a.isolated)} trial(s) ({ISOLATED}) have no path across patch borders.")
    return out


def _law_sentence(law: SizeLaw) -> str:
    where = f" ({_context(law.context)})" if law.context else ""
    sizes = ", ".join(f"{format_size(s['params'])} {s['psnr']:.2f}" for s in law.sizes)
    text = f"Size{where}: {_trend_words(law)}. Mean PSNR per size: {sizes} dB."
    if law.fit is not None:
        lo, hi = law.fit.alpha_ci
        ci = f" [{lo:.3g}, {hi:.3g}]" if math.isfinite(lo) else " (no interval: too few points)"
        text += f" Fitted exponent alpha = {law.fit.alpha:.3g}{ci}."
    if law.held_out is not None:
        h = law.held_out
        lo, hi = sorted(h.interval_psnr)
        verdict = "inside" if h.inside else "outside"
        text += (f" Held out: the largest size ({format_size(h.n_params)}) predicted {h.predicted_psnr:.2f} dB "
                 f"[{lo:.2f}, {hi:.2f}] from the smaller ones, measured {h.measured_psnr:.2f} dB: error "
                 f"{h.error_db:+.2f} dB, {verdict} the {h.ci:.0%} prediction interval.")
    elif law.note:
        text += f" ({law.note}.)"
    return text


def _trend_words(law: SizeLaw) -> str:
    """The size trend in words: its slope per doubling with the interval, and any step where PSNR fell."""
    t = law.trend
    if t is None:
        return "PSNR rises with size" if law.monotonic else "**PSNR does not rise with size at this scale**"
    slope = f"{t.per_doubling:+.2f} dB per doubling [{t.ci[0]:+.2f}, {t.ci[1]:+.2f}] over {t.n_trials} trials"
    if t.direction == "flat":
        return f"**PSNR does not rise with size beyond the trials' scatter at this scale**: {slope}"
    if t.direction == "falls":
        return f"**PSNR falls with size**: {slope}"
    dips = [f"{format_size(b['params'])} below {format_size(a['params'])}"
            for a, b in zip(law.sizes, law.sizes[1:]) if b["psnr"] <= a["psnr"]]
    return f"PSNR rises with size, {slope}" + (f", though not at every step ({', '.join(dips)})" if dips else "")


def results_table(spec, a: Analysis) -> list[dict[str, Any]]:
    """The baseline row, then one row per trial: axes, size, status, per-set headline PSNR, the margin over
    the baseline, and the paper's number beside it."""
    base = a.baseline
    first = a.trials[0] if a.trials else None
    order = _set_order(first) if first else {}
    rows = []
    if "val_psnr" in base:
        row = {"trial": f"baseline: {a.baseline_name}"}
        for name in sorted({k.split("/")[1] for k in base if k.count("/") == 2}, key=lambda n: (order.get(n, 99), n)):
            key = first.headline_key if first is not None else "psnr"
            row[name] = f"{base.get(f'val/{name}/{key}', base.get(f'val/{name}/psnr')):.2f}"
        rows.append({**row, "mean PSNR": f"{base['val_psnr']:.2f}"})
    expected = (spec.expected or {}).get("rows", [])
    for t in a.trials:
        row: dict[str, Any] = {"trial": label(t) + (f" {ISOLATED}" if not t.crosses_patches else ""),
                               "params (M)": _fmt_m(t.n_params), "status": _status(t)}
        sets = t.set_psnr()
        for name in sorted(sets, key=lambda n: (_set_order(t).get(n, 99), n)):
            if sets[name] is not None:
                row[name + ("*" if name in t.synthetic else "")] = f"{sets[name]:.2f}"
        for key, value in sorted(t.metrics.items()):  # a mixture's per-task means (over its levels)
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "val_task" and parts[2] == "psnr":
                row[f"{parts[1]} (mean)"] = f"{value:.2f}"
        if "val_psnr" in t.metrics:
            row["mean PSNR"] = f"{t.metrics['val_psnr']:.2f}"
            if "val_psnr" in base:
                margin = t.metrics["val_psnr"] - base["val_psnr"]
                row["vs baseline"] = f"{margin:+.2f}" + (f" {BELOW}" if t in a.below_baseline else "")
        for exp in expected:
            if all(str(t.axes.get(k, t.params.get(k))) == str(v) for k, v in (exp.get("match") or {}).items()):
                row["paper"] = ", ".join(f"{k} {v}" for k, v in exp.get("values", {}).items())
                break
        rows.append(row)
    return rows


def _noise_section(a: Analysis) -> list[str]:
    if not a.cells and not a.effects:
        return []
    lines = ["## Seed noise and effects", ""]
    if a.cells:
        lines += ["Each cell over its seeds (mean ± sd of the mean PSNR):", "",
                  markdown_table([{**{k: _fmt_axis(str(v)) for k, v in c.cell.items()}, "PSNR": c.sentence}
                                  for c in a.cells]), ""]
    if a.effects:
        lines += ["Each axis level against the first (on a size axis, the smallest), paired by seed and val image; "
                  "95% t interval on the variance of the pairs' differences pooled over the axis's levels. "
                  "An effect is real only when its interval excludes 0:", "",
                  markdown_table([{"axis": e.axis, "level": e.level, "vs": e.reference,
                                   "effect (dB)": f"{e.mean_db:+.3f}",
                                   "95% interval": _interval(e.ci_db), "pairs": e.n_pairs, "seeds": e.n_seeds,
                                   "verdict": e.verdict} for e in a.effects]), ""]
    return lines


def _law_section(a: Analysis) -> list[str]:
    if not a.laws:
        return []
    lines = ["## Scaling law", "", "Where size is a family's parameter count, per context of the other axes: "
             "L(N) = a·N^(-alpha) + c in MSE space, fitted on every trial (replicates included), with 95% bootstrap "
             "intervals; with 4+ sizes the largest is held out and predicted from the others.", ""]
    for law in a.laws:
        if law.context:
            lines += [f"### {_context(law.context)}", ""]
        lines += [markdown_table([{"target": s["target"], "params (M)": _fmt_m(s["params"]), "seeds": s["seeds"],
                                   "PSNR": f"{s['psnr']:.2f}" + (f" ± {s['sd']:.2f}" if math.isfinite(s["sd"]) else "")}
                                  for s in law.sizes]), ""]
        if law.fit is not None:
            lines += [markdown_table([{"coef": k, "value": f"{getattr(law.fit, k):.4g}",
                                       "95% interval": _interval(getattr(law.fit, k + "_ci"), ".4g")}
                                      for k in ("a", "alpha", "c")]), ""]
        lines += [_law_sentence(law), ""]
    return lines


def _budget_section(a: Analysis) -> list[str]:
    if not a.budgets:
        return []
    rows = [{"budget (FLOPs)": f"{r['budget']:.3g}", "best size": format_size(r["best_params"]),
             "PSNR": f"{r['best_psnr']:.2f}", **{format_size(n): f"{p:.2f}" for n, p in r["sizes"].items()}}
            for r in a.budgets]
    return ["## Compute budgets", "", "Mean PSNR per size at each training-FLOP budget (IsoFLOP):", "",
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
    return (f"{len(trials)} trials: {status.count('done')} finished, {status.count('failed')} failed, "
            f"{status.count('stopped early')} stopped early by the scheduler.")


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
