"""Failure, retry and reaping: what becomes of a trial that could not finish.

- A trial that fails for a reason of its own (a config the space cannot build, a loss that
  is not finite, the budget claimed by others) ends FAIL with its `fail_reason`; the study
  goes on and the trial is not retried (its params would fail again).
- A trial whose worker died (a kill, a crash, a lost machine) stops heartbeating; after the
  grace period the storage's stale-trial check fails it and queues it again with the same
  params (Optuna's `RetryHeartbeatStaleTrialCallback`); the retry goes on from the trial's
  last checkpoint (`search.checkpoints`). A retry is retried again only if it made
  progress (saved a checkpoint past the epoch it went on from), at most `max_retries`
  times in all (`Settings.max_retries`: --max-retries, SEARCH_MAX_RETRIES, 3). A trial not
  retried has its checkpoint removed. Any process that opens the storage runs the check:
  workers before a trial, `search run`'s supervisor, `search reap`.
- A trial stopped on purpose (Ctrl-C, SIGTERM, the study's timeout) fails as
  `FailureKind.INTERRUPTED` and is queued again at once by its own worker, however often.
- A study with more failed trials than its budget (or 10) stops its workers: something is
  wrong that retrying will not mend.
"""

from __future__ import annotations

import math
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.record import FailureKind, TrialRecord, TrialWriter
from search.settings import Settings


class TooManyFailures(RuntimeError):
    """A study failed more trials than a worker should keep starting."""


class RetryWithProgress:
    """What the storage does with a trial found stale (already failed): queue it again.

    The first failure is retried; a retry only if it made progress, and at most
    `max_retries` times in all. A trial given up on has its checkpoints removed.
    """

    def __init__(self, checkpoints: str, max_retries: int) -> None:
        """
        Args:
            checkpoints: the checkpoint location (`Settings.checkpoints`) where retries go on.
            max_retries: times a trial may be retried in all.
        """
        self.checkpoints = checkpoints
        self.max_retries = max_retries
        self._queue = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from search.checkpoints import checkpoint_key, delete_checkpoint, open_store

        store = open_store(self.checkpoints)
        earlier = list(TrialRecord.of(trial).retry_history)
        # A trial saves a checkpoint only after an epoch it trained: its own is progress.
        progressed = store is not None and bool(
            store.keys(checkpoint_key(study.study_name, trial.number))
        )
        retry = len(earlier) < self.max_retries and (progressed or not earlier)
        if retry:
            self._queue(study, trial)
            return
        for number in [*earlier, trial.number] if store is not None else []:
            delete_checkpoint(store, study.study_name, number)


def retry_callback(settings: Settings) -> RetryWithProgress:
    """The stale-trial callback of a storage opened with `settings`."""
    return RetryWithProgress(settings.checkpoints, settings.max_retries)


def reap(study: optuna.Study) -> None:
    """Fail the study's trials whose worker stopped heartbeating, and queue their retries."""
    optuna.storages.fail_stale_trials(study)


def fail(trial: optuna.Trial, kind: FailureKind, reason: str) -> float:
    """End the trial as FAIL with its kind and reason recorded (Optuna fails a NaN result)."""
    TrialWriter(trial).set_failure(kind, reason)
    return math.nan


def requeue(study: optuna.Study, number: int) -> None:
    """Queue a stopped trial again with the same params, so stopping loses nothing."""
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)(study, frozen)


def check_failures(study_name: str, n_failed: int, n_trials: int) -> None:
    """Raise TooManyFailures when a study failed more trials than its budget (or 10)."""
    if n_failed > max(10, n_trials):
        raise TooManyFailures(
            f"study {study_name!r} has {n_failed} failed trials, more than its budget:"
            " see the trials' fail_reason (search status)"
        )


def fail_running(study: optuna.Study, workers: set[str], reason: str) -> list[int]:
    """Fail the RUNNING trials of these killed workers ("host:pid") and queue them again.

    For workers that were killed: their trials would otherwise stay RUNNING until some
    process's stale-trial check, long after `search run` returned.
    """
    from optuna.trial import Trial

    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # "host:pid", followed by the SLURM task where the worker runs in one.
        if (TrialRecord.of(t).worker or "").split(" ")[0] in workers:
            # The trial's id is not public on a FrozenTrial; Trial takes it to write attrs.
            TrialWriter(Trial(study, t._trial_id)).set_failure(FailureKind.KILLED, reason)
            study.tell(t.number, state=TrialState.FAIL)
            requeue(study, t.number)
            numbers.append(t.number)
    return numbers


def deadline_summary(study: optuna.Study, deadline: float) -> str:
    """What the deadline did to the trials running then: completed with their best epoch
    (they had trained one), or stopped and queued again."""
    since = datetime.fromtimestamp(deadline)
    completed = [
        f"#{t.number} after {stopped.epochs} of {stopped.planned} epochs"
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if (stopped := TrialRecord.of(t).stopped_at_deadline) is not None
        and t.datetime_complete is not None
        and t.datetime_complete >= since
    ]
    requeued = requeued_since(study, deadline)
    parts = []
    if completed:
        parts.append(
            f"{len(completed)} running trial{'s' * (len(completed) != 1)} stopped at the"
            f" deadline and completed with its best epoch ({', '.join(completed)})"
        )
    parts.append(f"{requeued} running trial{'s' * (requeued != 1)} stopped and queued again")
    return "; ".join(parts)


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
        and TrialRecord.of(t).interrupted
    }
    # A retry's history ends with the trial it repeats (retry_of is the first of them).
    waiting = [TrialRecord.of(t) for t in trials if t.state == TrialState.WAITING]
    return sum(bool(r.retry_history) and r.retry_history[-1] in stopped for r in waiting)
