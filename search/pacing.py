"""A trial's pace: epochs sized to its time, stops between batches, too costly configs cut.

- Sizing: after its first epoch a trial plans as many epochs as fit in its time (the
  study's `trial_minutes`, and the time left before the run's deadline), `max_epochs` at
  most, and its learning-rate schedule ends with them (`search.training.Horizon`).
  Machines that differ 4x in speed then train the same config for fewer or more epochs,
  each annealed to its end, rather than stopping one part-way through its schedule.
- Stopping: a stop (Ctrl-C, SIGTERM, the deadline) is seen after every batch, in training
  and in validation, so it takes effect within seconds rather than at an epoch's end.
- Cost: an epoch projected, from its batches so far, to take more than `max_epoch_ratio`
  times the study's typical epoch, or more than the trial's whole budget, ends the trial
  as pruned ("too costly"), so no config holds a worker for long; the sampler ranks such
  a trial below every trial that reported a value, and learns to avoid its region.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import keras
import optuna

from search.record import TrialRecord, TrialWriter
from search.training import Horizon

# Set by a worker's SIGINT/SIGTERM handler and by its deadline timer. Trials stop at the
# next batch boundary: an exception thrown asynchronously into TensorFlow can corrupt its
# state instead, while one raised by a callback between batches leaves it clean.
STOP = threading.Event()
# A plan counts an epoch as this much more than the first one took: epochs vary by a few
# percent, and an epoch cut by the deadline loses the end of the schedule.
EPOCH_SAFETY = 1.1
# Seconds of an epoch's batches (after its first, which includes tracing the model) before
# its cost is projected, and between two projections.
COST_CHECK_SECONDS = 5.0
# Seconds between two looks at the study's typical epoch while a trial trains.
TYPICAL_REFRESH_SECONDS = 30.0


class Interrupted(Exception):
    """Raised when a worker was asked to stop in the middle of a trial."""


class Pacer(keras.callbacks.Callback):
    """Plan a trial's epochs after its first, stop it between batches, cut a costly one.

    Runs before the trial's reporter in the callback list, so the plan is known when the
    reporter decides whether an epoch is the last.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        horizon: Horizon,
        *,
        max_epochs: int,
        budget_seconds: float | None,
        deadline: float | None,
        max_epoch_ratio: float,
        typical_epoch: Callable[[], float | None],
        log: Callable[[str], None] = print,
    ) -> None:
        """
        Args:
            horizon: the epochs the schedule spans; set here once the first epoch is timed.
            budget_seconds: the trial's own budget (trial_minutes), None for none.
            deadline: the run's deadline as a Unix time, None for none.
            typical_epoch: the study's typical epoch in seconds (None: not known yet).
        """
        super().__init__()
        self.trial = trial
        self.writer = TrialWriter(trial)
        self.horizon = horizon
        self.max_epochs = max_epochs
        self.budget_seconds = budget_seconds
        self.deadline = deadline
        self.max_epoch_ratio = max_epoch_ratio
        self.typical_epoch = typical_epoch
        self.log = log
        self._typical: float | None = None
        self._typical_at = -math.inf
        self._start = time.monotonic()
        self._epoch_start = self._start
        self._first_batch_end: float | None = None
        self._last_check = -math.inf

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._start = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_start = time.monotonic()
        self._first_batch_end = None

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if STOP.is_set():
            raise Interrupted(f"the worker was stopped in epoch {self._epoch_number()}")
        now = time.monotonic()
        if self._first_batch_end is None:
            self._first_batch_end = now
            return
        if now - self._first_batch_end < COST_CHECK_SECONDS:
            return
        if now - self._last_check < COST_CHECK_SECONDS:
            return
        self._last_check = now
        steps = self.params.get("steps") or batch + 1
        per_batch = (now - self._first_batch_end) / batch
        projected = now - self._epoch_start + per_batch * (steps - batch - 1)
        reason = self._too_costly(projected)
        if reason:
            message = f"too costly: epoch {self._epoch_number()} projected at {reason}"
            self.writer.set_pruned_reason(message)
            self.log(f"trial {self.trial.number}: {message}; pruned")
            raise optuna.TrialPruned(message)

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if STOP.is_set():
            raise Interrupted(f"the worker was stopped in epoch {self._epoch_number()}")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.monotonic() - self._epoch_start
        if not self.horizon.planned:
            self._plan(epoch + 1, seconds)
        if epoch + 1 >= self.horizon.epochs:
            self.model.stop_training = True

    def _epoch_number(self) -> int:
        return self.writer.record().epochs_done + 1

    def _too_costly(self, projected: float) -> str | None:
        now = time.monotonic()
        if now - self._typical_at >= TYPICAL_REFRESH_SECONDS:
            self._typical, self._typical_at = self.typical_epoch(), now
        typical = self._typical
        if typical is not None and projected > self.max_epoch_ratio * typical:
            return (
                f"{projected:.0f} s, more than max_epoch_ratio {self.max_epoch_ratio:g} times"
                f" the study's typical epoch ({typical:.1f} s)"
            )
        if self.budget_seconds is not None and projected > self.budget_seconds:
            return (
                f"{projected:.0f} s, more than the trial's whole budget"
                f" (trial_minutes {self.budget_seconds / 60:g})"
            )
        return None

    def _plan(self, epochs_done: int, seconds: float) -> None:
        """Plan the trial's epochs from its first epoch's seconds; record why if fewer."""
        allowed, limits = math.inf, []
        if self.budget_seconds is not None:
            allowed = self.budget_seconds - (time.monotonic() - self._start)
            limits.append("its trial_minutes")
        if self.deadline is not None:
            left = self.deadline - time.time()
            if left < allowed:
                allowed, limits = left, ["the run's time limit"]
        if math.isinf(allowed):
            planned = self.max_epochs
        else:
            more = math.floor(max(0.0, allowed) / (max(seconds, 1e-3) * EPOCH_SAFETY))
            planned = max(epochs_done, min(self.max_epochs, epochs_done + more))
        self.horizon.epochs, self.horizon.planned = planned, True
        note = None
        if planned < self.max_epochs:
            note = (
                f"{planned} of max {self.max_epochs} epochs planned: {seconds:.0f} s per epoch,"
                f" {max(0.0, allowed) / 60:.1f} min left in {limits[0]}"
            )
        self.writer.set_plan(planned, note)
        if note is not None:
            self.log(f"trial {self.trial.number}: {note}")


def typical_epoch_seconds(
    study: optuna.Study, *, exclude: int, first: bool = False
) -> float | None:
    """The median over the study's other trials of their median epoch's seconds.

    Args:
        first: of their first epochs instead, which also build and trace the model.
    """
    per_trial = [
        seconds[0] if first else statistics.median(seconds)
        for t in study.get_trials(deepcopy=False)
        if t.number != exclude and (seconds := TrialRecord.of(t).epoch_seconds)
    ]
    return statistics.median(per_trial) if per_trial else None
