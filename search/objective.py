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
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import keras
import optuna
import tensorflow as tf

from search.budget import BudgetClaimed, check_claim
from search.config import StudyConfig
from search.data import Dataset
from search.failures import FAIL_REASON_ATTR, fail
from search.prior import ORIGIN_ATTR, SAMPLER, PriorSampler
from search.ranking import best_value
from search.training import describe_device, fit

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


# Set by a worker's SIGINT/SIGTERM handler. Trials stop at the next batch boundary: an
# exception thrown asynchronously into TensorFlow can corrupt its state instead.
STOP = threading.Event()


class Interrupted(Exception):
    """Raised when a worker was asked to stop in the middle of a trial."""


class PruningReporter(keras.callbacks.Callback):
    """Report the metric after every epoch, keep the history in the trial, prune when told.

    The history is written to the trial each epoch, so a dashboard shows live curves.
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        super().__init__()
        self.trial = trial
        self.metric = metric
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
        self.trial.set_user_attr("history", self.history)
        self.trial.set_user_attr("epoch_end", self.epoch_end)
        self.trial.set_user_attr("epoch_seconds", self.epoch_seconds)
        value = self.history[self.metric][-1]
        if not (math.isfinite(value) and math.isfinite(float(logs.get("loss", math.nan)))):
            self.diverged = f"loss or {self.metric} is not finite at epoch {epoch + 1}"
            self.model.stop_training = True
            return
        # Steps count epochs from 1, so a pruner's resource is the number of epochs trained.
        self.trial.report(value, step=epoch + 1)
        # After the last epoch the work is done: the trial completes rather than being pruned.
        last = epoch + 1 >= self.params.get("epochs", math.inf)
        if not last and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch + 1} ({self.metric} {value:.4f})")

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if STOP.is_set():
            self.model.stop_training = True
        # TerminateOnNaN stops after the batch; remember why for the trial's record.
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged = f"loss is not finite in epoch {len(self.history['loss']) + 1}"


class Objective:
    """Callable for `study.optimize`: trains one config per trial on data loaded once."""

    def __init__(self, config: StudyConfig, space: ModuleType, data: Dataset) -> None:
        self.config = config
        self.space = space
        self.data = data
        self.metric = config.study.metric
        self.last_trial: int | None = None  # the number of the trial started last

    def __call__(self, trial: optuna.Trial) -> float:
        # Free the previous trial's graph and layers before building the next model.
        keras.backend.clear_session()
        gc.collect()
        self.last_trial = trial.number
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        _record_origin(trial)
        try:
            check_claim(trial, self.config.trials.n_trials)
            return self._train(trial)
        except BudgetClaimed as e:
            return fail(trial, str(e))
        except Exception as e:
            trial.set_user_attr(FAIL_REASON_ATTR, f"{type(e).__name__}: {e}"[:500])
            raise

    def _train(self, trial: optuna.Trial) -> float:
        seed = self.config.study.seed + trial.number
        trial.set_user_attr("seed", seed)
        # Float sums depend on the thread count: retraining reproduces a trial only with its
        # own (0 = TensorFlow's default, all cores).
        trial.set_user_attr("threads", tf.config.threading.get_intra_op_parallelism_threads())
        # "cpu" or "gpu N" (and mixed precision): what the trial's seconds were spent on.
        trial.set_user_attr("device", describe_device())
        keras.utils.set_random_seed(seed)
        config = self.config.space_config(self.space, self.space.suggest(trial))
        # A space may say why a config's results would mislead (e.g. a backbone without
        # its pretrained weights); the warning stays with the trial's results.
        warning = getattr(self.space, "warning", None)
        if warning is not None and (message := warning(config)):
            trial.set_user_attr("warning", message)
        try:
            model = self.space.build(config, self.data.input_shape, self.data.num_classes)
        except ValueError as e:
            return fail(trial, f"the space cannot build this config: {e}")
        n_params = model.count_params()
        trial.set_user_attr("n_params", n_params)
        max_params = self.config.trials.max_params
        if max_params is not None and n_params > max_params:
            # Pruned, not failed: the sampler then learns that this region costs too much.
            trial.set_user_attr("pruned_reason", f"{n_params} params > max_params {max_params}")
            raise optuna.TrialPruned(f"{n_params} params, more than max_params ({max_params})")
        reporter = PruningReporter(trial, self.metric)
        start = time.monotonic()
        try:
            fit(
                model,
                config,
                self.data,
                epochs=self.config.trials.max_epochs,
                callbacks=[reporter],
                shuffle_seed=seed,
            )
        finally:
            _record_run(trial, reporter, time.monotonic() - start, self.config.direction)
        if STOP.is_set():
            raise Interrupted(f"the worker was stopped at epoch {len(reporter.history['loss'])}")
        if reporter.diverged:
            return fail(trial, reporter.diverged)
        values = reporter.history[self.metric]
        return best_value(values, self.config.direction)


def _record_origin(trial: optuna.Trial) -> None:
    """Where the trial's params came from, unless it was queued with its origin."""
    if ORIGIN_ATTR in trial.user_attrs:
        return  # the prior's centre, a baseline, an export, or a retry that inherited it
    sampler = trial.study.sampler
    origin = sampler.origin(trial.number) if isinstance(sampler, PriorSampler) else SAMPLER
    trial.set_user_attr(ORIGIN_ATTR, origin)


def best_epoch(values: list[float], direction: str) -> int:
    """The 1-based epoch of the best value."""
    return values.index(best_value(values, direction)) + 1


def _record_run(trial: optuna.Trial, reporter: PruningReporter, seconds: float, direction: str):
    values = [v for v in reporter.history[reporter.metric] if math.isfinite(v)]
    trial.set_user_attr("history", reporter.history)
    trial.set_user_attr("epochs", len(reporter.history["loss"]))
    trial.set_user_attr("seconds", round(seconds, 2))
    # The worker's memory after the trial: creep across trials shows here (and on the
    # dashboard), which is what --max-trials-per-process bounds.
    trial.set_user_attr("worker_rss_mb", round(resident_mb(), 1))
    if values:
        trial.set_user_attr("best_epoch", best_epoch(values, direction))


def resident_mb() -> float:
    """This process's resident memory in MiB (peak RSS where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
