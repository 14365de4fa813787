"""The search core through Optuna's public API, without training: pruner, sampler, prior."""

from __future__ import annotations

import tomllib

import optuna
import pytest
from conftest import study_toml
from optuna.trial import TrialState

from search.budget import progress
from search.config import from_dict, with_legacy_defaults
from search.prior import (
    MUTATION,
    PRIOR_CENTRE,
    PRIOR_SAMPLE,
    SAMPLER,
    PriorSampler,
    best_so_far,
    resolve_prior,
)
from search.record import TrialRecord, write_definition
from search.study import create_study, make_pruner, make_sampler, study_prior
from spaces import conv

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _config(**keys):
    return from_dict(tomllib.loads(study_toml(space="conv", **keys)), source="test")


def _create(config, *, direction=None):
    storage = optuna.storages.InMemoryStorage()
    centre = study_prior(config)[1] if config.trials.prior else None
    study, created = create_study(config, storage, {}, prior_centre=centre)
    assert created
    return optuna.load_study(
        study_name=config.name,
        storage=storage,
        sampler=make_sampler(config, worker_index=0),
        pruner=make_pruner(config),
    )


def _report(study, trial, values):
    # As the objective does: report each epoch, then ask the pruner (which records rungs).
    for epoch, value in enumerate(values, start=1):
        trial.report(value, step=epoch)
        trial.should_prune()


def test_successive_halving_judges_trials_at_epochs_of_its_first_rung():
    # 20 epochs: the first rung at ceil(20 / 9) = 3 epochs, the next at 9.
    config = _config(pruner="successive_halving", max_epochs=20, prior=False)
    assert config.trials.min_epochs == 3
    study = optuna.create_study(direction="maximize", pruner=make_pruner(config))
    for value in (0.9, 0.91, 0.92):
        strong = study.ask()
        _report(study, strong, [value] * 3)
        study.tell(strong, value)
    weak = study.ask()
    # Steps are epochs: before epoch 3 nothing is judged, however bad...
    for epoch in (1, 2):
        weak.report(0.1, step=epoch)
        assert not weak.should_prune()
    # ...and at epoch 3, the first rung, a trial below the top third is pruned.
    weak.report(0.1, step=3)
    assert weak.should_prune()


def test_a_study_sees_every_finished_trial_under_successive_halving():
    seen = []

    class Recording(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):
            seen.append(len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))))
            return super().sample_independent(study, trial, name, distribution)

    config = _config(pruner="successive_halving", max_epochs=20)
    study = optuna.create_study(sampler=Recording(seed=0), pruner=make_pruner(config))
    for i in range(12):
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
        # The sampler of trial i saw all i trials before it (Hyperband shows each sampler
        # only its bracket's trials).
        assert seen[-1] == i


def test_the_first_trial_is_the_priors_centre():
    config = _config()
    study = _create(config)
    trial = study.ask()
    _, centre = resolve_prior(conv, {}, source="test")
    conv.suggest(trial)
    assert trial.params == centre
    assert TrialRecord.of(study.trials[0]).origin == PRIOR_CENTRE


def test_prior_centres_from_the_study_replace_the_spaces():
    config = _config(prior_table={"learning_rate": 3e-3, "n_blocks": 2})
    study = _create(config)
    trial = study.ask()
    conv.suggest(trial)
    assert trial.params["learning_rate"] == 3e-3 and trial.params["n_blocks"] == 2
    # Only the params the centre's config draws: no third block.
    assert "filters_b2" not in trial.params


def test_prior_off_queues_no_centre_and_samples_with_the_plain_sampler():
    config = _config(prior=False)
    study = _create(config)
    assert study.trials == []
    assert isinstance(study.sampler, optuna.samplers.TPESampler)


def test_later_trials_mix_prior_samples_mutations_and_the_sampler():
    config = _config(max_epochs=4)
    study = _create(config)
    assert isinstance(study.sampler, PriorSampler)
    origins = []
    for i in range(40):
        trial = study.ask()
        conv.suggest(trial)
        origins.append(study.sampler.origin(trial.number))
        _report(study, trial, [0.5 + 0.01 * (i % 7)] * 2)
        study.tell(trial, state=TrialState.PRUNED)
    # Trial 0 is the queued centre; after it, every origin occurs.
    assert {PRIOR_SAMPLE, MUTATION, SAMPLER} <= set(origins[1:])
    # Early on, while TPE is still random, the prior draws most trials.
    assert origins[1:9].count(PRIOR_SAMPLE) >= 4


def test_prior_samples_stay_near_the_centre():
    prior, _ = resolve_prior(conv, {}, source="test")
    sampler = PriorSampler(prior, base=optuna.samplers.RandomSampler(seed=0), n_startup_trials=8)
    study = optuna.create_study(sampler=sampler)
    rates, kernels = [], []
    for _ in range(60):
        trial = study.ask()
        config = conv.suggest(trial)
        if sampler.origin(trial.number) == PRIOR_SAMPLE and config["optimizer"] == "adam":
            rates.append(config["learning_rate"])
            kernels.append(config["kernel_size"])
        study.tell(trial, 0.5)
    # Learning rates of prior samples: centred at 1e-3 in log space, within 1e-4..1e-2.
    inside = [r for r in rates if 10**-3.5 <= r <= 10**-2.5]
    assert len(inside) >= 0.6 * len(rates) and all(1e-4 <= r <= 1e-2 for r in rates)
    # A choice keeps its centre most of the time (spread 0.1: 90%).
    assert kernels.count(3) >= 0.75 * len(kernels)


def test_two_workers_draw_different_points():
    config = _config()
    storage = optuna.storages.InMemoryStorage()
    create_study(config, storage, {}, prior_centre=study_prior(config)[1])
    workers = [
        optuna.load_study(
            study_name=config.name, storage=storage, sampler=make_sampler(config, worker_index=i)
        )
        for i in (0, 1)
    ]
    centre = workers[0].ask()
    conv.suggest(centre)
    first, second = workers[0].ask(), workers[1].ask()
    assert conv.suggest(first) != conv.suggest(second)


def test_studies_with_other_seeds_draw_other_points_in_every_worker():
    # Worker 1 of the study with seed 0 and worker 0 of the one with seed 1: once the same.
    draws = []
    for seed, worker in ((0, 1), (1, 0)):
        config = _config(seed=seed)
        storage = optuna.storages.InMemoryStorage()
        create_study(config, storage, {}, prior_centre=study_prior(config)[1])
        study = optuna.load_study(
            study_name=config.name,
            storage=storage,
            sampler=make_sampler(config, worker_index=worker),
        )
        centre = study.ask()  # the queued centre
        conv.suggest(centre)
        study.tell(centre, 0.9)
        draws.append(conv.suggest(study.ask()))
    assert draws[0] != draws[1]


def test_a_val_loss_study_is_minimized_everywhere():
    config = _config(metric="val_loss")
    assert config.direction == "minimize"
    study = _create(config)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    for loss in (0.5, 0.3, 0.4):
        trial = study.ask()
        conv.suggest(trial)
        _report(study, trial, [loss])
        study.tell(trial, loss)
    # The best trial, the incumbent that mutations start from: the lowest loss.
    assert progress(study).best.value == 0.3
    assert best_so_far(study.trials, study.direction).value == 0.3


def test_the_incumbent_is_the_trial_that_got_furthest():
    study = optuna.create_study(direction="maximize")
    short = study.ask()
    _report(study, short, [0.95])
    study.tell(short, state=TrialState.PRUNED)
    long = study.ask()
    _report(study, long, [0.5, 0.8, 0.9])
    # Pruned after epoch 1 at 0.95, or past three epochs at 0.9: the pruner kept the latter.
    assert best_so_far(study.trials, study.direction).number == long.number


def test_a_study_stored_before_priors_resumes_as_it_ran():
    # A definition stored before [trials] prior and min_epochs existed.
    stored = _config(pruner="hyperband").to_dict()
    del stored["trials"]["prior"], stored["trials"]["min_epochs"], stored["prior"]
    config = from_dict(with_legacy_defaults(stored), source="stored")
    assert config.trials.prior is False and config.trials.min_epochs == 1
    assert isinstance(make_sampler(config, worker_index=0), optuna.samplers.TPESampler)


def test_a_study_stored_with_heartbeat_settings_loads_and_resumes():
    # Definitions stored when heartbeats were study settings carry them; they are storage
    # options now, and such a study resumes from a study file without them.
    from search.study import load_definition

    storage = optuna.storages.InMemoryStorage()
    config = _config(prior=False)
    study, _ = create_study(config, storage, {})
    stored = config.to_dict()
    stored["trials"] |= {"heartbeat_interval": 10, "grace_period": 60}
    write_definition(study, stored)
    assert load_definition(config.name, storage) == config
    _, created = create_study(config, storage, {})
    assert created is False


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"lr": 0.1}, r"unknown key \[prior\] lr"),
        ({"learning_rate": 0.5}, r"\[prior\] learning_rate is 0.5, but must lie in .*0.0001"),
        ({"kernel_size": 4}, r"\[prior\] kernel_size is 4"),
    ],
)
def test_a_bad_prior_table_names_the_key(table, message):
    from search.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        study_prior(_config(prior_table=table))


def test_dropping_a_prior_centre_changes_the_study():
    from search.study import StudyError

    storage = optuna.storages.InMemoryStorage()
    with_centre = _config(prior_table={"learning_rate": 3e-3})
    create_study(with_centre, storage, {}, prior_centre=study_prior(with_centre)[1])
    # The same file without its [prior] table would search from another centre.
    with pytest.raises(StudyError, match=r"\[prior\] learning_rate = 0.003"):
        create_study(_config(), storage, {})
