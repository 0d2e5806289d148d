"""`hiir study report`: the study's answer, read back from MLflow (the source of truth).

`collect_trials` reads every trial run under the study's run (params, metrics, loss curve, tags and the
per-image scores of its last validation); `analysis.analyse` computes the answer; `markdown` words it; a
transfer study (`kind: transfer`) adds the best learning rate per width and its drift (`transfer`).
`write_report` writes `report.md`, `results.json` (every trial, and per context the size trend and the law or
"no law: N sizes") and the plots into the study directory, logs them to the study's run, and sets the study
run's headline metrics (best PSNR, the baseline, the trend per doubling, the fitted exponent, the held-out
errors) and its `hiir.scaling_law` tag, so the MLflow runs table shows the answer beside the trials.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from hiir.data_prep.files import write_atomic
from hiir.platform import tracking
from hiir.platform.errors import HiirError
from hiir.platform.results import transfer
from hiir.platform.results.analysis import HEADLINE, Analysis, analyse, headline_metrics, sized
from hiir.platform.results.claims import check_claims, headline_claims
from hiir.platform.results.markdown import label, render_markdown
from hiir.platform.results.plots import plot_curves, plot_effects, plot_scaling
from hiir.platform.results.scaling import mse_to_psnr
from hiir.platform.results.trials import collect_trials
from hiir.platform.study.state import find_study, study_dir


def report_study(ref: str, *, workdir: Path) -> Path:
    """Report for a study given by directory or name (the latest run of that name in `workdir`)."""
    found = find_study(ref, workdir)
    if found is None:
        raise HiirError(f"no study run found for {ref!r} (looked for "
                        f"{study_dir(workdir, Path(ref).name)}/study.json); run `hiir study run` first")
    directory, state, spec = found
    return write_report(directory, spec=spec, tracking_uri=state.tracking_uri,
                        parent_run_id=state.parent_run_id, scale=state.scale)


def write_report(directory: Path, *, spec, tracking_uri: str, parent_run_id: str, scale: str = "full") -> Path:
    """Build report.md and the plots; log them and the headline metrics to the study run. Returns the path.
    `scale` is the scale block the study ran at: its `note` opens the report."""
    store = tracking.Store(tracking_uri)
    trials = collect_trials(tracking_uri, parent_run_id)
    if not trials:
        raise HiirError(f"study {spec.name!r} has no trial runs under MLflow run {parent_run_id}")
    parent = store.get_run(parent_run_id)
    transfer_kind = getattr(spec, "kind", "sweep") == "transfer"
    analysis = analyse(trials, parent_metrics=parent.data.metrics, parent_tags=parent.data.tags, mode=spec.mode,
                       laws=not transfer_kind)
    directory.mkdir(parents=True, exist_ok=True)
    plots = draw_plots(spec.name, analysis, directory)
    more: dict = {}
    if transfer_kind:  # the best LR per width and its drift (transfer.py)
        drifts = transfer.analyse_transfer(trials)
        more = {"more_answer": transfer.answer_lines(drifts), "more_sections": transfer.section(drifts)}
        if drifts:
            plots.insert(0, transfer.plot(drifts, directory, spec.name))
        store.log_metrics(parent_run_id, transfer.headline(drifts), 0, int(time.time() * 1000))
    claims = check_claims(spec, analysis)
    report = directory / "report.md"
    block = spec.scale.get(scale) if scale != "full" else None
    write_atomic(report, render_markdown(spec, analysis, plots, claims=claims,
                                         scale_note=block.note if block else "", **more))
    write_atomic(directory / "results.json", json.dumps(
        {"quantity": HEADLINE,
         "trials": [{"run_id": t.run_id, "status": t.status, "axes": t.axes, "metrics": t.metrics,
                     "n_params": t.n_params, "body_params": t.body_params, "compute": t.compute} for t in trials],
         "sizes": [law.to_dict() for law in analysis.laws],
         "sets_below": {name: {"trials": count, "baseline_db": bar}
                        for name, (count, bar) in analysis.sets_below.items()},
         "claims": [asdict(c) for c in claims]}, indent=1, default=float))
    for path in (report, directory / "results.json", *plots):
        store.log_artifact(parent_run_id, path, "report")
    store.log_metrics(parent_run_id, {**headline_metrics(analysis), **headline_claims(claims)}, 0,
                      int(time.time() * 1000))
    if analysis.laws:
        store.set_tags(parent_run_id, {tracking.LAW_TAG: "; ".join(
            (f"{', '.join(f'{k}={v}' for k, v in law.context.items())}: " if law.context else "") + law.law_words
            for law in analysis.laws)})
    return report


def draw_plots(name: str, a: Analysis, directory: Path) -> list[Path]:
    """PSNR against size (with each size law and the baseline) and against compute, the effects against seed
    noise, and the training curves."""
    done = [t for t in a.trials if t.done and t.n_params]
    count, body = sized(done) if done else ({}, True)
    size_key = "body parameters" if body else "parameters"
    points = [{"label": label(t), size_key: count[i], "compute": t.compute, "psnr": t.metrics[HEADLINE],
               "loss": t.metrics.get("loss"), "size": f"{t.n_params / 1e6:.3g}M"} for i, t in enumerate(done)]
    hlines = {a.baseline_name: a.baseline[HEADLINE]} if HEADLINE in a.baseline else None
    fits = [law.identified_fit for law in a.laws if law.identified_fit is not None]  # no curve without a law
    plots: list[Path] = []
    if points:
        labelled = len(points) <= 12  # beyond that, labels pile up; the table names every trial
        plots.append(plot_scaling(points, size_key, "psnr", directory / "psnr_vs_params.png",
                                  label_key="label" if labelled else None, fit=fits[0] if len(fits) == 1 else None,
                                  fit_to_y=mse_to_psnr, hlines=hlines,
                                  title=f"{name}: {HEADLINE} vs {size_key} (law on the size means)"))
        with_compute = [p for p in points if p["compute"]]
        if with_compute:
            plots.append(plot_scaling(with_compute, "compute", "psnr", directory / "psnr_vs_compute.png",
                                      group_key="size", hlines=hlines, title=f"{name}: PSNR vs training FLOPs"))
        plots.append(plot_scaling(points, size_key, "loss", directory / "loss_vs_params.png",
                                  label_key="label" if labelled else None, logy=True,
                                  title=f"{name}: final train loss vs {size_key}"))
    judged = [e for e in a.effects if e.n_pairs >= 2]
    if judged:
        plots.append(plot_effects([(f"{e.axis}: {e.level} vs {e.reference}", e.mean_db,
                                    min(e.ci_db[0], e.own_ci_db[0]), max(e.ci_db[1], e.own_ci_db[1]),
                                    e.verdict == "real")
                                   for e in judged], directory / "effects.png",
                                  title=f"{name}: effects, each with the union of its Dunnett and own 95% intervals"))
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for t in a.trials:
        if t.curve[0]:  # sampled searches can repeat a point: the run name keeps both curves
            curves[label(t) if label(t) not in curves else f"{label(t)} ({t.name})"] = t.curve
    if curves:
        plots.append(plot_curves(curves, directory / "training_curves.png", ylabel="train loss (L1)", logy=True,
                                 title=f"{name}: training curves"))
    return plots
