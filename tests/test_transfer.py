"""Transfer studies from a real SQLite MLflow store, without training: trial runs are written as
trials write them (axes as tags, resolved model params, the loss curve, val PSNR), with a known best learning
rate per width. The report must find each optimum, the drift per width doubling with its interval, and say
which parametrization held the optimum; `--transfer-from` must take a finished small study's best values."""
from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from mlflow.entities import Metric, Param
from scipy import stats

from hiir.models.mup import MUP_RULES_VERSION
from hiir.platform import tracking
from hiir.platform.errors import ConfigError, HiirError
from hiir.platform.results.report import write_report
from hiir.platform.results.transfer import (
    analyse_transfer,
    answer_lines,
    final_loss,
    from_study,
    headline,
    refine,
    section,
)
from hiir.platform.results.trials import collect_trials
from hiir.platform.study.run import load_for_run
from hiir.platform.study.spec import parse_spec
from hiir.platform.study.state import StudyState, write_state

WIDTHS = {16: "0.063M", 32: "0.119M", 64: "0.46M"}
LRS = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)
STEPS = range(25, 401, 25)


def _optimum(parametrization: str, width: int, drift: float) -> float:
    """The true best LR: at C 16 6e-3 (standard) or 3e-3 (μP), moving `drift` doublings per width doubling."""
    return (6e-3 if parametrization == "standard" else 3e-3) * (width / 16) ** drift


def _fake_study(workdir: Path, *, seeds=(0, 1), std_drift=-1.0, mup_drift=0.0, name="transfer-test",
                lrs=LRS, parent_status="FINISHED", mup_rules=MUP_RULES_VERSION) -> tuple[tracking.Store, str]:
    """Final loss = 0.03 + 0.004 (log2 lr - log2 best)^2 + a seed's offset + noise; the curve falls to it."""
    store = tracking.Store(tracking.default_tracking_uri(workdir))
    exp = store.experiment(name, workdir)
    parent = store.create_study_run(exp, name, scale="full", question="does the best LR transfer?", params={})
    rng = np.random.default_rng(1)
    now = int(time.time() * 1000)
    for parametrization in ("standard", "mup"):
        for width, target in WIDTHS.items():
            offsets = {s: rng.normal(0, 0.0005) for s in seeds}  # a seed: one init and data order at every LR
            for lr in lrs:
                for seed in seeds:
                    best = _optimum(parametrization, width, std_drift if parametrization == "standard" else mup_drift)
                    final = 0.03 + 0.004 * (math.log2(lr) - math.log2(best)) ** 2 + offsets[seed] + rng.normal(0, 3e-4)
                    axes = {"model.params": target, "optim.lr": lr, "model.parametrization": parametrization}
                    if len(seeds) > 1:
                        axes["seed"] = seed
                    trial_id = f"{parametrization}-{width}-{lr}-{seed}"
                    curve = [final * (1 + 2 * math.exp(-s / 60)) + rng.normal(0, 0.0002) for s in STEPS]
                    metrics = [Metric("loss", v, now, s) for s, v in zip(STEPS, curve)]
                    metrics += [Metric("val_psnr", 35 - 100 * (final - 0.03), now, 400), Metric("step", 400, now, 400)]
                    params = {"model.num_params": 1000 * width, "resolved_model.dim": width, "resolved_model.scale": 2,
                              "resolved_model.parametrization": parametrization, "resolved_model.mup_base_dim": 32}
                    # three client calls per run (the facade takes six): 60 runs stay within seconds
                    rules = {tracking.MUP_RULES_TAG: str(mup_rules)} if parametrization == "mup" and mup_rules else {}
                    run = store._client.create_run(exp, run_name=trial_id, tags={
                        **tracking.trial_tags(name, trial_id, axes), tracking.PARENT_TAG: parent, **rules})
                    store._client.log_batch(run.info.run_id, metrics=metrics,
                                            params=[Param(k, str(v)) for k, v in params.items()])
                    store._client.set_terminated(run.info.run_id, "FINISHED")
    store.close(parent, parent_status)
    return store, parent


def _spec(name="transfer-test"):
    return SimpleNamespace(name=name, question="does the best LR transfer?", expected=None, mode="max",
                           kind="transfer", claims=[], scale={})


def test_refine_finds_a_parabolas_vertex_and_flags_the_edges():
    xs = [0.0, 1.0, 2.0, 3.0]
    x, y, edge = refine(xs, [(v - 1.3) ** 2 + 5 for v in xs])
    assert x == pytest.approx(1.3) and y == pytest.approx(5) and not edge
    assert refine(xs, [3.0, 2.0, 1.0, 0.5]) == (3.0, 0.5, True)  # still falling at the grid's end


def _own_drifts(trials, parametrization: str) -> dict[str, float]:
    """Each seed's own drift, recomputed here: per width, that seed's final losses over the LRs, refined."""
    by: dict[tuple[str, int], dict[float, float]] = {}
    for t in trials:
        if t.params["resolved_model.parametrization"] == parametrization:
            key = (t.axes["seed"], int(t.params["resolved_model.dim"]))
            by.setdefault(key, {})[float(t.axes["optim.lr"])] = final_loss(t)
    out = {}
    for seed in {s for s, _ in by}:
        optima = [refine([math.log2(lr) for lr in sorted(by[(seed, w)])],
                         [by[(seed, w)][lr] for lr in sorted(by[(seed, w)])])[0] for w in WIDTHS]
        out[seed] = float(np.polyfit(np.log2(list(WIDTHS)), optima, 1)[0])
    return out


def test_three_seeds_give_each_optimum_and_the_drift_a_t_interval_across_seeds(tmp_path):
    store, parent = _fake_study(tmp_path, seeds=(0, 1, 2), std_drift=-0.5)  # every seed's optima inside the grid
    trials = collect_trials(store.uri, parent)
    by = {d.parametrization: d for d in analyse_transfer(trials)}
    std, mup = by["standard"], by["mup"]
    for o in std.optima:  # the refined optimum recovers the true one within the seed offsets
        assert math.log2(o.lr) == pytest.approx(math.log2(_optimum("standard", o.width, -0.5)), abs=0.25)
        assert not o.at_edge and math.isfinite(o.interval[0])
    for d, true in ((std, -0.5), (mup, 0.0)):
        own = _own_drifts(trials, d.parametrization)
        assert d.per_seed == pytest.approx(own)  # one drift per seed: the seed is the unit, not a loss curve
        half = stats.t.ppf(0.975, 2) * np.std(list(own.values()), ddof=1) / math.sqrt(3)
        assert d.interval == pytest.approx((d.slope - half, d.slope + half))
        assert d.slope == pytest.approx(true, abs=0.15)
    text = write_report(tmp_path / "out", spec=_spec(), tracking_uri=store.uri, parent_run_id=parent).read_text()
    answer = text.split("## Results")[0]
    assert "Best LR under standard: C 16" in answer
    assert "log2(LR) per width doubling (95% t interval over 3 seeds' own drifts)" in answer
    assert "μP held the optimum steadier than standard at this scale: " in answer
    assert "standard minus μP |drift| +" in answer and "(95% t over 3 seeds)" in answer
    assert "## Learning-rate transfer" in text and "### mup" in text
    assert "| width C | best LR (loss) | 95% interval" in text
    assert (tmp_path / "out" / "transfer_lr.png").stat().st_size > 10_000
    metrics = store.get_run(parent).data.metrics
    assert metrics["transfer_drift_standard"] == pytest.approx(std.slope)
    assert (metrics["transfer_drift_mup_ci_lo"], metrics["transfer_drift_mup_ci_hi"]) == pytest.approx(mup.interval)


def test_fewer_than_three_seeds_give_the_drift_without_an_interval_or_a_95_percent(tmp_path):
    store, parent = _fake_study(tmp_path, seeds=(0, 1), std_drift=-0.5, mup_drift=-0.5)
    drifts = analyse_transfer(collect_trials(store.uri, parent))
    assert all(math.isnan(d.interval[0]) and all(math.isnan(o.interval[0]) for o in d.optima) for d in drifts)
    answer = " ".join(answer_lines(drifts))
    assert "(2 seeds: no interval (3+ seeds give one, computed across seeds))" in answer and "95%" not in answer
    assert "**No verdict at this scale**: |drift| " in answer
    assert "from 2 seeds; a difference of drifts needs 3+" in answer
    assert "held the optimum steadier than standard at" not in answer
    table = "\n".join(section(drifts))
    assert "95% interval" not in table and " ✗ |" not in table  # at -0.5 per doubling no optimum is on an edge
    assert "transfer_drift_standard_ci_lo" not in headline(drifts)


def test_edges_are_censored_under_both_parametrizations_and_leave_no_claim(tmp_path):
    store, parent = _fake_study(tmp_path, seeds=(0,), lrs=(4e-3, 8e-3, 1.6e-2))  # μP's 3e-3 is below the grid
    std, mup = analyse_transfer(collect_trials(store.uri, parent))
    assert [o.at_edge for o in std.optima] == [False, True, True] and all(o.at_edge for o in mup.optima)
    assert all(math.isnan(o.interval[0]) for o in std.optima + mup.optima)  # no interval for a bound
    assert math.isnan(std.slope) and std.censored == [32, 64]  # a bound never enters the slope as exact
    answer = " ".join(answer_lines([std, mup]))
    assert "C 32 0.004 (censored: on the grid's edge)" in answer
    assert "drift none (fewer than 2 uncensored widths)" in answer and "(no interval: a censored width)" in answer
    assert ("**Not conclusive at this scale**: the best LR is on the grid's edge (standard at C 32, 64; mup at C 16, "
            "32, 64), so those optima are only bounds and no drift here is an estimate") in answer
    assert "held the optimum steadier" not in answer and "| 32 | 0.004 ✗ |" in "\n".join(section([std, mup]))


TRANSFER_SPEC = {
    "name": "t", "kind": "transfer",
    "base": {"model": {"family": "tiny", "params": "0.1M"}, "optim": {"max_steps": 10}},
    "search": {"size": {"params": ["0.063M", "0.119M"], "family": "tiny"}, "lr": [1e-3, 2e-3, 4e-3],
               "model.parametrization": ["standard", "mup"]},
}


def test_a_transfer_spec_needs_an_lr_grid_a_width_axis_and_no_early_stopping():
    assert parse_spec(TRANSFER_SPEC).kind == "transfer"
    for change, message in (({"lr": [1e-3, 2e-3]}, "3\\+ learning rates"),
                            ({"lr": {"loguniform": [1e-4, 1e-2]}}, "loguniform"),
                            ({"size": None}, "one width axis")):
        search = {k: v for k, v in {**TRANSFER_SPEC["search"], **change}.items() if v is not None}
        with pytest.raises(ConfigError, match=message):
            parse_spec({**TRANSFER_SPEC, "search": search})
    with pytest.raises(ConfigError, match="scheduler.kind=none"):
        parse_spec({**TRANSFER_SPEC, "scheduler": {"kind": "asha"}})


def _small_study(workdir: Path, **kwargs) -> str:
    store, parent = _fake_study(workdir, name="small", **kwargs)
    tune_path = str(workdir / "studies" / "small")
    write_state(workdir / "studies" / "small", StudyState(
        name="small", base=TRANSFER_SPEC["base"], raw={**TRANSFER_SPEC, "name": "small"}, scale="full",
        overrides=[], workdir=str(workdir), tracking_uri=store.uri, experiment="hiir", parent_run_id=parent,
        trial_storage=f"{tune_path}/trials", tune_path=tune_path, search="basic", spec_path="small.yaml"))
    return parent


def _big_spec(tmp_path: Path, search: dict | None = None) -> Path:
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({"name": "big", "base": {"model": {"family": "tiny", "params": "0.46M"},
                                                            "optim": {"max_steps": 10}},
                                    "search": search or {"warmup": [0, 2]}}))
    return path


def test_transfer_from_takes_the_small_studys_best_values_and_tags_where_they_came_from(tmp_path):
    parent = _small_study(tmp_path, seeds=(0,), lrs=(2e-3, 4e-3, 8e-3))
    # The fake PSNR peaks wherever a trial's LR is nearest its width's optimum, so several come close:
    # the winner is read back, and must be what --transfer-from took.
    best = max(collect_trials(tracking.default_tracking_uri(tmp_path), parent), key=lambda t: t.metrics["val_psnr"])
    transferred = from_study("small", tmp_path)
    spec, overrides = load_for_run(_big_spec(tmp_path), "full", ("optim.max_steps=7",), transferred)
    assert transferred.values["optim.lr"] == best.axes["optim.lr"]
    assert transferred.values["model.parametrization"] == best.axes["model.parametrization"]
    assert "model.params" not in transferred.values  # size is what the big study changes
    assert overrides[-1] == "optim.max_steps=7"  # --set comes after, so it wins
    assert spec.base["optim"]["lr"] == float(best.axes["optim.lr"]) and spec.base["optim"]["max_steps"] == 7
    assert spec.base["model"]["parametrization"] == best.axes["model.parametrization"]
    if best.axes["model.parametrization"] == "mup":
        assert spec.base["model"]["mup_base_dim"] == 32  # the width its LRs are stated at
    tags = transferred.tags()
    assert tags[tracking.TRANSFER_FROM_TAG] == f"small (run {parent}, trial {best.name})"
    assert tags[f"{tracking.TRANSFER_TAG}optim.lr"] == best.axes["optim.lr"]
    # which parametrization the values are for, and the width they were found at (μP: its base width)
    mup = best.axes["model.parametrization"] == "mup"
    assert tags[tracking.TRANSFER_PARAMETRIZATION_TAG] == best.axes["model.parametrization"]
    assert tags[tracking.TRANSFER_BASE_DIM_TAG] == ("32" if mup else best.params["resolved_model.dim"])
    assert tags.get(tracking.MUP_RULES_TAG) == (str(MUP_RULES_VERSION) if mup else None)


@pytest.mark.parametrize("rules, says", [(None, r"1 \(untagged: from before versions were recorded\)"),
                                         (MUP_RULES_VERSION - 1, str(MUP_RULES_VERSION - 1))])
def test_transfer_from_refuses_mup_values_made_under_other_rules(tmp_path, rules, says):
    parent = _small_study(tmp_path, seeds=(0,), lrs=(2e-3, 4e-3, 8e-3), mup_rules=rules)
    store = tracking.Store(tracking.default_tracking_uri(tmp_path))
    for run in store.children(parent):  # μP trials alone can win
        if run.data.params["resolved_model.parametrization"] == "standard":
            store.close(run.info.run_id, "FAILED")
    with pytest.raises(HiirError, match=rf"--transfer-from small: its best trial \S+ trained under μP rules "
                                        rf"version {says}; this hiir's are version {MUP_RULES_VERSION} .*again"):
        from_study("small", tmp_path)


def test_transfer_from_refuses_unknown_unfinished_and_unusable_studies_in_one_line(tmp_path):
    with pytest.raises(HiirError, match=r"--transfer-from nowhere: no study of that name has run"):
        from_study("nowhere", tmp_path)
    _small_study(tmp_path / "a", seeds=(0,), lrs=(1e-3, 2e-3, 4e-3), parent_status="RUNNING")
    with pytest.raises(HiirError, match=r"--transfer-from small: its study run \w+ is RUNNING, not finished"):
        from_study("small", tmp_path / "a")
    parent = _small_study(tmp_path / "b", seeds=(0,), lrs=(1e-3, 2e-3, 4e-3))
    with pytest.raises(HiirError, match=r"optim.lr is a search axis of big"):
        load_for_run(_big_spec(tmp_path, {"lr": [1e-3, 2e-3]}), "full", (), from_study("small", tmp_path / "b"))
    store = tracking.Store(tracking.default_tracking_uri(tmp_path / "b"))
    for run in store.children(parent):
        store.close(run.info.run_id, "FAILED")
    with pytest.raises(HiirError, match="no finished trial has its metric val_psnr"):
        from_study("small", tmp_path / "b")
