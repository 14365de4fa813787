"""The budget's bookkeeping: which trials hold a place in it."""

from __future__ import annotations

import datetime

import optuna
from optuna.trial import TrialState, create_trial

from search.budget import RETRY_PENDING_SECONDS, claimed_numbers


def _trial(number: int, state: TrialState, *, reason=None, retry_of=None, ended_ago=1.0):
    trial = create_trial(
        state=state,
        value=0.5 if state == TrialState.COMPLETE else None,
        user_attrs={"fail_reason": reason} if reason else {},
        system_attrs={"failed_trial": retry_of} if retry_of is not None else {},
    )
    trial.number = number
    if state.is_finished():
        trial.datetime_complete = datetime.datetime.now() - datetime.timedelta(seconds=ended_ago)
    return trial


def test_finished_running_and_waiting_trials_hold_places():
    trials = [
        _trial(0, TrialState.COMPLETE),
        _trial(1, TrialState.PRUNED),
        _trial(2, TrialState.RUNNING),
        _trial(3, TrialState.WAITING),
    ]
    assert claimed_numbers(trials) == [0, 1, 2, 3]


def test_failures_with_a_reason_free_their_place():
    # A NaN loss, a build error, a lost budget race: the place goes to another trial.
    assert claimed_numbers([_trial(0, TrialState.FAIL, reason="loss is not finite")]) == []


def test_a_dead_workers_trial_keeps_its_place_until_its_retry_is_queued():
    dead = _trial(0, TrialState.FAIL)
    # Failed by the reaper a moment ago, retry not queued yet: the place is kept for it.
    assert claimed_numbers([dead]) == [0]
    # Once the retry is queued, the retry holds the place instead.
    assert claimed_numbers([dead, _trial(1, TrialState.WAITING, retry_of=0)]) == [1]
    # A failed retry is not retried again, so it frees its place.
    assert claimed_numbers([dead, _trial(1, TrialState.FAIL, retry_of=0)]) == []
    # A retry that never came (its queueing crashed) does not block the budget forever.
    old = _trial(0, TrialState.FAIL, ended_ago=RETRY_PENDING_SECONDS + 1)
    assert claimed_numbers([old]) == []


def test_works_on_a_real_study():
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert claimed_numbers(study.get_trials()) == [0, 1, 2]
