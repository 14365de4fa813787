"""The LCBench benchmark: its surrogate, its simulation of real studies, a small run end to end."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import optuna
import pytest

from benchmarks.lcbench import fastmath, space
from benchmarks.lcbench.bench import DEHB_PYTHON, Settings, records_path, run_benchmark
from benchmarks.lcbench.contestants import service_config, worker_studies
from benchmarks.lcbench.report import summarize, write_report
from benchmarks.lcbench.simulate import Curve, simulate
from benchmarks.lcbench.surrogate import MAX_EPOCHS, Surrogate, hyperparameters
from search.objective import PruningReporter
from search.ranking import best_value
from search.study import create_study, make_pruner, make_sampler, study_prior
from search.training import Horizon

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A config off the prior's default centre, as the good and misleading priors are.
CENTRE = {
    "batch_size": 64,
    "learning_rate": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.001,
    "num_layers": 2,
    "max_units": 512,
    "max_dropout": 0.2,
}


def _toy_curve(config: dict) -> Curve:
    # Each config its own level and speed, rounded as the project's reporter rounds values.
    level = 0.5 + 0.4 * abs(math.sin(config["learning_rate"] * 100 + config["max_units"] / 97))
    rate = 2 + 10 * config["max_dropout"]
    epochs = np.arange(1, MAX_EPOCHS + 1)
    values = np.round(level * (1 - np.exp(-epochs / rate)), 6)
    return Curve(values=values, seconds=np.full(MAX_EPOCHS, config["batch_size"] / 100))


def _real_study(config, n_trials: int) -> optuna.Study:
    """A worker's study as `search run` makes it, trials run through the project's reporter."""
    storage = optuna.storages.InMemoryStorage()
    centre = study_prior(config, space=space)[1]
    create_study(config, storage, {}, prior_centre=centre, space=space)
    study = optuna.load_study(
        study_name=config.name,
        storage=storage,
        sampler=make_sampler(config, worker_index=0, space=space),
        pruner=make_pruner(config),
    )

    def objective(trial: optuna.Trial) -> float:
        # Keras' part of `fit` stood in for: one on_epoch_end per epoch of the curve.
        reporter = PruningReporter(
            trial, "val_accuracy", Horizon(MAX_EPOCHS), "maximize", lambda _: None
        )
        reporter.set_params({"epochs": MAX_EPOCHS})
        for epoch, value in enumerate(_toy_curve(space.suggest(trial)).values):
            reporter.on_epoch_end(epoch, {"val_accuracy": value, "loss": 1 - value})
        return best_value(reporter.history["val_accuracy"], study.direction)

    study.optimize(objective, n_trials=n_trials)
    return study


def _outcome(study: optuna.Study) -> list[tuple]:
    return [(t.params, t.state, t.intermediate_values, t.value) for t in study.trials]


def test_the_simulation_samples_and_prunes_as_a_real_study_does():
    config = service_config(seed=3, prior=CENTRE)
    # conv.toml's strategy: the test means something only while the service has a prior,
    # a model-based sampler and a pruner.
    assert (config.trials.sampler, config.trials.pruner, config.trials.prior) == (
        "tpe",
        "successive_halving",
        True,
    )
    # Past TPE's start-up (8 trials) and the prior's early mix.
    n_trials = 40
    real = _real_study(config, n_trials)
    studies = worker_studies("service", seed=3, prior=CENTRE, n_workers=1)
    simulate(studies, space.suggest, _toy_curve, max_epochs=MAX_EPOCHS, n_trials=n_trials)
    simulated = studies[0]
    # The same trials sampled, pruned at the same epochs, with the same values.
    assert _outcome(simulated) == _outcome(real)
    # The first trial is the prior's centre, as create_study enqueues it.
    assert simulated.trials[0].params == pytest.approx(CENTRE)
    states = [t.state for t in simulated.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 10
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 2


@pytest.mark.skipif(fastmath._library() is None, reason="no C compiler")
def test_the_compiled_tpe_functions_return_optunas_bits():
    from optuna.samplers._tpe import _erf, _truncnorm

    rng = np.random.default_rng(0)
    # Every branch: a > 6, -20 < a <= 6 (erf and erfc), the asymptotic series below -20.
    a = np.concatenate(
        [
            rng.uniform(-45, 45, 20_000),
            rng.normal(0, 3, 20_000),
            rng.uniform(-25, -15, 10_000),
            -np.exp(rng.uniform(0, 130, 2_000)),
            [np.nan, np.inf, -np.inf, 0.0, -0.0, 6.0, -20.0, 5e-324],
        ]
    )
    with np.errstate(invalid="ignore"):
        expected = _truncnorm._log_ndtr(a)
    got = fastmath.log_ndtr(a)
    assert got.shape == expected.shape
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan) and nan.sum() == 1
    assert np.array_equal(got[~nan].view(np.int64), expected[~nan].view(np.int64))
    assert fastmath.log_ndtr(a[:12].reshape(3, 4)).shape == (3, 4)
    # erf below the size where Optuna's own numpy port takes over: math.erf's bits.
    small = a[np.isfinite(a)][:1999].reshape(-1, 1)
    assert np.array_equal(fastmath.erf(small).view(np.int64), _erf.erf(small).view(np.int64))


def test_simulated_workers_share_the_time_and_stop_at_its_end():
    studies = worker_studies("random", seed=0, prior=None, n_workers=4)

    def one_second_epochs(config: dict) -> Curve:
        return Curve(values=[0.5] * MAX_EPOCHS, seconds=[1.0] * MAX_EPOCHS)

    run = simulate(studies, space.suggest, one_second_epochs, max_epochs=MAX_EPOCHS, seconds=60.5)
    # 4 workers, one epoch per second each: 60 seconds hold 240 epochs, 5 trials of 52
    # epochs (4 finished at 52 s, the next 4 started then).
    assert run.n_epochs == 240
    assert run.n_trials == 8
    assert len(studies[0].trials) == 8
    # The first epoch's value counts from the end of that epoch.
    assert run.best == [(1.0, 0.5)]


def test_the_surrogate_predicts_a_rising_curve_and_positive_costs():
    curves = Surrogate().curves("3945", [CENTRE])
    accuracy, seconds = curves.val_accuracy[0], curves.epoch_seconds[0]
    assert accuracy.shape == seconds.shape == (MAX_EPOCHS,)
    assert np.isfinite(accuracy).all() and np.isfinite(seconds).all()
    # Validation accuracy in percent, rising with training; every epoch costs time.
    assert 0 < accuracy[0] < accuracy[-1] <= 100
    assert (seconds > 0).all()


def test_the_space_searches_the_surrogates_ranges():
    trial = optuna.create_study().ask()
    space.suggest(trial)
    for name, h in hyperparameters().items():
        distribution = trial.distributions[name]
        assert distribution.low == pytest.approx(h["lower"])
        assert distribution.high == pytest.approx(h["upper"])
        assert distribution.log == h["log"]
        assert isinstance(distribution, optuna.distributions.IntDistribution) == (
            h["type"] == "uniform_int"
        )


def test_a_small_benchmark_records_every_run_and_a_rerun_skips_them(tmp_path):
    settings = Settings(
        out=tmp_path / "lcbench",
        tasks=("3945",),
        n_seeds=2,
        contestants=("service", "random"),
        budgets=(1, 3),
        n_reference=300,
        n_jobs=1,
    )
    lines: list[str] = []
    runs = run_benchmark(settings, log=lines.append)
    records = [json.loads(line) for line in _text(runs).splitlines()]
    # The service under each prior, random once for all priors; 2 seeds each.
    assert sorted((r["contestant"], r["prior"], r["seed"]) for r in records) == sorted(
        [("service", p, s) for p in ("none", "good", "misleading") for s in (0, 1)]
        + [("random", "any", s) for s in (0, 1)]
    )
    for r in records:
        times = [t for t, _ in r["best"]]
        assert times == sorted(times) and r["n_trials"] > 0
    written = _text(runs)
    lines.clear()
    run_benchmark(settings, log=lines.append)
    # Nothing is run again.
    assert _text(runs) == written
    assert "0 to run" in lines[-1]
    summary = summarize(settings, command="test", wall_seconds=None)
    write_report(summary, settings.out)
    good = summary["priors"]["good"]["contestants"]
    # Ranks among 2 contestants average 1.5.
    assert good["service"]["at_budgets"]["3"]["mean_rank"] + good["random"]["at_budgets"]["3"][
        "mean_rank"
    ] == pytest.approx(3)
    assert "`service` by mean rank" in settings.out.with_suffix(".md").read_text()
    assert settings.out.with_suffix(".png").stat().st_size > 0


def test_a_record_of_other_settings_is_refused(tmp_path):
    settings = Settings(out=tmp_path / "lcbench", tasks=("3945",), n_seeds=1, budgets=(1,))
    runs = records_path(settings)
    with gzip.open(runs, "wt") as out:
        out.write(json.dumps({"n_workers": 2, "budget": 1}) + "\n")
    with pytest.raises(ValueError, match="runs of 2 workers"):
        run_benchmark(
            Settings(
                out=settings.out,
                tasks=("3945",),
                n_seeds=1,
                budgets=(1,),
                contestants=("random",),
                n_reference=100,
                n_jobs=1,
            ),
            log=lambda line: None,
        )


@pytest.mark.skipif(not DEHB_PYTHON.exists(), reason="no .venv-dehb (make lcbench-deps)")
def test_dehb_searches_in_its_own_environment_and_repeats_with_its_seed(tmp_path):
    records = []
    for name in ("first", "again"):
        settings = Settings(
            out=tmp_path / name / "lcbench",
            tasks=("3945",),
            n_seeds=1,
            contestants=("dehb",),
            budgets=(3,),
            n_reference=200,
            n_jobs=1,
        )
        runs = run_benchmark(settings, log=lambda line: None)
        (record,) = [json.loads(line) for line in _text(runs).splitlines()]
        records.append(record)
    first, again = records
    assert first["n_trials"] > 4 and first["best"]
    # Values count from the end of their epoch, within the budget's time.
    assert all(t <= first["seconds"] for t, _ in first["best"])
    # Seeded: the same search again.
    assert (first["best"], first["n_trials"]) == (again["best"], again["n_trials"])


def _text(runs) -> str:
    """The records file's text (gzipped JSON lines)."""
    with gzip.open(runs, "rt") as lines:
        return lines.read()
