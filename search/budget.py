"""The budget: which trials count, which hold a place, and whether a trial may still run.

A study's budget is `[trials] n_trials` finished (COMPLETE or PRUNED) trials across all its
workers, and `timeout_minutes` of wall clock for a `search run` (the timer lives with the
workers, `search.worker`). Both may change between runs of one study; nothing else may.
"""

from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from search.ranking import best_trial
from search.record import TrialRecord

# Keys that may change between runs of one study; anything else makes it another study.
BUDGET_KEYS = ("n_trials", "timeout_minutes", "trial_minutes", "max_epoch_ratio")
# Seconds a dead worker's failed trial keeps its place in the budget while its retry is
# being queued (Optuna fails the trial first, then queues the retry).
RETRY_PENDING_SECONDS = 60


class BudgetClaimed(Exception):
    """Raised when other workers already claimed every trial of the budget."""


@dataclass(frozen=True)
class Progress:
    """A study's trials counted by state, and its best trial so far."""

    counts: Counter
    best: optuna.trial.FrozenTrial | None
    n_claimed: int

    @property
    def finished(self) -> int:
        """Trials that count toward the budget."""
        return self.counts[TrialState.COMPLETE] + self.counts[TrialState.PRUNED]

    def spent(self, n_trials: int) -> bool:
        """The budget's trials have all finished."""
        return self.finished >= n_trials

    def all_claimed(self, n_trials: int) -> bool:
        """No trial is queued and the budget's places are all taken (by running ones too)."""
        return self.counts[TrialState.WAITING] == 0 and self.n_claimed >= n_trials

    def line(self, n_trials: int, metric: str) -> str:
        c = self.counts
        text = (
            f"{self.finished}/{n_trials} trials done ({c[TrialState.COMPLETE]} complete,"
            f" {c[TrialState.PRUNED]} pruned, {c[TrialState.FAIL]} failed),"
            f" {c[TrialState.RUNNING]} running"
        )
        if self.best is not None:
            text += f" | best {metric} {self.best.value:.4f} (trial {self.best.number}"
            baseline = TrialRecord.of(self.best).baseline
            text += f", {baseline})" if baseline else ")"
        return text


def claimed_numbers(trials: list[optuna.trial.FrozenTrial]) -> list[int]:
    """Numbers of the trials that hold a place in the budget.

    Finished, running and waiting trials do, and so does a trial just failed because its
    worker died, until its retry is queued: else a worker could start a new trial in that
    moment and leave the retry no place.
    """
    records = {t.number: TrialRecord.of(t) for t in trials}
    retried = {r.retry_of for r in records.values() if r.retry_of is not None}
    now = datetime.datetime.now()
    claimed = []
    for t in trials:
        record = records[t.number]
        pending_retry = (
            t.state == TrialState.FAIL
            and record.fail_reason is None
            and record.retry_of is None
            and t.number not in retried
            and t.datetime_complete is not None
            and (now - t.datetime_complete).total_seconds() < RETRY_PENDING_SECONDS
        )
        if t.state != TrialState.FAIL or pending_retry:
            claimed.append(t.number)
    return claimed


def progress(study: optuna.Study) -> Progress:
    """Count a study's trials by state and find its best trial."""
    trials = study.get_trials(deepcopy=False)
    best = best_trial(trials, study.direction)
    return Progress(Counter(t.state for t in trials), best, len(claimed_numbers(trials)))


def check_claim(trial: optuna.Trial, n_trials: int) -> None:
    """Let a trial run only if fewer than `n_trials` trials before it hold a place.

    Workers check the budget before asking for a trial, but two may ask at once; the trial
    numbers decide which of them runs, so finished trials match the budget exactly.

    Raises:
        BudgetClaimed: other workers hold every place.
    """
    claimed = claimed_numbers(trial.study.get_trials(deepcopy=False))
    if sum(number < trial.number for number in claimed) >= n_trials:
        raise BudgetClaimed(
            f"not run: the {n_trials} trials of the budget were claimed by other workers"
        )
