"""Text views of a storage: its studies, one study's trials and its best trial."""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.budget import progress
from search.progress import epochs_text
from search.record import StoppedAtDeadline, StudyRecord, TrialRecord
from search.study import open_study, study_names


def print_status(
    storage: optuna.storages.BaseStorage,
    study_name: str | None = None,
    *,
    output_format: str = "table",
) -> None:
    """Print the storage's studies, or one study's trials and best trial.

    Args:
        output_format: "table" for people, "json" for scripts (one JSON document).
    """
    if output_format == "json":
        print(json.dumps(status_json(storage, study_name), indent=2))
        return
    if study_name is None:
        names = study_names(storage)
        if not names:
            print("no studies in this storage")
        for name in names:
            study = open_study(name, storage)
            definition = StudyRecord.of(study).definition or {}
            n_trials = definition.get("trials", {}).get("n_trials", "?")
            metric = definition.get("study", {}).get("metric", "value")
            print(f"{name}: {progress(study).line(n_trials, metric)}")
        return
    study = _load(study_name, storage)
    definition = StudyRecord.of(study).definition or {}
    max_epochs = definition.get("trials", {}).get("max_epochs")
    print(
        f"{'trial':>5}  {'state':<8} {'value':>8} {'epochs':>6} {'seconds':>8}"
        f"  {'origin':<15} name / note"
    )
    for t in study.get_trials(deepcopy=False):
        record = TrialRecord.of(t)
        value = f"{t.value:.4f}" if t.value is not None else "-"
        # A running trial's epochs so far, of those it planned (its history grows per epoch).
        epochs = (
            epochs_text(t, max_epochs)
            if t.state == TrialState.RUNNING
            else _or(record.epochs, "-")
        )
        print(
            f"{t.number:>5}  {t.state.name:<8} {value:>8} {epochs:>6}"
            f" {_or(record.seconds, '-'):>8}  {_or(record.origin, '-'):<15}"
            f" {trial_note(t)}"
        )
    print(describe_best(study_name, storage))


def status_json(
    storage: optuna.storages.BaseStorage, study_name: str | None = None
) -> dict[str, Any] | list[dict[str, Any]]:
    """The storage's studies with their counts, or one study with its trials, as plain data."""
    if study_name is None:
        return [_study_json(open_study(name, storage)) for name in study_names(storage)]
    study = _load(study_name, storage)
    return _study_json(study) | {"trials": [_trial_json(t) for t in study.get_trials()]}


def _study_json(study: optuna.Study) -> dict[str, Any]:
    state = progress(study)
    definition = StudyRecord.of(study).definition or {}
    return {
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        "metric": definition.get("study", {}).get("metric"),
        "space": definition.get("study", {}).get("space"),
        "n_trials": definition.get("trials", {}).get("n_trials"),
        "counts": {s.name.lower(): state.counts[s] for s in TrialState},
        "best_trial": state.best.number if state.best else None,
        "best_value": state.best.value if state.best else None,
    }


def _trial_json(t: FrozenTrial) -> dict[str, Any]:
    def when(d):
        return d.isoformat() if d is not None else None

    record = TrialRecord.of(t)

    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "value": t.value,
        "params": t.params,
        "datetime_start": when(t.datetime_start),
        "datetime_complete": when(t.datetime_complete),
        **record.status_attrs(),
        "retry_of": record.retry_of,
    }


def describe_best(study_name: str, storage: optuna.storages.BaseStorage) -> str:
    """A few lines on a study's best trial: value, name, epochs and params."""
    study = _load(study_name, storage)
    best = progress(study).best
    if best is None:
        return f"study {study_name!r} has no completed trial yet"
    metric = StudyRecord.of(study).metric or "value"
    record = TrialRecord.of(best)
    lines = [
        f"best trial of {study_name!r}: #{best.number}"
        + (f" ({record.baseline})" if record.baseline is not None else "")
        + (f", from the {record.origin}" if record.origin is not None else ""),
        f"  {metric} {best.value:.4f} at epoch {_or(record.best_epoch, '?')}"
        f" of {_or(record.epochs, '?')}, {_or(record.n_params, '?')}"
        f" parameters, {_or(record.seconds, '?')} s"
        + (
            f" ({deadline_note(record.stopped_at_deadline)})"
            if record.stopped_at_deadline is not None
            else ""
        ),
        "  params: " + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()),
    ]
    return "\n".join(lines)


def _load(study_name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    return open_study(study_name, storage)


def trial_note(t: FrozenTrial) -> str:
    """A trial's baseline name, whether it retries another, where it runs, why it failed."""
    record = TrialRecord.of(t)
    notes = []
    if record.baseline is not None:
        notes.append(record.baseline)
    if record.retry_of is not None:
        resumed = record.resumed_from
        went_on = (
            f" from #{resumed.trial}'s epoch {resumed.epoch}"
            if resumed is not None and resumed.trial is not None
            else ""
        )
        notes.append(f"retry of #{record.retry_of}{went_on}")
    if t.state == TrialState.RUNNING and record.worker is not None:
        # host:pid, and the SLURM array task (the %A_%a of its log) where there is one.
        notes.append(f"on {record.worker}")
    if t.state == TrialState.FAIL:
        notes.append(_or(record.fail_reason, "worker stopped heartbeating"))
    if record.pruned_reason is not None:
        notes.append(record.pruned_reason)
    if record.stopped_at_deadline is not None:
        notes.append(deadline_note(record.stopped_at_deadline))
    elif record.plan_note is not None:
        notes.append(record.plan_note)
    return "; ".join(notes)


def deadline_note(stopped: StoppedAtDeadline) -> str:
    """ "stopped at the deadline after 8 of 10 epochs" (its best epoch is its value)."""
    return f"stopped at the deadline after {stopped.epochs} of {stopped.planned} epochs"


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
