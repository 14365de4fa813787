"""What this project records on a study and on its trials: the one module that knows the keys.

Optuna keeps a study's and a trial's attributes as JSON under string keys in the storage,
for as long as the study lives; the keys below are therefore a file format, and never
change, so a study written by an older version reads the same. Everything else reads and
writes them through this module:

- `TrialRecord.of(frozen_trial)`: what a trial recorded, typed (None where it has not);
- `TrialWriter(trial)`: what a running trial writes (`search.objective`, `search.pacing`,
  `search.checkpoints`, `search.failures`);
- `queued_attrs(...)`: the attributes a queued trial starts with (`study.enqueue_trial`);
- `StudyRecord.of(study)` and `write_definition`, `write_description`, `write_class_names`:
  a study's own.

A retry is Optuna's: a new trial queued with the failed one's params and attributes
(`optuna.storages.RetryHeartbeatStaleTrialCallback`), whose system attributes name the
trials it repeats; they are read through that class's public accessors. Optuna's private
keys are read in `search.storage` only.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

# A trial's user attributes. Its epochs, live: one entry per epoch trained, resumed ones too.
HISTORY_ATTR = "history"  # {"loss": [...], "accuracy": [...], "val_loss": [...], ...}
EPOCH_END_ATTR = "epoch_end"  # when each epoch ended (Unix time)
EPOCH_SECONDS_ATTR = "epoch_seconds"  # how long each epoch took
# Its run, when it ended: epochs in all, the best one, seconds of this attempt.
EPOCHS_ATTR = "epochs"
EPOCHS_TRAINED_ATTR = "epochs_trained"  # by this attempt (a resumed trial's are fewer)
BEST_EPOCH_ATTR = "best_epoch"  # 1-based
SECONDS_ATTR = "seconds"
WORKER_RSS_ATTR = "worker_rss_mb"  # the worker's resident memory after the trial
# What it ran on and with.
WORKER_ATTR = "worker"  # "host:pid", then " slurm <task>" in a SLURM array
SEED_ATTR = "seed"
THREADS_ATTR = "threads"  # TensorFlow's intra-op threads (0: its default)
DEVICE_ATTR = "device"  # "cpu" or "gpu N", with ", mixed_float16"
N_PARAMS_ATTR = "n_params"
WARNING_ATTR = "warning"  # why its results would mislead, where its space says so
# Where its params came from.
ORIGIN_ATTR = "origin"  # `search.prior`'s origins
BASELINE_ATTR = "baseline"  # the notebook model's name
ENQUEUED_FROM_ATTR = "enqueued_from"  # "FILE#NUMBER" of an export
# Its time (`search.pacing`): the epochs it planned after its first, why fewer than
# max_epochs, and how far it got if the run's deadline stopped it after an epoch.
PLANNED_ATTR = "planned_epochs"
PLAN_NOTE_ATTR = "plan_note"
DEADLINE_ATTR = "stopped_at_deadline"  # {"epochs": k, "planned": n}
# Its checkpoints (`search.checkpoints`).
RESUMED_ATTR = "resumed_from"  # {"trial": N, "epoch": K}: went on after epoch K of trial N
RESTART_ATTR = "restarted"  # why a retry started again from epoch 1
KEPT_ATTR = "kept_epoch"  # the epoch whose model was kept ("kept_weights" was never written)
# How it ended short.
FAIL_REASON_ATTR = "fail_reason"  # a message for people
FAIL_KIND_ATTR = "fail_kind"  # a FailureKind's value (trials of older versions have none)
PRUNED_REASON_ATTR = "pruned_reason"

# A study's user attributes.
DEFINITION_ATTR = "definition"  # the study file, as `StudyConfig.to_dict` gives it
SPACE_ATTR = "space"
DATASET_ATTR = "dataset"
METRIC_ATTR = "metric"
SAMPLER_ATTR = "sampler"  # the sampler, described
PRUNER_ATTR = "pruner"  # the pruner, described
VERSION_ATTR = "search_version"
CLASS_NAMES_ATTR = "class_names"  # what a model's outputs mean, in order

# The attributes `search status --format json` shows of a trial, under these keys.
_STATUS_KEYS = (
    ORIGIN_ATTR,
    RESUMED_ATTR,
    RESTART_ATTR,
    EPOCHS_TRAINED_ATTR,
    BASELINE_ATTR,
    EPOCHS_ATTR,
    BEST_EPOCH_ATTR,
    SECONDS_ATTR,
    N_PARAMS_ATTR,
    SEED_ATTR,
    WORKER_ATTR,
    FAIL_REASON_ATTR,
    PRUNED_REASON_ATTR,
    PLANNED_ATTR,
    PLAN_NOTE_ATTR,
    DEADLINE_ATTR,
    WARNING_ATTR,
)


class FailureKind(StrEnum):
    """Why a trial ended without a value of its own; its value is what the storage holds."""

    # Stopped on purpose (Ctrl-C, SIGTERM, the run's time limit): queued again at once.
    INTERRUPTED = "interrupted"
    # Its worker did not stop when asked, and was killed: queued again.
    KILLED = "killed"
    # Its worker stopped heartbeating (killed, crashed, lost): failed by the storage, which
    # records no reason, and retried (`search.failures`).
    STALE = "stale"
    # Not run: other workers had claimed every trial of the budget.
    BUDGET_CLAIMED = "budget_claimed"
    # Its space cannot build its config.
    UNBUILDABLE = "unbuildable"
    # Its loss or metric was not finite.
    DIVERGED = "diverged"
    # Pruned (by the pruner, or as too costly): a PRUNED trial, not a failure, whose
    # message is kept with the others'.
    PRUNED = "pruned"
    # Any other exception while it trained.
    ERROR = "error"


# How older versions worded each kind's reason, which is all their trials have.
_REASON_PREFIXES = (
    ("Interrupted", FailureKind.INTERRUPTED),
    ("TrialPruned", FailureKind.PRUNED),
    ("killed:", FailureKind.KILLED),
    ("not run:", FailureKind.BUDGET_CLAIMED),
    ("the space cannot build", FailureKind.UNBUILDABLE),
    ("loss is not finite", FailureKind.DIVERGED),
    ("loss or ", FailureKind.DIVERGED),
)


def _failure_kind(kind: Any, reason: str | None, state: TrialState) -> FailureKind | None:
    if kind is not None:
        try:
            return FailureKind(kind)
        except ValueError:
            return FailureKind.ERROR  # a kind of a newer version
    if reason is None:
        return FailureKind.STALE if state == TrialState.FAIL else None
    return next((k for prefix, k in _REASON_PREFIXES if reason.startswith(prefix)), None) or (
        FailureKind.ERROR
    )


@dataclass(frozen=True)
class Resumed:
    """Where a retry went on from: after `epoch` of trial `trial` (None, 0: from scratch)."""

    trial: int | None
    epoch: int


@dataclass(frozen=True)
class StoppedAtDeadline:
    """A trial the run's deadline stopped after `epochs` of its `planned` epochs."""

    epochs: int
    planned: int


@dataclass(frozen=True)
class TrialRecord:
    """What this project recorded on one trial, typed; None (or empty) where it has not."""

    number: int
    state: TrialState
    # Optuna's own: the trial's value (its best epoch's metric; None until it completes) and
    # its params.
    value: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    epoch_end: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    epochs: int | None = None
    epochs_trained: int | None = None
    best_epoch: int | None = None
    seconds: float | None = None
    worker_rss_mb: float | None = None
    worker: str | None = None
    seed: int | None = None
    threads: int | None = None
    device: str | None = None
    n_params: int | None = None
    warning: str | None = None
    origin: str | None = None
    baseline: str | None = None
    enqueued_from: str | None = None
    planned_epochs: int | None = None
    plan_note: str | None = None
    stopped_at_deadline: StoppedAtDeadline | None = None
    resumed_from: Resumed | None = None
    restarted: str | None = None
    kept_epoch: int | None = None
    fail_reason: str | None = None
    # The recorded kind, else (older trials) the one its reason was worded for; STALE for
    # a FAIL trial without a reason.
    failure: FailureKind | None = None
    pruned_reason: str | None = None
    # The first trial this one retries, and all of them, oldest first (Optuna's retries).
    retry_of: int | None = None
    retry_history: tuple[int, ...] = ()
    # The user attributes as stored, for those who show them under their keys.
    attrs: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        """The record of a trial as the storage gave it (`study.get_trials`)."""
        with warnings.catch_warnings():
            # Optuna marks its retry accessors experimental; they are its public API.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry_of = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
            retry_history = tuple(RetryHeartbeatStaleTrialCallback.retry_history(trial))
        record = cls._read(trial.number, trial.state, trial.user_attrs, retry_of, retry_history)
        return replace(record, value=trial.value, params=dict(trial.params))

    @classmethod
    def _read(
        cls,
        number: int,
        state: TrialState,
        attrs: Mapping[str, Any],
        retry_of: int | None,
        retry_history: tuple[int, ...],
    ) -> TrialRecord:
        get = attrs.get
        history = get(HISTORY_ATTR) or {}
        stopped = get(DEADLINE_ATTR)
        resumed = get(RESUMED_ATTR)
        fail_reason = get(FAIL_REASON_ATTR)
        return cls(
            number=number,
            state=state,
            history={key: list(values) for key, values in history.items()},
            epoch_end=list(get(EPOCH_END_ATTR) or []),
            epoch_seconds=list(get(EPOCH_SECONDS_ATTR) or []),
            epochs=get(EPOCHS_ATTR),
            epochs_trained=get(EPOCHS_TRAINED_ATTR),
            best_epoch=get(BEST_EPOCH_ATTR),
            seconds=get(SECONDS_ATTR),
            worker_rss_mb=get(WORKER_RSS_ATTR),
            worker=get(WORKER_ATTR),
            seed=get(SEED_ATTR),
            threads=get(THREADS_ATTR),
            device=get(DEVICE_ATTR),
            n_params=get(N_PARAMS_ATTR),
            warning=get(WARNING_ATTR),
            origin=get(ORIGIN_ATTR),
            baseline=get(BASELINE_ATTR),
            enqueued_from=get(ENQUEUED_FROM_ATTR),
            planned_epochs=get(PLANNED_ATTR),
            plan_note=get(PLAN_NOTE_ATTR),
            stopped_at_deadline=None
            if stopped is None
            else StoppedAtDeadline(stopped["epochs"], stopped["planned"]),
            resumed_from=None if resumed is None else Resumed(resumed["trial"], resumed["epoch"]),
            restarted=get(RESTART_ATTR),
            kept_epoch=get(KEPT_ATTR),
            fail_reason=fail_reason,
            failure=_failure_kind(get(FAIL_KIND_ATTR), fail_reason, state),
            pruned_reason=get(PRUNED_REASON_ATTR),
            retry_of=retry_of,
            retry_history=retry_history,
            attrs=dict(attrs),
        )

    @property
    def epochs_done(self) -> int:
        """Epochs with a history entry: trained so far, by this attempt and those before."""
        return len(self.history.get("loss", []))

    @property
    def interrupted(self) -> bool:
        """Stopped on purpose, and queued again."""
        return self.failure == FailureKind.INTERRUPTED

    def status_attrs(self) -> dict[str, Any]:
        """What `search status --format json` shows of the trial besides Optuna's fields:
        its attributes under their stored keys (those it has) and its failure's kind."""
        shown = {key: self.attrs[key] for key in _STATUS_KEYS if key in self.attrs}
        if self.failure is not None:
            shown[FAIL_KIND_ATTR] = self.failure.value
        return shown


class TrialWriter:
    """What a running trial records, written to its storage as it happens."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def record(self) -> TrialRecord:
        """The trial's record as its storage holds it now (its retry history included)."""
        trial = self.trial
        running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        frozen = next((t for t in running if t.number == trial.number), None)
        if frozen is not None:
            return TrialRecord.of(frozen)
        # Failed under it (its heartbeat judged stale): its own attributes still read.
        return TrialRecord._read(trial.number, TrialState.FAIL, trial.user_attrs, None, ())

    def _set(self, key: str, value: Any) -> None:
        self.trial.set_user_attr(key, value)

    def set_worker(self, where: str) -> None:
        """Where it runs: "host:pid", and " slurm <task>" in a SLURM job array."""
        self._set(WORKER_ATTR, where)

    def set_origin(self, origin: str) -> None:
        """Where its params came from (`search.prior`)."""
        self._set(ORIGIN_ATTR, origin)

    def set_start(self, *, seed: int, threads: int, device: str) -> None:
        """What it trains with: its seed, TensorFlow's threads, its device."""
        self._set(SEED_ATTR, seed)
        self._set(THREADS_ATTR, threads)
        self._set(DEVICE_ATTR, device)

    def set_warning(self, message: str) -> None:
        """Why its results would mislead (its space says)."""
        self._set(WARNING_ATTR, message)

    def set_n_params(self, n_params: int) -> None:
        self._set(N_PARAMS_ATTR, n_params)

    def set_pruned_reason(self, reason: str) -> None:
        """Why it was pruned before the pruner could judge it (too big, too costly)."""
        self._set(PRUNED_REASON_ATTR, reason)

    def set_failure(self, kind: FailureKind, reason: str) -> None:
        """Why it ends short: its kind, and a message for people."""
        self._set(FAIL_REASON_ATTR, reason)
        self._set(FAIL_KIND_ATTR, kind.value)

    def set_history(self, history: dict[str, list[float]]) -> None:
        """Its curves so far, after each epoch (a dashboard shows them live)."""
        self._set(HISTORY_ATTR, history)

    def set_epoch_times(self, epoch_end: list[float], epoch_seconds: list[float]) -> None:
        """When each epoch so far ended (Unix time), and how long it took."""
        self._set(EPOCH_END_ATTR, epoch_end)
        self._set(EPOCH_SECONDS_ATTR, epoch_seconds)

    def set_run(
        self,
        history: dict[str, list[float]],
        *,
        seconds: float,
        worker_rss_mb: float,
        best_epoch: int | None,
    ) -> None:
        """How its run went, when it ends: its history and epochs, its seconds, the worker's
        memory after it, its best epoch (None: no finite value)."""
        self.set_history(history)
        self._set(EPOCHS_ATTR, len(history["loss"]))
        self._set(SECONDS_ATTR, seconds)
        self._set(WORKER_RSS_ATTR, worker_rss_mb)
        if best_epoch is not None:
            self._set(BEST_EPOCH_ATTR, best_epoch)

    def set_epochs_trained(self, epochs: int) -> None:
        """What this attempt trained (a resumed trial's history holds the epochs before)."""
        self._set(EPOCHS_TRAINED_ATTR, epochs)

    def set_plan(self, planned: int, note: str | None = None) -> None:
        """The epochs it plans after its first, and why fewer than max_epochs."""
        self._set(PLANNED_ATTR, planned)
        if note is not None:
            self._set(PLAN_NOTE_ATTR, note)

    def set_stopped_at_deadline(self, epochs: int, planned: int) -> None:
        """The run's deadline stopped it after `epochs` of `planned`; its best is its value."""
        self._set(DEADLINE_ATTR, {"epochs": epochs, "planned": planned})

    def set_resumed(self, trial: int | None, epoch: int, restarted: str | None) -> None:
        """It went on after `epoch` of `trial` (None, 0: from scratch), and why not further
        back (None: no reason; an inherited older reason is replaced)."""
        self._set(RESUMED_ATTR, {"trial": trial, "epoch": epoch})
        self._set(RESTART_ATTR, restarted)

    def set_restarted(self, reason: str) -> None:
        """Why a retry starts again from epoch 1."""
        self._set(RESTART_ATTR, reason)

    def set_kept_epoch(self, epoch: int) -> None:
        """The epoch whose model was kept (`search.checkpoints`)."""
        self._set(KEPT_ATTR, epoch)


def queued_attrs(
    origin: str, *, baseline: str | None = None, enqueued_from: str | None = None
) -> dict[str, Any]:
    """The attributes a queued trial starts with (`study.enqueue_trial(params, user_attrs=)`):
    its origin, and the baseline's name or the export it came from."""
    attrs: dict[str, Any] = {ORIGIN_ATTR: origin}
    if baseline is not None:
        attrs[BASELINE_ATTR] = baseline
    if enqueued_from is not None:
        attrs[ENQUEUED_FROM_ATTR] = enqueued_from
    return attrs


@dataclass(frozen=True)
class StudyRecord:
    """What this project recorded on a study; None where it has not."""

    definition: dict[str, Any] | None = None
    space: str | None = None
    dataset: str | None = None
    metric: str | None = None
    sampler: str | None = None
    pruner: str | None = None
    search_version: str | None = None
    class_names: list[str] | None = None

    @classmethod
    def of(cls, study: optuna.Study) -> StudyRecord:
        """The study's record, read once from its storage."""
        attrs = study.user_attrs
        return cls(
            definition=attrs.get(DEFINITION_ATTR),
            space=attrs.get(SPACE_ATTR),
            dataset=attrs.get(DATASET_ATTR),
            metric=attrs.get(METRIC_ATTR),
            sampler=attrs.get(SAMPLER_ATTR),
            pruner=attrs.get(PRUNER_ATTR),
            search_version=attrs.get(VERSION_ATTR),
            class_names=attrs.get(CLASS_NAMES_ATTR),
        )


def write_definition(study: optuna.Study, definition: dict[str, Any]) -> None:
    """The study's definition (`StudyConfig.to_dict`); a worker that sees it sees a whole
    study, so a new study writes it last."""
    study.set_user_attr(DEFINITION_ATTR, definition)


def write_description(
    study: optuna.Study,
    *,
    space: str,
    dataset: str,
    metric: str,
    sampler: str,
    pruner: str,
    version: str,
) -> None:
    """What the dashboard shows of a study: its space, dataset, metric, sampler and pruner
    described, and the version that created it."""
    study.set_user_attr(SPACE_ATTR, space)
    study.set_user_attr(DATASET_ATTR, dataset)
    study.set_user_attr(METRIC_ATTR, metric)
    study.set_user_attr(SAMPLER_ATTR, sampler)
    study.set_user_attr(PRUNER_ATTR, pruner)
    study.set_user_attr(VERSION_ATTR, version)


def write_class_names(study: optuna.Study, class_names: list[str]) -> None:
    """What a model's outputs mean, in order (the study's first worker writes them)."""
    study.set_user_attr(CLASS_NAMES_ATTR, list(class_names))
