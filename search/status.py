"""Text views of a storage: its studies, one study's trials and its best trial."""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.budget import DEADLINE_ATTR, PLAN_NOTE_ATTR, progress
from search.progress import epochs_text
from search.study import open_study, study_names

# The trial attributes `search status --format json` gives besides Optuna's own fields.
JSON_ATTRS = (
    "origin",
    "resumed_from",
    "restarted",
    "epochs_trained",
    "baseline",
    "epochs",
    "best_epoch",
    "seconds",
    "n_params",
    "seed",
    "worker",
    "fail_reason",
    "pruned_reason",
    "planned_epochs",
    "plan_note",
    "stopped_at_deadline",
    "warning",
)


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
            definition = study.user_attrs.get("definition", {})
            n_trials = definition.get("trials", {}).get("n_trials", "?")
            metric = definition.get("study", {}).get("metric", "value")
            print(f"{name}: {progress(study).line(n_trials, metric)}")
        return
    study = _load(study_name, storage)
    max_epochs = study.user_attrs.get("definition", {}).get("trials", {}).get("max_epochs")
    print(
        f"{'trial':>5}  {'state':<8} {'value':>8} {'epochs':>6} {'seconds':>8}"
        f"  {'origin':<15} name / note"
    )
    for t in study.get_trials(deepcopy=False):
        value = f"{t.value:.4f}" if t.value is not None else "-"
        # A running trial's epochs so far, of those it planned (its history grows per epoch).
        epochs = (
            epochs_text(t, max_epochs)
            if t.state == TrialState.RUNNING
            else t.user_attrs.get("epochs", "-")
        )
        print(
            f"{t.number:>5}  {t.state.name:<8} {value:>8} {epochs:>6}"
            f" {t.user_attrs.get('seconds', '-'):>8}  {t.user_attrs.get('origin', '-'):<15}"
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
    definition = study.user_attrs.get("definition", {})
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

    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "value": t.value,
        "params": t.params,
        "datetime_start": when(t.datetime_start),
        "datetime_complete": when(t.datetime_complete),
        **{key: t.user_attrs[key] for key in JSON_ATTRS if key in t.user_attrs},
        "retry_of": t.system_attrs.get("failed_trial"),
    }


def describe_best(study_name: str, storage: optuna.storages.BaseStorage) -> str:
    """A few lines on a study's best trial: value, name, epochs and params."""
    study = _load(study_name, storage)
    best = progress(study).best
    if best is None:
        return f"study {study_name!r} has no completed trial yet"
    metric = study.user_attrs.get("metric", "value")
    lines = [
        f"best trial of {study_name!r}: #{best.number}"
        + (f" ({best.user_attrs['baseline']})" if "baseline" in best.user_attrs else "")
        + (f", from the {best.user_attrs['origin']}" if "origin" in best.user_attrs else ""),
        f"  {metric} {best.value:.4f} at epoch {best.user_attrs.get('best_epoch', '?')}"
        f" of {best.user_attrs.get('epochs', '?')}, {best.user_attrs.get('n_params', '?')}"
        f" parameters, {best.user_attrs.get('seconds', '?')} s"
        + (
            f" ({deadline_note(best.user_attrs[DEADLINE_ATTR])})"
            if DEADLINE_ATTR in best.user_attrs
            else ""
        ),
        "  params: " + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()),
    ]
    return "\n".join(lines)


def _load(study_name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    return open_study(study_name, storage)


def trial_note(t: FrozenTrial) -> str:
    """A trial's baseline name, whether it retries another, where it runs, why it failed."""
    notes = []
    if "baseline" in t.user_attrs:
        notes.append(t.user_attrs["baseline"])
    if "failed_trial" in t.system_attrs:
        resumed = t.user_attrs.get("resumed_from") or {}
        went_on = (
            f" from #{resumed['trial']}'s epoch {resumed['epoch']}"
            if resumed.get("trial") is not None
            else ""
        )
        notes.append(f"retry of #{t.system_attrs['failed_trial']}{went_on}")
    if t.state == TrialState.RUNNING and "worker" in t.user_attrs:
        # host:pid, and the SLURM array task (the %A_%a of its log) where there is one.
        notes.append(f"on {t.user_attrs['worker']}")
    if t.state == TrialState.FAIL:
        notes.append(t.user_attrs.get("fail_reason", "worker stopped heartbeating"))
    if "pruned_reason" in t.user_attrs:
        notes.append(t.user_attrs["pruned_reason"])
    if DEADLINE_ATTR in t.user_attrs:
        notes.append(deadline_note(t.user_attrs[DEADLINE_ATTR]))
    elif PLAN_NOTE_ATTR in t.user_attrs:
        notes.append(t.user_attrs[PLAN_NOTE_ATTR])
    return "; ".join(notes)


def deadline_note(stopped: dict[str, int]) -> str:
    """ "stopped at the deadline after 8 of 10 epochs" (its best epoch is its value)."""
    return f"stopped at the deadline after {stopped['epochs']} of {stopped['planned']} epochs"


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
