"""One trial: per-epoch reports through the pruner, recorded history, NaN handling."""

from __future__ import annotations

import math

import optuna
import pytest
import toy_spaces
from conftest import study_toml

from search.config import from_dict
from search.objective import Objective, PruningReporter
from search.record import FailureKind, TrialRecord
from search.training import Horizon, fit, learning_rate_callbacks
from spaces import dense

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _config(**keys):
    import tomllib

    return from_dict(tomllib.loads(study_toml(**keys)), source="test")


def test_reporter_reports_every_epoch_and_records_history(small_data):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    config = dense.suggest(optuna.trial.FixedTrial(dense.BASELINES["model_0"]))
    model = dense.build(config, small_data.input_shape, small_data.num_classes)
    reporter = PruningReporter(trial, "val_accuracy", Horizon(3), "maximize", lambda _: None)
    fit(model, config, small_data, epochs=3, callbacks=[reporter])
    frozen = study._storage.get_trial(trial._trial_id)
    # One report per epoch, steps counting epochs from 1.
    assert sorted(frozen.intermediate_values) == [1, 2, 3]
    history = TrialRecord.of(frozen).history
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history["val_accuracy"] == [frozen.intermediate_values[s] for s in (1, 2, 3)]


def test_reporter_prunes_when_the_pruner_says_so(small_data):
    # Nothing reaches 100% validation accuracy, so this pruner prunes after the first epoch.
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.0)
    )
    trial = study.ask()
    config = dense.suggest(optuna.trial.FixedTrial(dense.BASELINES["model_0"]))
    model = dense.build(config, small_data.input_shape, small_data.num_classes)
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1"):
        reporter = PruningReporter(trial, "val_accuracy", Horizon(5), "maximize", lambda _: None)
        fit(model, config, small_data, epochs=5, callbacks=[reporter])


def test_objective_records_the_trial_and_returns_the_best_epoch(small_data):
    config = _config(max_epochs=3)
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(config, dense, small_data), n_trials=1)
    t = study.trials[0]
    record = TrialRecord.of(t)
    assert t.state == optuna.trial.TrialState.COMPLETE
    curve = record.history["val_accuracy"]
    assert t.value == max(curve)
    assert record.best_epoch == curve.index(max(curve)) + 1
    assert record.epochs == 3 and record.seconds > 0
    assert (
        record.n_params
        == dense.build(
            dense.suggest(optuna.trial.FixedTrial(t.params)), (28, 28, 1), 10
        ).count_params()
    )
    assert record.seed == config.study.seed + t.number


def test_nan_loss_fails_the_trial_with_a_reason_and_the_worker_goes_on(small_data):
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(_config(max_epochs=2), toy_spaces, small_data), n_trials=2)
    first, second = study.trials
    assert first.state == optuna.trial.TrialState.FAIL
    record = TrialRecord.of(first)
    assert "not finite" in record.fail_reason and record.failure == FailureKind.DIVERGED
    assert second.state == optuna.trial.TrialState.COMPLETE


def test_step_decay_counts_from_the_initial_rate():
    # model_d: 0.001 for epochs 1-10, 0.0001 for 11-20, 0.00001 for 21-30.
    (scheduler,) = learning_rate_callbacks(
        {"learning_rate": 1e-3, "schedule": {"name": "step", "every": 10, "factor": 0.1}},
        schedule_epochs=30,
    )
    rates = [scheduler.schedule(epoch, 123.0) for epoch in range(30)]
    assert rates[:10] == [1e-3] * 10
    assert all(math.isclose(r, 1e-4) for r in rates[10:20])
    assert all(math.isclose(r, 1e-5) for r in rates[20:])


def test_cosine_follows_the_schedule_horizon_not_the_epochs_trained():
    (scheduler,) = learning_rate_callbacks(
        {"learning_rate": 1e-2, "schedule": {"name": "cosine"}}, schedule_epochs=10
    )
    assert scheduler.schedule(0, 0.0) == pytest.approx(1e-2)
    assert scheduler.schedule(5, 0.0) == pytest.approx(5e-3)


def test_warmup_cosine_rises_to_the_rate_then_decays_to_zero():
    (scheduler,) = learning_rate_callbacks(
        {"learning_rate": 1e-2, "schedule": {"name": "warmup_cosine", "warmup": 2}},
        schedule_epochs=12,
    )
    rates = [scheduler.schedule(epoch, 0.0) for epoch in range(12)]
    assert rates[0] < rates[1] < rates[2] == pytest.approx(1e-2)
    assert all(a > b for a, b in zip(rates[2:], rates[3:], strict=False))
    assert rates[7] == pytest.approx(5e-3)


def test_one_cycle_goes_up_to_the_rate_by_its_peak_and_down_to_a_hundredth():
    (scheduler,) = learning_rate_callbacks(
        {"learning_rate": 1e-2, "schedule": {"name": "one_cycle", "peak": 0.3}},
        schedule_epochs=10,
    )
    rates = [scheduler.schedule(epoch, 0.0) for epoch in range(11)]
    assert rates[0] == pytest.approx(1e-3)
    assert max(rates) == pytest.approx(1e-2) == rates[3]
    assert rates[10] == pytest.approx(1e-4)


def test_unknown_schedule_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match="schedule is 'linear'.*warmup_cosine, one_cycle"):
        learning_rate_callbacks(
            {"learning_rate": 1e-2, "schedule": {"name": "linear"}}, schedule_epochs=10
        )


@pytest.mark.parametrize(
    "schedule",
    [
        {"name": "cosine"},
        {"name": "warmup_cosine", "warmup": 1},
        {"name": "one_cycle", "peak": 0.3},
        {"name": "step", "every": 2, "factor": 0.5},
    ],
)
def test_a_horizon_planned_after_the_first_epoch_keeps_that_epochs_rate(schedule):
    # A trial sizes its epochs after the first (search.pacing): the first epoch's rate must
    # not depend on the plan, and the rest must follow a schedule made for the plan.
    config = {"learning_rate": 1e-2, "schedule": schedule}
    horizon = Horizon(100, planned=False)
    (sized,) = learning_rate_callbacks(config, schedule_epochs=horizon)
    first = sized.schedule(0, 0.0)
    horizon.epochs = 4
    (planned,) = learning_rate_callbacks(config, schedule_epochs=4)
    assert first == planned.schedule(0, 0.0)
    assert [sized.schedule(e, 0.0) for e in range(4)] == [
        planned.schedule(e, 0.0) for e in range(4)
    ]
