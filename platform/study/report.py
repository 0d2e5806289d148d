"""`hiir study report`: the study's answer, read back from MLflow (the source of truth).

Writes `report.md` and PNG plots into the study directory and logs them to the parent run:
- the results table, laid out like the paper's, with the paper's numbers beside ours (`expected`);
- PSNR and loss against parameters and against training compute (FLOPs x steps);
- a scaling-law fit L(N) = a*N^-alpha + c in MSE space with bootstrap intervals, when size varies;
- training curves per trial.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiir.data_prep.files import write_atomic
from hiir.platform import tracking
from hiir.platform.errors import HiirError
from hiir.platform.evaluation.metrics import sr_convention


@dataclass
class Trial:
    run_id: str
    name: str
    status: str
    axes: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    curve: tuple[list[int], list[float]]
    synthetic: tuple[str, ...] = ()  # val sets that are synthetic stand-ins (tracking.SYNTHETIC_TAG)

    @property
    def n_params(self) -> float | None:
        value = self.params.get("model.num_params")
        return float(value) if value else None

    @property
    def compute(self) -> float | None:
        flops, steps = self.params.get("flops_per_step"), self.metrics.get("step")
        return float(flops) * steps if flops and steps else None


def collect_trials(tracking_uri: str, parent_run_id: str) -> list[Trial]:
    store = tracking.Store(tracking_uri)
    trials = []
    for run in sorted(store.children(parent_run_id), key=lambda r: r.info.start_time or 0):
        history = store.history(run.info.run_id, "loss")
        curve = ([m.step for m in history], [m.value for m in history])
        axes = tracking.trial_axes(run.data.tags)
        synthetic = tuple(s for s in run.data.tags.get(tracking.SYNTHETIC_TAG, "").split(",") if s)
        trials.append(Trial(run.info.run_id, run.info.run_name or run.info.run_id, run.info.status, axes,
                            run.data.params, run.data.metrics, curve, synthetic))
    return trials


def write_report(directory: Path, *, spec, tracking_uri: str, parent_run_id: str) -> Path:
    """Build report.md and the plots; log them to the parent run. Returns the report's path."""
    from hiir.platform.study.plots import plot_curves, plot_scaling
    from hiir.platform.study.scaling import fit_power_law, mse_to_psnr

    trials = collect_trials(tracking_uri, parent_run_id)
    if not trials:
        raise HiirError(f"study {spec.name!r} has no trial runs under MLflow run {parent_run_id}")
    directory.mkdir(parents=True, exist_ok=True)
    done = [t for t in trials if "val_psnr" in t.metrics and t.n_params]
    points = [{"label": _label(t), "params": t.n_params, "compute": t.compute, "psnr": t.metrics["val_psnr"],
               "mse": t.metrics.get("val_mse"), "loss": t.metrics.get("loss")} for t in done]
    plots: list[Path] = []
    fit = None
    best = _best_per_size(points)
    if len(best) >= 3:
        fit = fit_power_law([p["params"] for p in best], [p["mse"] for p in best], n_boot=300)
    if points:
        plots.append(plot_scaling(points, "params", "psnr", directory / "psnr_vs_params.png", label_key="label",
                                  fit=fit, fit_to_y=mse_to_psnr if fit else None,
                                  title=f"{spec.name}: PSNR vs parameters"))
        plots.append(plot_scaling(points, "params", "loss", directory / "loss_vs_params.png", label_key="label",
                                  title=f"{spec.name}: final train loss vs parameters"))
        with_compute = [p for p in points if p["compute"]]
        if with_compute:
            plots.append(plot_scaling(with_compute, "compute", "psnr", directory / "psnr_vs_compute.png",
                                      label_key="label", title=f"{spec.name}: PSNR vs training FLOPs"))
            plots.append(plot_scaling(with_compute, "compute", "loss", directory / "loss_vs_compute.png",
                                      label_key="label", title=f"{spec.name}: final train loss vs training FLOPs"))
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for t in trials:
        label = _label(t)
        if t.curve[0]:  # sampled searches can repeat a point: the run name keeps both curves
            curves[label if label not in curves else f"{label} ({t.name})"] = t.curve
    if curves:
        plots.append(plot_curves(curves, directory / "training_curves.png", ylabel="train loss (L1)",
                                 title=f"{spec.name}: training curves"))

    text = render_markdown(spec, trials, fit, plots, sizes=len(best))
    report = directory / "report.md"
    write_atomic(report, text)
    write_atomic(directory / "results.json", json.dumps(
        [{"run_id": t.run_id, "status": t.status, "axes": t.axes, "metrics": t.metrics,
          "n_params": t.n_params, "compute": t.compute} for t in trials], indent=1))
    _log_to_parent(tracking_uri, parent_run_id, [report, directory / "results.json", *plots])
    return report


def results_table(spec, trials: list[Trial]) -> list[dict[str, Any]]:
    """One row per trial: axes, size, status, per-set headline PSNR, and the paper's number beside it."""
    rows = []
    expected = (spec.expected or {}).get("rows", [])
    for t in trials:
        row: dict[str, Any] = {**{k: _fmt_axis(v) for k, v in t.axes.items()}, "params (M)": _fmt_m(t.n_params),
                               "status": _status(t)}
        _, headline = sr_convention(int(t.params.get("resolved_model.scale", 1)),
                                    int(t.params.get("resolved_model.in_channels", 3)))
        order = _set_order(t)
        sets = {k.split("/")[1] for k in t.metrics if k.startswith("val/") and k.count("/") == 2}
        for name in sorted(sets, key=lambda n: (order.get(n, len(order)), n)):
            value = t.metrics.get(f"val/{name}/{headline}", t.metrics.get(f"val/{name}/psnr"))
            if value is not None:
                row[name + ("*" if name in t.synthetic else "")] = f"{value:.2f}"
        for key, value in sorted(t.metrics.items()):  # a mixture's per-task means (over its levels)
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "val_task" and parts[2] == "psnr":
                row[f"{parts[1]} (mean)"] = f"{value:.2f}"
        if "val_psnr" in t.metrics:
            row["mean PSNR"] = f"{t.metrics['val_psnr']:.2f}"
        for exp in expected:
            if all(str(t.axes.get(k, t.params.get(k))) == str(v) for k, v in (exp.get("match") or {}).items()):
                row["paper"] = ", ".join(f"{k} {v}" for k, v in exp.get("values", {}).items())
                break
        rows.append(row)
    return rows


def _set_order(t: Trial) -> dict[str, int]:
    """Val set name -> position in the trial's data.val (the config's order, e.g. the paper's columns)."""
    import ast

    try:
        sets = ast.literal_eval(t.params.get("data.val", "[]"))
    except (ValueError, SyntaxError):
        return {}
    return {Path(str(v).rstrip("/")).name: i for i, v in enumerate(sets)}


def render_markdown(spec, trials: list[Trial], fit, plots: list[Path], *, sizes: int = 0) -> str:
    rows = results_table(spec, trials)
    failed = [t for t in trials if t.status == "FAILED"]
    lines = [f"# Study `{spec.name}`", "", spec.question or "", ""]
    lines += [f"{len(trials)} trials: {sum(_status(t) == 'done' for t in trials)} finished, "
              f"{len(failed)} failed, {sum(_status(t) == 'stopped early' for t in trials)} stopped early "
              f"by the scheduler.", ""]
    lines += ["## Results", "", markdown_table(rows), ""]
    synthetic = sorted({s for t in trials for s in t.synthetic})
    if synthetic:
        lines += [f"\\* synthetic stand-in (not the real benchmark; numbers are not comparable with the paper's): "
                  f"{', '.join(synthetic)}. See each dataset's manifest.json (degradation.synthetic_stand_in).", ""]
    if spec.expected:
        lines += [f"## The paper's numbers ({spec.expected.get('table', 'expected')})", "",
                  spec.expected.get("note", ""), "",
                  markdown_table([{**(r.get("match") or {}), **{k: v for k, v in r.get("values", {}).items()}}
                                  for r in spec.expected.get("rows", [])]), ""]
        if spec.expected.get("baselines"):
            lines += ["Other methods in the same table:", "", markdown_table(spec.expected["baselines"]), ""]
    if fit is not None:
        lines += ["## Scaling law", "", "Fitted in MSE space on the best trial per size (sizes within 5% grouped): "
                  "L(N) = a·N^(-alpha) + c, with 95% bootstrap intervals.", "",
                  markdown_table([{"coef": k, "value": f"{getattr(fit, k):.4g}",
                                   "95% interval": "[{:.4g}, {:.4g}]".format(*getattr(fit, k + "_ci"))}
                                  for k in ("a", "alpha", "c")]), ""]
    elif sizes:
        lines += ["## Scaling law", "", f"Not fitted: the finished trials cover {sizes} model size(s); "
                  "L(N) = a·N^(-alpha) + c needs at least 3.", ""]
    if failed:
        lines += ["## Failed trials", ""] + [f"- `{t.name}` ({t.run_id})" for t in failed] + [""]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def _best_per_size(points: list[dict], tolerance: float = 0.05) -> list[dict]:
    """The best trial of each model size. Sizes within 5% are one size: knobs such as cosine
    attention's logit scale or tree depth change the count slightly without making a new size."""
    best: list[dict] = []
    for p in sorted((p for p in points if p["mse"] is not None), key=lambda p: p["params"]):
        if best and p["params"] <= best[-1]["_group_start"] * (1 + tolerance):
            if p["mse"] < best[-1]["mse"]:
                best[-1] = {**p, "_group_start": best[-1]["_group_start"]}
        else:
            best.append({**p, "_group_start": p["params"]})
    return best


def _status(t: Trial) -> str:
    return {"FINISHED": "done", "KILLED": "stopped early", "RUNNING": "running"}.get(t.status, t.status.lower())


def _label(t: Trial) -> str:
    return ",".join(f"{v}" for v in t.axes.values()) or t.name


def _fmt_axis(value: str) -> str:
    """Sampled floats (a loguniform learning rate) print with 4 significant digits."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() or len(value) <= 8 else f"{number:.4g}"


def _fmt_m(n: float | None) -> str:
    return f"{n / 1e6:.3f}" if n else ""


def _log_to_parent(uri: str, run_id: str, paths: list[Path]) -> None:
    store = tracking.Store(uri)
    for path in paths:
        store.log_artifact(run_id, path, "report")
