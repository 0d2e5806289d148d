"""`GroupedASHA` on real Tune objects (`Trial`s and Ray's `ASHAScheduler`), without a cluster: results are fed
to the scheduler as Tune's controller feeds them (add, result, complete), and its decisions are read back.

- Trials of different sizes never meet in a rung: the slow big model that plain ASHA stops is kept.
- With one group it decides exactly as plain ASHA does.
- Each group has its own max_t; a trial with another max_t is another group.
- save/restore, and a scheduler rebuilt from its pickle as Tune's `tuner.pkl` keeps it, keep the groups, the
  rungs and the decisions.
"""
from __future__ import annotations

import random

import pytest
import ray.cloudpickle
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from hiir.platform.study.schedulers import GroupedASHA, read_decisions

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def _trial(trial_id: str, size: str = "small", lr: float = 1e-3, steps: int = 30) -> Trial:
    return Trial("__fake", config={"size": size, "optim.lr": lr, "steps": steps}, trial_id=trial_id, stub=True)


def _grouped(**kwargs) -> GroupedASHA:
    scheduler = GroupedASHA(lambda config: f"size={config['size']}", lambda config: config["steps"] + 1,
                            time_attr="step", grace_period=10, reduction_factor=2, **kwargs)
    assert scheduler.set_search_properties("val_psnr", "max")  # as tune.run hands TuneConfig's metric and mode
    return scheduler


def _report(scheduler, trial: Trial, step: int, psnr: float) -> str:
    return scheduler.on_trial_result(None, trial, {"step": step, "val_psnr": psnr})


def _sizes_scenario(scheduler) -> dict[str, str]:
    """small and big models, a good and a bad lr each; the big ones start slower. Returns each report's action."""
    trials = {name: _trial(name, size, lr) for name, size, lr in [
        ("small_good", "small", 2e-3), ("big_good", "big", 2e-3), ("small_bad", "small", 1e-9),
        ("big_bad", "big", 1e-9)]}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    psnr = {"small_good": 30.0, "big_good": 25.0, "small_bad": 20.0, "big_bad": 10.0}
    return {name: _report(scheduler, trials[name], 10, psnr[name]) for name in psnr}


def test_trials_of_different_sizes_never_meet_in_a_rung():
    plain = ASHAScheduler(time_attr="step", metric="val_psnr", mode="max", max_t=31, grace_period=10,
                          reduction_factor=2)
    assert _sizes_scenario(plain)["big_good"] == STOP  # the artefact: the big model stopped for starting slower

    grouped = _grouped()
    actions = _sizes_scenario(grouped)
    assert actions == {"small_good": CONTINUE, "big_good": CONTINUE, "small_bad": STOP, "big_bad": STOP}
    assert grouped.groups == {"size=small max_t=31": ["small_good", "small_bad"],
                              "size=big max_t=31": ["big_good", "big_bad"]}
    stops = {d.trial_id: d for d in grouped.decisions}
    assert set(stops) == {"small_bad", "big_bad"}
    small, big = stops["small_bad"], stops["big_bad"]
    assert small.compared_with == ("small_good",) and big.compared_with == ("big_good",)
    assert (small.t, small.rung, small.value, small.cutoff) == (10, 10, 20.0, 30.0)
    assert (big.t, big.rung, big.value, big.cutoff) == (10, 10, 10.0, 25.0)
    assert big.group == "size=big max_t=31"
    assert big.reason == "val_psnr 10 below the cutoff 25 of its step 10 rung, set by 1 trial of its group"


def test_cutoff_is_reported_in_the_metrics_units_when_minimising():
    scheduler = GroupedASHA(lambda config: "one", lambda config: 31, time_attr="step", grace_period=10,
                            reduction_factor=2)
    assert scheduler.set_search_properties("loss", "min")
    low, high = _trial("low"), _trial("high")
    for trial in (low, high):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, low, {"step": 10, "loss": 0.5}) == CONTINUE
    assert scheduler.on_trial_result(None, high, {"step": 10, "loss": 0.9}) == STOP
    (stop,) = scheduler.decisions
    assert (stop.value, stop.cutoff, stop.compared_with) == (0.9, 0.5, ("low",))
    assert "above the cutoff 0.5" in stop.reason


def test_one_group_decides_exactly_as_plain_asha():
    plain = ASHAScheduler(time_attr="step", metric="val_psnr", mode="max", max_t=61, grace_period=5,
                          reduction_factor=3)
    grouped = GroupedASHA(lambda config: "all", lambda config: 61, time_attr="step", grace_period=5,
                          reduction_factor=3)
    assert grouped.set_search_properties("val_psnr", "max")
    rng = random.Random(0)
    trials = [_trial(f"t{i}", lr=10 ** rng.uniform(-5, -2)) for i in range(12)]
    running = {t.trial_id: t for t in trials}
    for trial in trials:
        plain.on_trial_add(None, trial)
        grouped.on_trial_add(None, trial)
    step = {t.trial_id: 0 for t in trials}
    decisions = 0
    while running:  # trials report out of order, at uneven steps, until each is stopped or finishes
        trial = running[rng.choice(sorted(running))]
        step[trial.trial_id] = min(60, step[trial.trial_id] + rng.choice([1, 2, 5, 7]))
        result = {"step": step[trial.trial_id], "val_psnr": rng.gauss(25, 3)}
        action = plain.on_trial_result(None, trial, result)
        assert grouped.on_trial_result(None, trial, result) == action, (trial.trial_id, result)
        decisions += action == STOP
        if action == STOP or result["step"] == 60:
            plain.on_trial_complete(None, trial, result)
            grouped.on_trial_complete(None, trial, result)
            del running[trial.trial_id]
    assert decisions == len(grouped.decisions) > 0
    rungs = [r for _, r in grouped._groups["all max_t=61"]._brackets[0]._rungs]
    assert rungs == [r for _, r in plain._brackets[0]._rungs]


def test_each_group_has_its_own_max_t_and_a_finished_trial_is_never_stopped():
    scheduler = _grouped()
    short, long, longer = _trial("short", steps=30), _trial("long", steps=100), _trial("longer", steps=300)
    for trial in (short, long, longer):
        scheduler.on_trial_add(None, trial)  # one size, three step counts: three groups
    assert set(scheduler.groups) == {"size=small max_t=31", "size=small max_t=101", "size=small max_t=301"}
    assert _report(scheduler, short, 10, 30.0) == CONTINUE
    assert _report(scheduler, long, 10, 20.0) == CONTINUE  # not compared with the 30-step run
    assert _report(scheduler, short, 30, 31.0) == CONTINUE  # its last step: it exports, nobody stops it
    assert _report(scheduler, long, 100, 32.0) == CONTINUE
    assert scheduler.decisions == []


def test_save_and_restore_keep_groups_rungs_and_decisions(tmp_path):
    scheduler = _grouped()
    _sizes_scenario(scheduler)
    scheduler.save(str(tmp_path / "scheduler.pkl"))

    restored = _grouped()
    restored.restore(str(tmp_path / "scheduler.pkl"))
    assert restored.groups == scheduler.groups and restored.decisions == scheduler.decisions
    late = _trial("big_late", "big")  # a third big trial meets the big rung it came back with
    restored.on_trial_add(None, late)
    assert _report(restored, late, 10, 15.0) == STOP  # below the median of 25 and 10
    assert restored.decisions[-1].compared_with == ("big_bad", "big_good")


def test_a_scheduler_rebuilt_from_tuner_pkl_reads_its_journal(tmp_path):
    journal = str(tmp_path / "tune" / "asha-run.pkl")
    scheduler = GroupedASHA(lambda config: f"size={config['size']}", lambda config: config["steps"] + 1,
                            time_attr="step", grace_period=10, reduction_factor=2, journal=journal)
    tuner_pkl = ray.cloudpickle.dumps(scheduler)  # Tune pickles the scheduler before the first trial, once
    assert read_decisions(journal) == []  # nothing written yet: no journal
    assert scheduler.set_search_properties("val_psnr", "max")
    _sizes_scenario(scheduler)
    assert read_decisions(journal) == scheduler.decisions and len(scheduler.decisions) == 2

    rebuilt = ray.cloudpickle.loads(tuner_pkl)  # what Tuner.restore runs with
    assert rebuilt.set_search_properties("val_psnr", "max")
    for name, size in [("small_good", "small"), ("big_good", "big"), ("small_bad", "small"), ("big_bad", "big")]:
        rebuilt.on_trial_add(None, _trial(name, size))  # Tune re-adds every restored trial
    assert rebuilt.groups == scheduler.groups and rebuilt.decisions == scheduler.decisions
    big_good = _trial("big_good", "big")
    assert _report(rebuilt, big_good, 10, 1.0) == CONTINUE  # its step-10 rung is already recorded: no second look
    late = _trial("small_late", "small")
    rebuilt.on_trial_add(None, late)
    assert _report(rebuilt, late, 10, 22.0) == STOP  # below the median of 30 and 20
    assert read_decisions(journal)[-1].compared_with == ("small_bad", "small_good")


@pytest.mark.parametrize("method", ["on_trial_complete", "on_trial_remove", "on_trial_error"])
def test_every_event_goes_to_the_trials_group(method):
    scheduler = _grouped()
    _sizes_scenario(scheduler)
    trial = _trial("big_good", "big")
    args = (None, trial, {"step": 20, "val_psnr": 26.0}) if method == "on_trial_complete" else (None, trial)
    getattr(scheduler, method)(*args)
    big, small = scheduler._groups["size=big max_t=31"], scheduler._groups["size=small max_t=31"]
    assert ("big_good" in big._trial_info) == (method == "on_trial_error")  # ASHA forgets a completed trial
    assert "big_good" not in small._trial_info
