"""One trial: the only module that touches both Optuna and Keras.

suggest a config, build it, fit it with one report per epoch through the study's pruner,
record what happened in the trial's attributes, return the best epoch's metric.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import keras
import optuna
import tensorflow as tf

from search.budget import BudgetClaimed, check_claim
from search.checkpoints import Checkpointer, Store
from search.config import StudyConfig
from search.data import Dataset
from search.failures import fail
from search.folders import FileSplit
from search.pacing import Interrupted, Pacer, typical_epoch_seconds
from search.prior import SAMPLER, PriorSampler
from search.ranking import best_value
from search.record import FailureKind, TrialRecord, TrialWriter
from search.slurm import array_task
from search.training import Horizon, describe_device, fit, learning_rate_callbacks

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


class PruningReporter(keras.callbacks.Callback):
    """Report the metric after every epoch, keep the history in the trial, prune when told.

    The history is written to the trial each epoch, so a dashboard shows live curves, and
    a line per epoch goes to the worker's log.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        metric: str,
        horizon: Horizon,
        direction: str,
        log: Callable[[str], None] = print,
    ) -> None:
        super().__init__()
        self.trial = trial
        self.writer = TrialWriter(trial)
        self.metric = metric
        self.horizon = horizon
        self.direction = direction
        self.log = log
        self.history: dict[str, list[float]] = {key: [] for key in HISTORY_KEYS}
        # When each epoch ended (UNIX time) and how long it took: a value counts from the
        # moment its epoch ended, and an epoch's cost is what a study's cost bound weighs.
        self.epoch_end: list[float] = []
        self.epoch_seconds: list[float] = []
        self.diverged: str | None = None
        self._epoch_start = time.time()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_start = time.time()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        for key in HISTORY_KEYS:
            # float32 metrics: 6 decimals keep all their meaning and the dashboard readable.
            self.history[key].append(round(float(logs.get(key, math.nan)), 6))
        now = time.time()
        self.epoch_end.append(round(now, 2))
        self.epoch_seconds.append(round(now - self._epoch_start, 2))
        self.writer.set_history(self.history)
        self.writer.set_epoch_times(self.epoch_end, self.epoch_seconds)
        value = self.history[self.metric][-1]
        values = [v for v in self.history[self.metric] if math.isfinite(v)]
        best = f" (best {best_value(values, self.direction):.4f})" if values else ""
        self.log(
            f"trial {self.trial.number} epoch {epoch + 1}/{self.horizon.epochs}:"
            + "".join(f" {key} {self.history[key][-1]:.4f}" for key in HISTORY_KEYS)
            + f"{best}, {self.epoch_seconds[-1]:.1f} s"
        )
        if not (math.isfinite(value) and math.isfinite(float(logs.get("loss", math.nan)))):
            self.diverged = f"loss or {self.metric} is not finite at epoch {epoch + 1}"
            self.model.stop_training = True
            return
        # Steps count epochs from 1, so a pruner's resource is the number of epochs trained.
        self.trial.report(value, step=epoch + 1)
        # After the last epoch the work is done: the trial completes rather than being pruned.
        last = epoch + 1 >= self.horizon.epochs
        if not last and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch + 1} ({self.metric} {value:.4f})")

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # TerminateOnNaN stops after the batch; remember why for the trial's record.
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged = f"loss is not finite in epoch {len(self.history['loss']) + 1}"


class Objective:
    """Callable for `study.optimize`: trains one config per trial on data loaded once."""

    def __init__(
        self,
        config: StudyConfig,
        space: ModuleType,
        data: Dataset,
        *,
        store: Store | None = None,
        keep_best: int = 3,
        deadline: float | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        """
        Args:
            store: where trials save their checkpoints and kept models (None: nowhere).
            keep_best: how many of the study's best trials keep their best-epoch model
                (0: none; trials keep theirs as they complete, and `prune_kept` drops it).
            deadline: the run's time limit as a Unix time: trials plan their epochs to end
                before it, and one stopped by it after an epoch completes with its best.
            log: where a line per epoch goes (the worker's log).
        """
        self.config = config
        self.space = space
        self.data = data
        self.store = store
        self.keep_best = keep_best
        self.deadline = deadline
        self.log = log
        self.metric = config.study.metric
        self.last_trial: int | None = None  # the number of the trial started last

    def __call__(self, trial: optuna.Trial) -> float:
        # Free the previous trial's graph and layers before building the next model.
        keras.backend.clear_session()
        gc.collect()
        self.last_trial = trial.number
        task = array_task()
        where = f"{socket.gethostname()}:{os.getpid()}" + (f" slurm {task}" if task else "")
        writer = TrialWriter(trial)
        writer.set_worker(where)
        record = writer.record()
        _record_origin(trial, record)
        try:
            check_claim(trial, self.config.trials.n_trials)
            return self._train(trial, record)
        except BudgetClaimed as e:
            return fail(trial, FailureKind.BUDGET_CLAIMED, str(e))
        except Exception as e:
            writer.set_failure(_failure_kind(e), f"{type(e).__name__}: {e}"[:500])
            raise

    def _train(self, trial: optuna.Trial, record: TrialRecord) -> float:
        """Train the trial; `record` is what it held when it started (a retry's inherited)."""
        writer = TrialWriter(trial)
        retry_of = list(record.retry_history)
        # A retry trains with the seed of the trial it repeats (which it inherited).
        seed = record.seed if retry_of else None
        seed = self.config.study.seed + trial.number if seed is None else seed
        writer.set_start(
            seed=seed,
            # Float sums depend on the thread count: retraining reproduces a trial only with
            # its own (0 = TensorFlow's default, all cores).
            threads=tf.config.threading.get_intra_op_parallelism_threads(),
            # "cpu" or "gpu N" (and mixed precision): what the trial's seconds were spent on.
            device=describe_device(),
        )
        keras.utils.set_random_seed(seed)
        config = self.config.space_config(self.space, self.space.suggest(trial))
        # A space may say why a config's results would mislead (e.g. a backbone without
        # its pretrained weights); the warning stays with the trial's results.
        warning = getattr(self.space, "warning", None)
        if warning is not None and (message := warning(config)):
            writer.set_warning(message)
        try:
            model = self.space.build(config, self.data.input_shape, self.data.num_classes)
        except ValueError as e:
            return fail(trial, FailureKind.UNBUILDABLE, f"the space cannot build this config: {e}")
        n_params = model.count_params()
        writer.set_n_params(n_params)
        max_params = self.config.trials.max_params
        if max_params is not None and n_params > max_params:
            # Pruned, not failed: the sampler then learns that this region costs too much.
            writer.set_pruned_reason(f"{n_params} params > max_params {max_params}")
            raise optuna.TrialPruned(f"{n_params} params, more than max_params ({max_params})")
        trials = self.config.trials
        horizon = Horizon(trials.max_epochs, planned=False)
        reporter = PruningReporter(trial, self.metric, horizon, self.config.direction, self.log)
        pacer = Pacer(
            trial,
            horizon,
            max_epochs=trials.max_epochs,
            budget_seconds=None if trials.trial_minutes is None else trials.trial_minutes * 60,
            deadline=self.deadline,
            max_epoch_ratio=trials.max_epoch_ratio,
            typical_epoch=lambda: typical_epoch_seconds(trial.study, exclude=trial.number),
            log=self.log,
        )
        schedule = learning_rate_callbacks(config, schedule_epochs=horizon)
        checkpointer = Checkpointer(
            self.store,
            self.config.name,
            trial,
            reporter,
            schedule,
            self.config.direction,
            horizon,
            raw_images=self.data.input_shape if isinstance(self.data.train, FileSplit) else None,
        )
        # Resumed, the trial goes on as if never stopped: the same batches (an epoch's order
        # depends on the seed and the epoch alone), dropout masks, weights and optimizer.
        start_epoch = checkpointer.resume(model, retry_of) if retry_of else 0
        start = time.monotonic()
        ended = stopped = False
        try:
            fit(
                model,
                config,
                self.data,
                epochs=trials.max_epochs,
                schedule=schedule,
                initial_epoch=start_epoch,
                # The pacer first: an epoch's plan is made before the reporter judges it.
                callbacks=[pacer, reporter, checkpointer.callback(model)],
                shuffle_seed=seed,
            )
            ended = True
        except Interrupted:
            stopped = True
        finally:
            _record_run(trial, reporter, time.monotonic() - start, self.config.direction)
            # What this attempt trained (a resumed trial's history has the epochs before).
            writer.set_epochs_trained(len(reporter.history["loss"]) - start_epoch)
            # A trial that ended (completed, pruned, failed) needs its checkpoints no more;
            # a stopped one is decided below. A killed worker runs none of this.
            if not stopped:
                checkpointer.finish(
                    model, kept=ended and not reporter.diverged and self.keep_best > 0
                )
        values = [v for v in reporter.history[self.metric] if math.isfinite(v)]
        if stopped:
            at_deadline = self.deadline is not None and time.time() >= self.deadline
            if not (at_deadline and values and not reporter.diverged):
                # Stopped on purpose: the checkpoint stays for the retry, which goes on.
                raise Interrupted(
                    f"the worker was stopped at epoch {len(reporter.history['loss'])}"
                )
            # The run's time is up: the best epoch so far is the trial's result, said so.
            checkpointer.finish(model, kept=self.keep_best > 0)
            writer.set_stopped_at_deadline(len(values), horizon.epochs)
            self.log(
                f"trial {trial.number}: stopped at the deadline after {len(values)} of"
                f" {horizon.epochs} epochs; its best epoch is its result"
            )
        if reporter.diverged:
            return fail(trial, FailureKind.DIVERGED, reporter.diverged)
        return best_value(values, self.config.direction)


def _record_origin(trial: optuna.Trial, record: TrialRecord) -> None:
    """Where the trial's params came from, unless it was queued with its origin."""
    if record.origin is not None:
        return  # the prior's centre, a baseline, an export, or a retry that inherited it
    sampler = trial.study.sampler
    origin = sampler.origin(trial.number) if isinstance(sampler, PriorSampler) else SAMPLER
    TrialWriter(trial).set_origin(origin)


def _failure_kind(e: Exception) -> FailureKind:
    """The kind of an exception that ended a trial."""
    if isinstance(e, Interrupted):
        return FailureKind.INTERRUPTED
    if isinstance(e, optuna.TrialPruned):
        return FailureKind.PRUNED
    return FailureKind.ERROR


def best_epoch(values: list[float], direction: str) -> int:
    """The 1-based epoch of the best value."""
    return values.index(best_value(values, direction)) + 1


def _record_run(trial: optuna.Trial, reporter: PruningReporter, seconds: float, direction: str):
    values = [v for v in reporter.history[reporter.metric] if math.isfinite(v)]
    TrialWriter(trial).set_run(
        reporter.history,
        seconds=round(seconds, 2),
        # The worker's memory after the trial: creep across trials shows here (and on the
        # dashboard), which is what --max-trials-per-process bounds.
        worker_rss_mb=round(resident_mb(), 1),
        best_epoch=best_epoch(values, direction) if values else None,
    )


def resident_mb() -> float:
    """This process's resident memory in MiB (peak RSS where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
