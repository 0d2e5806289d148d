"""Early stopping that compares like with like: one ASHA per group of trials (a model size, a compute budget).

A bigger model starts slower, so one ASHA over a study of several sizes stops the big ones at the first rung
for being big ("tiny beats small"). `GroupedASHA` is a Tune scheduler that hands each trial's events to the
ASHA of its group, so trials meet in a rung only with trials of their own group:

    group    `group_of(config)` (the study: parameter count and FLOP budget) plus the group's max_t
    max_t    `max_t_of(config)`: one past the trial's last step, so a finished trial is never stopped
             before it exports; trials with another max_t are another group, never a shorter run of this one
    stops    every STOP is kept as a `StopDecision`: the rung, the cutoff, and whom the trial was compared with

Ray Tune (2.60) saves a scheduler only inside `tuner.pkl`, as it was before the first trial, and
`Tuner.restore` rebuilds it from there (ray-project/ray#30838). So the scheduler also writes its state to a
`journal` file beside Tune's (`journal_path`) whenever a rung or a decision changes, and a scheduler
rebuilt from `tuner.pkl` reads it back before its first event: `hiir study resume` keeps the rungs and the
decisions, and the study tags the stopped trials' runs from the same file (`read_decisions`).
"""
from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.result import DEFAULT_METRIC
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from hiir.data_prep.files import filesystem, write_atomic


@dataclass(frozen=True)
class StopDecision:
    """One trial ASHA stopped, and why: its value at a rung fell below (max) or above (min) the rung's cutoff."""
    trial_id: str
    group: str                      # its group's label: the trials it could be compared with
    time_attr: str                  # what the rungs count (step, training_iteration)
    t: int | float                  # time_attr when it stopped
    rung: int | float | None        # the rung's milestone in time_attr units; None: stopped at max_t
    metric: str
    mode: str                       # max or min
    value: float                    # the trial's metric at the stop
    cutoff: float | None            # the rung's cutoff (metric units); None: stopped at max_t
    compared_with: tuple[str, ...]  # the trials recorded in that rung before it: whom it was compared with

    @property
    def reason(self) -> str:
        if self.rung is None:
            return f"{self.time_attr} {self.t} reached the group's max_t"
        side = "below" if self.mode == "max" else "above"
        n = len(self.compared_with)
        return (f"{self.metric} {self.value:.6g} {side} the cutoff {self.cutoff:.6g} of its {self.time_attr} "
                f"{self.rung} rung, set by {n} trial{'s' * (n != 1)} of its group")


def journal_path(tune_path: str, parent_run_id: str) -> str:
    """Where a study run's scheduler keeps its state: beside Tune's, named by the study's run (a re-run of the
    same study in the same Tune directory starts afresh)."""
    return f"{tune_path}/asha-{parent_run_id}.pkl"


def read_decisions(journal: str) -> list[StopDecision]:
    """The stop decisions a scheduler wrote to `journal`; none when it never wrote (no rung reached, no ASHA)."""
    state = _read(journal)
    return list(state["decisions"]) if state else []


class GroupedASHA(FIFOScheduler):
    """ASHA within groups of trials: a trial is compared only with trials of its group.

    Args:
        group_of: a trial's config -> its group's name; trials that may be compared share it.
        max_t_of: a trial's config -> ASHA's max_t for it, in time_attr units.
        time_attr, metric, mode, grace_period, reduction_factor: as `ASHAScheduler`'s, for every group.
        journal: a path or URI the state is written to on every change, and read back from by a scheduler
            rebuilt from Tune's `tuner.pkl` (see the module's docstring); None keeps it in memory only.
    """

    def __init__(self, group_of: Callable[[dict], str], max_t_of: Callable[[dict], int], *,
                 time_attr: str = "training_iteration", metric: str | None = None, mode: str | None = None,
                 grace_period: int = 1, reduction_factor: float = 4, journal: str | None = None):
        assert mode in (None, "min", "max"), "`mode` must be 'min' or 'max'"
        super().__init__()
        self._group_of, self._max_t_of = group_of, max_t_of
        self._time_attr, self._grace_period, self._reduction_factor = time_attr, grace_period, reduction_factor
        self._metric, self._mode = metric, mode
        self._journal, self._journal_read = journal, journal is None
        self._groups: dict[str, ASHAScheduler] = {}  # group label -> its ASHA
        self._trial_group: dict[str, str] = {}       # trial id -> group label
        self.decisions: list[StopDecision] = []

    @property
    def groups(self) -> dict[str, list[str]]:
        """Group label -> the ids of its trials."""
        out: dict[str, list[str]] = {label: [] for label in self._groups}
        for trial_id, label in self._trial_group.items():
            out[label].append(trial_id)
        return out

    # ---- Tune's hooks: each one goes to the trial's group
    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric, self._mode = metric or self._metric, mode or self._mode
        if self._metric is None and self._mode:
            self._metric = DEFAULT_METRIC
        return True

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self._read_journal()
        if trial.trial_id not in self._trial_group:  # a restored trial keeps its group
            max_t = int(self._max_t_of(trial.config))
            label = f"{self._group_of(trial.config)} max_t={max_t}"
            if label not in self._groups:
                self._groups[label] = ASHAScheduler(
                    time_attr=self._time_attr, metric=self._metric, mode=self._mode, max_t=max_t,
                    grace_period=self._grace_period, reduction_factor=self._reduction_factor)
            self._trial_group[trial.trial_id] = label
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self._read_journal()
        asha = self._asha(trial)
        before, count = _rungs(asha, trial.trial_id), _recorded(asha)
        action = asha.on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            self.decisions.append(self._decision(asha, trial, result, before))
        if action == TrialScheduler.STOP or _recorded(asha) != count:
            self._write_journal()
        return action

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._read_journal()
        asha = self._asha(trial)
        count = _recorded(asha)
        asha.on_trial_complete(tune_controller, trial, result)
        if _recorded(asha) != count:
            self._write_journal()

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._read_journal()
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._read_journal()
        self._asha(trial).on_trial_error(tune_controller, trial)

    def debug_string(self) -> str:
        lines = [f"Using GroupedASHA: {len(self._groups)} groups, {len(self.decisions)} trials stopped"]
        lines += [f"{label}: {asha.debug_string()}" for label, asha in self._groups.items()]
        return "\n".join(lines)

    # ---- state: Tune's save/restore interface, and the journal
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self._state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self._load(pickle.load(f))
        self._journal_read = True  # what was restored is the state; a journal must not replace it

    def _state(self) -> dict[str, Any]:
        """What the trials did; metric and mode are settings, which Tune hands a restored scheduler again."""
        return {"groups": self._groups, "trial_group": self._trial_group, "decisions": self.decisions}

    def _load(self, state: dict[str, Any]) -> None:
        self._groups, self._trial_group = state["groups"], state["trial_group"]
        self.decisions = list(state["decisions"])

    def _write_journal(self) -> None:
        if self._journal is not None:
            write_atomic(self._journal, pickle.dumps(self._state()))

    def _read_journal(self) -> None:
        if not self._journal_read:
            self._journal_read = True
            state = _read(self._journal)
            if state is not None:
                self._load(state)

    # ---- helpers
    def _asha(self, trial: Trial) -> ASHAScheduler:
        return self._groups[self._trial_group[trial.trial_id]]

    def _decision(self, asha: ASHAScheduler, trial: Trial, result: dict, before: list) -> StopDecision:
        """The rung the result was just recorded in (none: it stopped at max_t), its cutoff before this trial
        joined it, and the trials already in it."""
        rung, cutoff, compared = None, None, ()
        for (milestone, seen), (_, recorded) in zip(before, _rungs(asha, trial.trial_id)):
            if trial.trial_id in recorded and trial.trial_id not in seen:
                bracket = asha._trial_info[trial.trial_id]
                rung, compared = _plain(milestone), tuple(sorted(seen))
                cutoff = float(bracket.cutoff(seen)) * asha._metric_op  # rungs hold metric * (+1 max, -1 min)
                break
        return StopDecision(trial.trial_id, self._trial_group[trial.trial_id], self._time_attr,
                            _plain(result[self._time_attr]), rung, self._metric, self._mode,
                            float(result[self._metric]), cutoff, compared)


def _rungs(asha: ASHAScheduler, trial_id: str) -> list[tuple[float, dict[str, float]]]:
    """A copy of the rungs of the trial's bracket: [(milestone, {trial id: recorded value})], highest first.
    ASHA's internals (`_trial_info`, `_Bracket._rungs`, Ray 2.60): tests/test_schedulers.py pins them."""
    bracket = asha._trial_info.get(trial_id)
    return [(milestone, dict(recorded)) for milestone, recorded in bracket._rungs] if bracket else []


def _plain(x) -> int | float:
    """A Python int when x is whole (a step, a rung milestone: "20", not "20.0"), else a float."""
    return int(x) if float(x).is_integer() else float(x)


def _recorded(asha: ASHAScheduler) -> int:
    """How many values the group's rungs hold (a change is what the journal must keep)."""
    return sum(len(recorded) for bracket in asha._brackets for _, recorded in bracket._rungs)


def _read(journal: str) -> dict[str, Any] | None:
    fs, path = filesystem(journal)
    try:
        with fs.open_input_stream(path) as f:
            return pickle.loads(f.read())
    except FileNotFoundError:
        return None
