"""The contestants: how each builds its workers' study objects for one task and seed.

`service` is this project's strategy as `studies/conv.toml` ships it: its [trials] sampler,
pruner and prior are read from the file, turned into a `StudyConfig` for the LCBench space,
and the study and its workers are made by the project's own code (`search.study`:
`create_study` enqueues the prior's centre, `make_sampler` and `make_pruner` as
`search worker` calls them). The other Optuna contestants use Optuna's samplers with their
default settings; every pruner judges at the same epochs as the service's (its first rung,
`min_epochs`, and a reduction factor of 3), so contestants differ in how they choose and
schedule configs, not in where they judge them. DEHB runs in its own environment
(`benchmarks.lcbench.dehb_run`).
"""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path
from typing import Any

import optuna

from benchmarks.lcbench import space
from benchmarks.lcbench.surrogate import MAX_EPOCHS
from search.config import StudyConfig, from_dict
from search.study import create_study, make_pruner, make_sampler, study_prior, worker_seed

STUDY_FILE = Path(__file__).parents[2] / "studies" / "conv.toml"
# What makes the service's strategy, taken from its study file; the rest is the LCBench task.
STRATEGY_KEYS = ("sampler", "pruner", "prior", "min_epochs")
STUDY_NAME = "lcbench"

# name -> what it runs, for the report.
CONTESTANTS: dict[str, str] = {
    "service": "this service: studies/conv.toml's sampler, pruner and prior (search.study)",
    "tpe-hyperband": "Optuna's TPESampler (defaults) + HyperbandPruner",
    "tpe-sh": "Optuna's TPESampler (defaults) + SuccessiveHalvingPruner",
    "random-sh": "RandomSampler + SuccessiveHalvingPruner (ASHA)",
    "random": "RandomSampler, no pruning",
    "dehb": "DEHB (Awad et al., 2021; PyPI dehb) in its own environment",
}
# Only these read the prior; the others' runs are the same under every prior.
USES_PRIOR = ("service",)
OPTUNA_CONTESTANTS = ("service", "tpe-hyperband", "tpe-sh", "random-sh", "random")


def service_config(*, seed: int, prior: dict[str, Any] | None) -> StudyConfig:
    """The service's study for LCBench: conv.toml's strategy, `prior` as its [prior] table.

    `prior` None runs without a prior (`[trials] prior = false`).
    """
    shipped = tomllib.loads(STUDY_FILE.read_text())["trials"]
    trials = {key: shipped[key] for key in STRATEGY_KEYS if key in shipped}
    trials |= {"n_trials": 1_000_000, "max_epochs": MAX_EPOCHS}
    raw: dict[str, Any] = {
        "study": {"name": STUDY_NAME, "space": "lcbench", "seed": seed},
        "trials": trials,
    }
    if prior is None:
        trials["prior"] = False
    elif trials.get("prior", True):
        raw["prior"] = prior
    return from_dict(raw, source=f"{STUDY_FILE}'s strategy on LCBench")


def worker_studies(
    name: str, *, seed: int, prior: dict[str, Any] | None, n_workers: int
) -> list[optuna.Study]:
    """One study object per worker, on one new in-memory storage, as `search worker` loads it.

    Raises:
        ValueError: `name` is not an Optuna contestant.
    """
    storage = optuna.storages.InMemoryStorage()
    config = service_config(seed=seed, prior=prior if name in USES_PRIOR else None)
    if name == "service":
        centre = study_prior(config, space=space)[1] if config.trials.prior else None
        create_study(config, storage, {}, prior_centre=centre, space=space)
        return [
            optuna.load_study(
                study_name=STUDY_NAME,
                storage=storage,
                sampler=make_sampler(config, worker_index=i, space=space),
                pruner=make_pruner(config),
            )
            for i in range(n_workers)
        ]
    if name not in OPTUNA_CONTESTANTS:
        raise ValueError(f"contestant is {name!r}, but must be one of {OPTUNA_CONTESTANTS}")
    optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize")
    return [
        optuna.load_study(
            study_name=STUDY_NAME,
            storage=storage,
            sampler=_sampler(name, worker_seed(seed, i)),
            pruner=_pruner(name, min_epochs=config.trials.min_epochs),
        )
        for i in range(n_workers)
    ]


def _sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name.startswith("tpe"):
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(name: str, *, min_epochs: int) -> optuna.pruners.BasePruner:
    if name.endswith("hyperband"):
        return optuna.pruners.HyperbandPruner(
            min_resource=min_epochs, max_resource=MAX_EPOCHS, reduction_factor=3
        )
    if name.endswith("-sh"):
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def quiet() -> None:
    """Optuna's per-trial log lines and experimental-feature warnings off, in this process."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
