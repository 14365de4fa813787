"""Studies in a storage: created once from a validated definition, loaded by name anywhere.

A study records its definition (space, data, budget, sampler, pruner) in its user
attributes, so a worker on another machine needs only the study name and the storage URL,
and the dashboard alone tells what a study is.
"""

from __future__ import annotations

import time
import warnings
from types import ModuleType

import numpy as np
import optuna

from search import __version__
from search.budget import BUDGET_KEYS
from search.config import ConfigError, StudyConfig, from_dict, with_legacy_defaults
from search.prior import (
    BASELINE,
    EXPORT,
    PRIOR_CENTRE,
    PriorError,
    PriorSampler,
    resolve_prior,
)
from search.record import (
    StudyRecord,
    queued_attrs,
    write_definition,
    write_description,
)


class StudyError(ValueError):
    """A study that is missing, or does not match the definition given for it."""


# TPE's random start-up: a judgement for studies of 15-60 trials (Optuna's default is 10).
N_STARTUP_TRIALS = 8


def worker_seed(study_seed: int, worker_index: int) -> int:
    """A worker's sampler seed, from both numbers.

    Not their sum: with it, worker 1 of the study with seed s drew what worker 0 of the
    study with seed s + 1 drew, and studies meant as independent repeats shared draws.
    """
    return int(np.random.SeedSequence([study_seed, worker_index]).generate_state(1)[0])


def make_sampler(
    config: StudyConfig, *, worker_index: int, space: ModuleType | None = None
) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded per worker so parallel workers don't repeat each other.

    Args:
        space: the space module whose prior the sampler reads (default: the study's, by name).
    """
    seed = worker_seed(config.study.seed, worker_index)
    if config.trials.sampler == "random":
        base: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        # constant_liar: a running trial counts as a poor result, steering others
        # elsewhere; multivariate with groups models params jointly, conditional ones too.
        with warnings.catch_warnings():
            # multivariate and group are marked experimental; we rely on them knowingly.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            base = optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=N_STARTUP_TRIALS,
                multivariate=True,
                group=True,
                constant_liar=True,
            )
    prior, _ = study_prior(config, space=space) if config.trials.prior else (None, None)
    if prior is None:
        return base
    return PriorSampler(prior, base=base, n_startup_trials=N_STARTUP_TRIALS, seed=seed)


def study_prior(
    config: StudyConfig, *, space: ModuleType | None = None
) -> tuple[dict | None, dict | None]:
    """The study's prior (the space's, with its [prior] centres) and its centre's params.

    Both None where the space declares no prior.

    Args:
        space: the space module (default: the study's, by name); a simulation passes a
            module that has `suggest` and `PRIOR` but no model to build.
    """
    from spaces import load_space

    if space is None:
        space = load_space(config.study.space)
    try:
        return resolve_prior(space, config.prior, source=f"study {config.name!r}")
    except PriorError as e:
        raise ConfigError(str(e)) from None


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """The study's pruner; its resource is the number of epochs trained."""
    trials = config.trials
    if trials.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=trials.min_epochs, max_resource=trials.max_epochs, reduction_factor=3
        )
    if trials.pruner == "successive_halving":
        # One asynchronous bracket: every trial competes with every other, so the sampler
        # learns from all of them (Hyperband shows each sampler only its bracket's trials).
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=trials.min_epochs, reduction_factor=3
        )
    if trials.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def create_study(
    config: StudyConfig,
    storage: optuna.storages.BaseStorage,
    baselines: dict[str, dict],
    *,
    prior_centre: dict | None = None,
    space: ModuleType | None = None,
) -> tuple[optuna.Study, bool]:
    """Create the study (or check an existing one against `config`).

    The prior's centre (params) becomes the first trial; `baselines` maps a baseline name
    to its params, enqueued next if the definition asks for it. Both are queued once,
    when the study is created. Returns the study and whether it was created now. A
    changed budget is recorded; any other difference is an error. `space` is the space
    module the study's description reads its prior from (default: the study's, by name).
    """
    try:
        study = optuna.create_study(
            study_name=config.name,
            storage=storage,
            direction=config.direction,
            load_if_exists=False,
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=config.name, storage=storage)
        _check_same_study(study, config)
        write_definition(study, config.to_dict())
        return study, False
    if prior_centre is not None:
        study.enqueue_trial(prior_centre, user_attrs=queued_attrs(PRIOR_CENTRE))
    if config.trials.enqueue_baselines:
        for name, params in baselines.items():
            study.enqueue_trial(params, user_attrs=queued_attrs(BASELINE, baseline=name))
    # The dashboard then labels the value "val_accuracy", not "Objective 0".
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([config.study.metric])
    write_description(
        study,
        space=config.study.space,
        dataset=config.data.dataset,
        metric=config.study.metric,
        sampler=_describe_sampler(config, space),
        pruner=_describe_pruner(config),
        version=__version__,
    )
    # Written last: a worker that sees the definition sees a complete study.
    write_definition(study, config.to_dict())
    return study, True


def enqueue_exported(study: optuna.Study, params_by_source: dict[str, dict]) -> int:
    """Queue exported trials' params, each once; returns how many were queued now.

    `params_by_source` maps "FILE#NUMBER" to params (`search.export.exported_params`); the
    source is recorded in the trial's `enqueued_from`. Params already in the study (queued
    by an earlier run, or a trial it ran) are skipped, so repeating a command is harmless.
    """
    before = len(study.get_trials(deepcopy=False))
    for source, params in params_by_source.items():
        study.enqueue_trial(
            params, user_attrs=queued_attrs(EXPORT, enqueued_from=source), skip_if_exists=True
        )
    return len(study.get_trials(deepcopy=False)) - before


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """The names of a storage's studies, oldest first."""
    return optuna.get_all_study_names(storage)


def open_study(study_name: str, storage: optuna.storages.BaseStorage, **kwargs) -> optuna.Study:
    """Load a study by name (keyword arguments go to `optuna.load_study`).

    Raises:
        StudyError: no such study; the message lists the storage's studies.
    """
    try:
        return optuna.load_study(study_name=study_name, storage=storage, **kwargs)
    except KeyError:
        names = study_names(storage)
        raise StudyError(
            f"no study named {study_name!r} in this storage; studies: {names or 'none'}"
        ) from None


def load_definition(
    study_name: str, storage: optuna.storages.BaseStorage, *, wait_seconds: float = 30
) -> StudyConfig:
    """The definition a study was created with, waiting briefly for one being created."""
    deadline = time.monotonic() + wait_seconds
    while True:
        study = open_study(study_name, storage)
        definition = StudyRecord.of(study).definition
        if definition is not None:
            try:
                return from_dict(
                    with_legacy_defaults(definition), source=f"study {study_name!r} in the storage"
                )
            except ConfigError as e:
                raise StudyError(str(e)) from None
        if time.monotonic() > deadline:
            raise StudyError(
                f"study {study_name!r} has no recorded definition; it was not created by"
                " `search create` or `search run`"
            )
        time.sleep(1)


def _check_same_study(study: optuna.Study, config: StudyConfig) -> None:
    stored = StudyRecord.of(study).definition
    if stored is None:
        raise StudyError(
            f"study {config.name!r} exists but was not created by search (no definition);"
            " pick another [study] name"
        )
    stored = with_legacy_defaults(stored)
    new = config.to_dict()
    for section, table in new.items():
        keys = list(table)
        if section in ("space", "prior"):
            # Free-form tables: a key dropped from the file changes the study too.
            keys += [k for k in stored.get(section, {}) if k not in table]
        for key in keys:
            value = table.get(key)
            old = stored.get(section, {}).get(key)
            if key not in BUDGET_KEYS and old != value:
                raise StudyError(
                    f"study {config.name!r} exists with [{section}] {key} = {old!r}, but the"
                    f" definition now says {value!r}; only the budget ({', '.join(BUDGET_KEYS)})"
                    " may change: pick a new [study] name for a different study"
                )


def _describe_sampler(config: StudyConfig, space: ModuleType | None) -> str:
    seed = f"seed={config.study.seed} + worker index"
    if config.trials.sampler == "random":
        base = f"RandomSampler({seed})"
    else:
        base = (
            f"TPESampler({seed}, n_startup_trials={N_STARTUP_TRIALS}, multivariate=True,"
            " group=True, constant_liar=True)"
        )
    if not config.trials.prior or study_prior(config, space=space)[0] is None:
        return base
    centres = f", [prior] {config.prior}" if config.prior else ""
    return f"PriorSampler(the space's prior{centres}, base={base})"


def _describe_pruner(config: StudyConfig) -> str:
    trials = config.trials
    return {
        "hyperband": (
            f"HyperbandPruner(min_resource={trials.min_epochs},"
            f" max_resource={trials.max_epochs}, reduction_factor=3)"
        ),
        "successive_halving": (
            f"SuccessiveHalvingPruner(min_resource={trials.min_epochs}, reduction_factor=3)"
        ),
        "median": "MedianPruner(n_startup_trials=5, n_warmup_steps=1)",
        "none": "NopPruner()",
    }[trials.pruner]
