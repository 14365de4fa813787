"""Failure, retry and reaping: what becomes of a trial that could not finish.

- A trial that fails for a reason of its own (a config the space cannot build, a loss that
  is not finite, the budget claimed by others) ends FAIL with its `fail_reason`; the study
  goes on and the trial is not retried (its params would fail again).
- A trial whose worker died (a kill, a crash, a lost machine) stops heartbeating; after the
  grace period the storage's stale-trial check fails it and queues it again once with the
  same params (Optuna's `RetryHeartbeatStaleTrialCallback`). Any process that opens the
  storage runs the check: workers before a trial, `search run`'s supervisor, `search reap`.
- A trial stopped on purpose (Ctrl-C, SIGTERM, the study's timeout) fails with an
  "Interrupted" reason and is queued again at once by its own worker.
- A study with more failed trials than its budget (or 10) stops its workers: something is
  wrong that retrying will not mend.
"""

from __future__ import annotations

import math
from datetime import datetime

import optuna
from optuna.trial import TrialState

# Times a trial whose worker died is queued again with the same params.
MAX_RETRY = 1
FAIL_REASON_ATTR = "fail_reason"


class TooManyFailures(RuntimeError):
    """A study failed more trials than a worker should keep starting."""


def retry_callback() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """What the storage does with a trial found stale: fail it, queue it again once."""
    return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def reap(study: optuna.Study) -> None:
    """Fail the study's trials whose worker stopped heartbeating, and queue their retries."""
    optuna.storages.fail_stale_trials(study)


def fail(trial: optuna.Trial, reason: str) -> float:
    """End the trial as FAIL with its reason recorded (Optuna fails a NaN result)."""
    trial.set_user_attr(FAIL_REASON_ATTR, reason)
    return math.nan


def requeue(study: optuna.Study, number: int) -> None:
    """Queue a stopped trial again with the same params, so stopping loses nothing."""
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    retry_callback()(study, frozen)


def check_failures(study_name: str, n_failed: int, n_trials: int) -> None:
    """Raise TooManyFailures when a study failed more trials than its budget (or 10)."""
    if n_failed > max(10, n_trials):
        raise TooManyFailures(
            f"study {study_name!r} has {n_failed} failed trials, more than its budget:"
            " see the trials' fail_reason (search status)"
        )


def requeued_since(study: optuna.Study, deadline: float) -> int:
    """How many trials interrupted at or after `deadline` (a Unix time) wait to run again."""
    # Optuna stamps trials with the local time of the worker's machine, as datetime.now().
    since = datetime.fromtimestamp(deadline)
    trials = study.get_trials(deepcopy=False)
    stopped = {
        t.number
        for t in trials
        if t.state == TrialState.FAIL
        and t.datetime_complete is not None
        and t.datetime_complete >= since
        and t.user_attrs.get(FAIL_REASON_ATTR, "").startswith("Interrupted")
    }
    # A retry's history ends with the trial it repeats (failed_trial is the first of them).
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    return sum(t.system_attrs.get("retry_history", [None])[-1] in stopped for t in waiting)
