"""Exports: a study's best trials as a JSON bundle that stands without the storage.

A bundle holds the study's definition (space, data, seeds, budget) and, per trial, its
flat params, their distributions, the structured config the space builds, its seed and
thread count, best epoch and history: enough to read it, rebuild it and retrain it
(`search.retrain`) on another machine. Every artifact made from it carries it.
"""

from __future__ import annotations

import json
import math
import platform
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search import __version__
from search.budget import progress
from search.config import ConfigError, StudyConfig, from_dict
from search.ranking import ranked_trials
from search.record import StudyRecord, TrialRecord
from search.study import load_definition
from spaces import SpaceError, load_space

FORMAT = "search-export/1"
# Per exported trial: key -> the type it must have in a file that `search retrain` reads.
_ENTRY_TYPES: dict[str, type] = {
    "rank": int,
    "number": int,
    "value": float,
    "params": dict,
    "config": dict,
    "best_epoch": int,
    "epochs": int,
    "seed": int,
    "history": dict,
}


class ExportError(ValueError):
    """A study that has nothing to export, or an export file that cannot be used."""


@dataclass(frozen=True)
class Export:
    """A validated export file: its bundle and the study definition inside it."""

    path: Path
    bundle: dict[str, Any]
    definition: StudyConfig

    def entry(self, number: int | None = None) -> dict[str, Any]:
        """The exported trial with this number; by default the best one."""
        trials = self.bundle["trials"]
        if number is None:
            return trials[0]
        for entry in trials:
            if entry["number"] == number:
                return entry
        numbers = [e["number"] for e in trials]
        raise ExportError(f"{self.path}: has no trial {number}; it exports trials {numbers}")

    def space(self) -> Any:
        """The space module the bundle names."""
        try:
            return load_space(self.definition.study.space)
        except SpaceError as e:
            raise ExportError(f"{self.path}: {e}") from None


def export_best(
    study_name: str, storage: optuna.storages.BaseStorage, *, top: int = 1
) -> dict[str, Any]:
    """The bundle of a study's `top` best COMPLETE trials, best first.

    Raises:
        StudyError: no such study, or one without a recorded definition.
        ExportError: the study has no completed trial.
    """
    definition = load_definition(study_name, storage, wait_seconds=0)
    study = optuna.load_study(study_name=study_name, storage=storage)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        line = progress(study).line(definition.trials.n_trials, definition.study.metric)
        raise ExportError(f"study {study_name!r} has no completed trial to export ({line})")
    ranked = ranked_trials(complete, definition.direction)
    space = load_space(definition.study.space)
    return {
        "format": FORMAT,
        "study": study_name,
        "metric": definition.study.metric,
        "direction": definition.direction,
        "definition": definition.to_dict(),
        # What a model's outputs mean, in order (recorded by the study's first worker).
        "class_names": StudyRecord.of(study).class_names,
        "versions": versions(),
        "trials": [
            _entry(trial, rank, definition, space)
            for rank, trial in enumerate(ranked[:top], start=1)
        ],
    }


def versions() -> dict[str, str]:
    """Versions of what trains and searches here: Python, TensorFlow, Keras, Optuna, search."""
    import keras
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "optuna": optuna.__version__,
        "search": __version__,
    }


def write_export(bundle: dict[str, Any], path: Path) -> None:
    """Write a bundle as indented JSON, creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bundle, indent=2) + "\n")


def read_export(path: str | Path) -> Export:
    """Read and check an export file; touches neither Keras nor a storage.

    Raises:
        ExportError: the file is missing, not JSON, not an export, or an entry lacks a key.
    """
    path = Path(path)
    try:
        bundle = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path}: no such export file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        found = bundle.get("format") if isinstance(bundle, dict) else type(bundle).__name__
        raise ExportError(
            f"{path}: not a search export (format is {found!r}, but must be {FORMAT!r});"
            " write one with `search export STUDY_NAME`"
        )
    try:
        definition = from_dict(bundle.get("definition") or {}, source=f"{path} definition")
    except ConfigError as e:
        raise ExportError(str(e)) from None
    trials = bundle.get("trials")
    if not isinstance(trials, list) or not trials:
        raise ExportError(f"{path}: trials must be a non-empty list of exported trials")
    for i, entry in enumerate(trials):
        _check_entry(path, i, entry)
    return Export(path, bundle, definition)


def exported_params(
    paths: Sequence[str | Path], config: StudyConfig, space: Any
) -> dict[str, dict[str, Any]]:
    """The params of every trial in these export files, checked against a study's space.

    Returns:
        "FILE#NUMBER" -> params, in file order and each file's order (best first).

    Raises:
        ExportError: a file is not a usable export, names another space, or holds params
            the space does not suggest or that lie outside its distributions.
    """
    params_by_source = {}
    for path in paths:
        export = read_export(path)
        exported_space = export.definition.study.space
        if exported_space != config.study.space:
            raise ExportError(
                f"{export.path}: exports trials of the {exported_space!r} space, but study"
                f" {config.name!r} searches the {config.study.space!r} space"
            )
        for entry in export.bundle["trials"]:
            _check_params(export.path, entry, space, config.study.space)
            params_by_source[f"{export.path}#{entry['number']}"] = entry["params"]
    return params_by_source


def _check_params(path: Path, entry: dict[str, Any], space: Any, space_name: str) -> None:
    """The space suggests exactly these params, each inside its distribution."""
    trial = optuna.trial.FixedTrial(entry["params"])
    try:
        # FixedTrial only warns about a value outside its distribution; an enqueued trial
        # would run it anyway, so here it is an error.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            space.suggest(trial)
    except (KeyError, TypeError, ValueError, Warning) as e:
        raise ExportError(
            f"{path}: trial {entry['number']}: the {space_name!r} space does not accept its"
            f" params ({e})"
        ) from None
    unused = sorted(set(entry["params"]) - set(trial.params))
    if unused:
        raise ExportError(
            f"{path}: trial {entry['number']}: the {space_name!r} space does not suggest its"
            f" params {unused}"
        )


def _entry(
    trial: optuna.trial.FrozenTrial, rank: int, definition: StudyConfig, space: Any
) -> dict[str, Any]:
    record = TrialRecord.of(trial)
    try:
        suggested = space.suggest(optuna.trial.FixedTrial(trial.params))
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(
            f"trial {trial.number}: the {definition.study.space!r} space no longer turns its"
            f" params into a config ({e})"
        ) from None
    config = definition.space_config(space, suggested)
    return {
        "rank": rank,
        "number": trial.number,
        "baseline": record.baseline,
        "origin": record.origin,
        "value": trial.value,
        "best_epoch": record.best_epoch,
        "epochs": record.epochs,
        "seed": definition.study.seed + trial.number if record.seed is None else record.seed,
        "threads": record.threads,
        "n_params": record.n_params,
        "seconds": record.seconds,
        # The epochs its schedule spanned (retraining follows it), and how far the run's
        # deadline let it get, if it stopped it.
        "planned_epochs": record.planned_epochs,
        "stopped_at_deadline": None
        if record.stopped_at_deadline is None
        else asdict(record.stopped_at_deadline),
        "warning": record.warning,
        "params": trial.params,
        "distributions": {
            name: json.loads(optuna.distributions.distribution_to_json(d))
            for name, d in trial.distributions.items()
        },
        "config": config,
        "history": record.history,
    }


def _check_entry(path: Path, i: int, entry: Any) -> None:
    if not isinstance(entry, dict):
        raise ExportError(f"{path}: trials[{i}] must be an object")
    for key, expected in _ENTRY_TYPES.items():
        value = entry.get(key)
        # An integer is a fine float; true and false are not numbers here.
        ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
        if not ok or isinstance(value, bool):
            raise ExportError(
                f"{path}: trials[{i}] {key} is {value!r}, but must be {expected.__name__}"
            )
    reevaluation = entry.get("reevaluation")
    if reevaluation is not None and not (
        isinstance(reevaluation, dict)
        and isinstance(reevaluation.get("val_accuracy"), list)
        and all(isinstance(reevaluation.get(key), float) for key in ("mean", "std"))
    ):
        raise ExportError(
            f"{path}: trials[{i}] reevaluation must be an object with a val_accuracy list"
            " and float mean and std"
        )
    threads = entry.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)):
        raise ExportError(f"{path}: trials[{i}] threads is {threads!r}, but must be int or null")
    if entry["best_epoch"] < 1 or not math.isfinite(entry["value"]):
        raise ExportError(
            f"{path}: trials[{i}] has best_epoch {entry['best_epoch']} and value"
            f" {entry['value']}; it must be a finished trial (best_epoch >= 1, finite value)"
        )
