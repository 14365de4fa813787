"""The benchmark's own rules (benchmarks/efficiency.py), on trials made in memory: no training."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from benchmarks.digits import digits_sections
from benchmarks.efficiency import (
    DEFAULT_CONTESTANTS,
    NOTEBOOK_EPOCHS,
    RecordConflict,
    _comparable,
    censored_median,
    conflicts,
    epoch_points,
    plan_runs,
    read_record,
    run_all,
    time_to,
)
from benchmarks.report import write_efficiency_report
from search.config import from_dict
from search.prior import BASELINE, PRIOR_CENTRE
from search.record import TrialWriter
from search.study import create_study, make_pruner, make_sampler, study_prior
from spaces import conv

REPO = Path(__file__).resolve().parents[1]
LAUNCH = 1_800_000_000.0  # a UNIX time; trials are placed in seconds after it
BUDGET = 600.0


def add_trial(
    study: optuna.Study,
    *,
    state: TrialState,
    start: float,
    epochs: list[tuple[float, float]],
    end: float | None = None,
) -> None:
    """Add a trial that started `start` s after launch, with (epoch end s, val_accuracy)."""
    trial = optuna.trial.create_trial(
        state=state,
        value=max(v for _, v in epochs) if state == TrialState.COMPLETE else None,
        intermediate_values={i + 1: v for i, (_, v) in enumerate(epochs)},
        user_attrs={
            "history": {"val_accuracy": [v for _, v in epochs]},
            "epoch_end": [LAUNCH + s for s, _ in epochs],
        },
    )
    trial.datetime_start = dt.datetime.fromtimestamp(LAUNCH + start)
    if end is not None:
        trial.datetime_complete = dt.datetime.fromtimestamp(LAUNCH + end)
    study.add_trial(trial)


@pytest.fixture
def study() -> optuna.Study:
    return optuna.create_study(direction="maximize")


def points(study: optuna.Study) -> dict:
    return epoch_points(study.get_trials(), launched=LAUNCH, budget_seconds=BUDGET)


def test_a_value_counts_from_its_epochs_end_not_the_trials_end(study):
    add_trial(
        study,
        state=TrialState.COMPLETE,
        start=10,
        epochs=[(60, 0.80), (120, 0.91), (180, 0.90)],
        end=400,
    )
    measured = points(study)
    assert time_to(measured["points"], 0.91) == pytest.approx(120)
    assert measured["points"][0] == [pytest.approx(60), 0.80]


def test_an_interrupted_trials_finished_epochs_count(study):
    add_trial(study, state=TrialState.FAIL, start=500, epochs=[(550, 0.93), (590, 0.94)], end=620)
    measured = points(study)
    assert [v for _, v in measured["points"]] == [0.93, 0.94]
    assert measured["trials_failed"] == 1


def test_an_epoch_ending_after_the_deadline_does_not_count(study):
    add_trial(
        study, state=TrialState.PRUNED, start=300, epochs=[(590, 0.90), (610, 0.95)], end=610
    )
    measured = points(study)
    assert [v for _, v in measured["points"]] == [0.90]
    assert time_to(measured["points"], 0.95) is None


def test_a_trial_started_after_the_deadline_does_not_count(study):
    add_trial(study, state=TrialState.COMPLETE, start=100, epochs=[(200, 0.90)], end=200)
    add_trial(study, state=TrialState.FAIL, start=605, epochs=[], end=620)
    assert points(study)["trials_started"] == 1


def test_a_retried_trial_does_not_count_the_epochs_it_copied(study):
    # A retry carries the interrupted trial's user attrs: its epochs ended before it began.
    add_trial(study, state=TrialState.FAIL, start=0, epochs=[(100, 0.90)], end=150)
    add_trial(study, state=TrialState.RUNNING, start=200, epochs=[(100, 0.90)])
    assert points(study)["points"] == [[pytest.approx(100), 0.90]]


def test_never_reaching_a_threshold_counts_as_the_budget_in_the_median():
    # Two of three never reached: the median is the budget, flagged as resting on it.
    assert censored_median([120.0, None, None], BUDGET) == (BUDGET, True)
    assert censored_median([120.0, 300.0, None], BUDGET) == (300.0, False)
    # Without the rule the median of the runs that reached would be 120.
    assert censored_median([120.0, None, None, 200.0], BUDGET) == ((200.0 + BUDGET) / 2, True)


def _base() -> dict:
    return tomllib.loads((REPO / "studies" / "conv.toml").read_text())


def _runs(out: Path, *, budget: float = 1.0, seeds: int = 2, contestants=("search", "random")):
    return plan_runs(
        _base(),
        dataset="fashion_mnist",
        contestants=contestants,
        seeds=seeds,
        budget_minutes=budget,
        out_dir=out,
        workers=2,
    )


# Each contestant's best value at 30 s in the fake runs, per seed.
FAKE_BEST = {
    "search": (0.93, 0.93),
    "centre": (0.92, 0.925),
    "notebook": (0.91, 0.91),
    "tpe": (0.90, 0.90),
    "random": (0.80, 0.80),
}


def fake_runner(calls: list):
    def run(run, study_file, log):
        calls.append((run.contestant, run.seed))
        return {
            "launched": LAUNCH,
            "points": [[30.0, FAKE_BEST[run.contestant][run.seed]]],
            "trials_started": 3,
            "trials_pruned": 1,
        }

    return run


def test_runs_are_interleaved_by_seed(tmp_path):
    runs = _runs(tmp_path, contestants=DEFAULT_CONTESTANTS)
    assert [(r.contestant, r.seed) for r in runs] == [
        (c, seed) for seed in (0, 1) for c in ("search", "centre", "notebook", "tpe", "random")
    ]


def test_a_finished_record_is_skipped_on_rerun(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    calls: list = []
    kwargs = {"workdir": work, "command": "test", "settle_seconds": 0, "log": lambda _: None}
    run_all(_runs(out, seeds=1), runner=fake_runner(calls), **kwargs)
    assert calls == [("search", 0), ("random", 0)]
    record = out / "efficiency" / "fashion_mnist" / "search-seed0.json"
    first = record.read_text()
    calls.clear()
    run_all(_runs(out, seeds=2), runner=fake_runner(calls), **kwargs)
    assert calls == [("search", 1), ("random", 1)]
    assert record.read_text() == first
    assert json.loads(first)["settings"]["study"]["trials"]["sampler"] == "tpe"


def test_a_record_with_other_settings_stops_the_run_and_is_kept(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    calls: list = []
    kwargs = {"workdir": work, "command": "test", "settle_seconds": 0, "log": lambda _: None}
    run_all(_runs(out, seeds=1), runner=fake_runner(calls), **kwargs)
    record = out / "efficiency" / "fashion_mnist" / "random-seed0.json"
    before = record.read_text()
    calls.clear()
    with pytest.raises(RecordConflict):
        run_all(_runs(out, seeds=1, budget=2.0), runner=fake_runner(calls), **kwargs)
    assert calls == [] and record.read_text() == before
    run_all(_runs(out, seeds=1, budget=2.0), runner=fake_runner(calls), replace=True, **kwargs)
    assert calls == [("search", 0), ("random", 0)]
    assert json.loads(record.read_text())["settings"]["budget_minutes"] == 2.0
    superseded = list((record.parent / "superseded").glob("random-seed0-*.json"))
    assert [p.read_text() for p in superseded] == [before]


def test_a_changed_prior_makes_the_search_record_stale_not_randoms(tmp_path, monkeypatch):
    import spaces.conv

    out, work = tmp_path / "out", tmp_path / "work"
    calls: list = []
    kwargs = {"workdir": work, "command": "test", "settle_seconds": 0, "log": lambda _: None}
    run_all(_runs(out, seeds=1), runner=fake_runner(calls), **kwargs)
    # What editing a centre in spaces/conv.py does.
    prior = dict(spaces.conv.PRIOR)
    prior["head_units"] = prior["head_units"]._replace(centre=256)
    monkeypatch.setattr(spaces.conv, "PRIOR", prior)
    calls.clear()
    with pytest.raises(RecordConflict, match="search-seed0"):
        run_all(_runs(out, seeds=1), runner=fake_runner(calls), **kwargs)
    run_all(_runs(out, seeds=1), runner=fake_runner(calls), replace=True, **kwargs)
    assert calls == [("search", 0)]


def test_a_run_stopped_in_the_middle_leaves_no_record(tmp_path):
    out = tmp_path / "out"

    def interrupted(run, study_file, log):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_all(
            _runs(out, seeds=1),
            workdir=tmp_path / "work",
            command="test",
            settle_seconds=0,
            runner=interrupted,
            log=lambda _: None,
        )
    assert list((out / "efficiency" / "fashion_mnist").glob("*")) == []


def test_a_run_beside_another_program_is_marked_disturbed(tmp_path):
    """Another program's CPU use during a run marks it, even if the load was low at its start."""
    out = tmp_path / "out"
    burn = "import time\nend = time.time() + 30\nwhile time.time() < end: pass"
    # Started before the run and not by it: what a test suite or a build beside it looks like.
    others = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(os.cpu_count() or 1)]
    calls: list = []
    fake = fake_runner(calls)

    def run_beside_them(run, study_file, log):
        time.sleep(2.0)
        return fake(run, study_file, log)

    try:
        run_all(
            _runs(out, seeds=1)[:1],
            workdir=tmp_path / "work",
            command="test",
            settle_seconds=0,
            runner=run_beside_them,
            log=lambda _: None,
        )
    finally:
        for p in others:
            p.kill()
            p.wait()
    record = json.loads((out / "efficiency" / "fashion_mnist" / "search-seed0.json").read_text())
    assert record["disturbed"] is True
    assert record["foreign_cpu"]["share"] > 0.5


def _created(run) -> tuple:
    """A contestant's study as `search run` creates it (in memory), and its definition."""
    config = from_dict(run.sections, source=run.name)
    storage = optuna.storages.InMemoryStorage()
    centre = study_prior(config)[1] if config.trials.prior else None
    study, _ = create_study(config, storage, dict(conv.BASELINES), prior_centre=centre)
    return study, config


def _asked(study: optuna.Study) -> list[optuna.Trial]:
    """The queued trials, asked for one by one as a worker does, each drawn by the space."""
    trials = []
    for _ in study.get_trials(states=(TrialState.WAITING,)):
        trial = study.ask()
        conv.suggest(trial)
        trials.append(trial)
    return trials


def _contestant(tmp_path, name: str):
    return next(r for r in _runs(tmp_path, contestants=(name,)) if r.seed == 0)


def test_random_samples_at_random_without_pruning_or_prior(tmp_path):
    study, config = _created(_contestant(tmp_path, "random"))
    assert type(make_sampler(config, worker_index=0)) is optuna.samplers.RandomSampler
    assert isinstance(make_pruner(config), optuna.pruners.NopPruner)
    # Nothing queued: no prior centre, no baselines.
    assert study.get_trials() == []


def test_tpe_is_tpe_with_successive_halving_and_no_prior(tmp_path):
    run = _contestant(tmp_path, "tpe")
    study, config = _created(run)
    assert type(make_sampler(config, worker_index=0)) is optuna.samplers.TPESampler
    assert isinstance(make_pruner(config), optuna.pruners.SuccessiveHalvingPruner)
    assert study.get_trials() == []
    # A search: one 1-thread worker per core, as `search` runs.
    assert (run.settings["workers"], run.settings["threads_per_worker"]) == (2, 1)


def test_centre_trains_the_prior_centre_alone_on_all_cores(tmp_path):
    run = _contestant(tmp_path, "centre")
    study, config = _created(run)
    queued = _asked(study)
    assert [t.params for t in queued] == [study_prior(config)[1]]
    assert TrialWriter(queued[0]).record().origin == PRIOR_CENTRE
    # Then nothing else: the budget is that one trial, unpruned, trained as `search` does.
    assert config.trials.n_trials == 1
    assert isinstance(make_pruner(config), optuna.pruners.NopPruner)
    assert config.trials.max_epochs == _base()["trials"]["max_epochs"]
    assert (run.settings["workers"], run.settings["threads_per_worker"]) == (1, 2)


def test_notebook_trains_its_models_in_its_order_and_nothing_else(tmp_path):
    run = _contestant(tmp_path, "notebook")
    study, config = _created(run)
    queued = _asked(study)
    records = [TrialWriter(t).record() for t in queued]
    assert [r.baseline for r in records] == [
        "model_a",
        "model_b",
        "model_c",
        "model_d",
    ]
    assert [t.params for t in queued] == list(conv.BASELINES.values())
    assert {r.origin for r in records} == {BASELINE}
    assert config.trials.n_trials == len(conv.BASELINES)
    assert isinstance(make_pruner(config), optuna.pruners.NopPruner)
    assert config.trials.max_epochs == NOTEBOOK_EPOCHS
    # One model at a time on all cores, as the notebook trained them.
    assert (run.settings["workers"], run.settings["threads_per_worker"]) == (1, 2)
    # The base study's epochs stay in the record: the report keeps it beside the others.
    assert run.settings["base_max_epochs"] == _base()["trials"]["max_epochs"]


def test_search_is_the_study_as_written(tmp_path):
    search = _contestant(tmp_path, "search")
    conv_trials = _base()["trials"]
    trials = search.settings["study"]["trials"]
    assert (trials["sampler"], trials["pruner"], trials["prior"]) == (
        conv_trials["sampler"],
        conv_trials["pruner"],
        conv_trials["prior"],
    )
    assert search.settings["study"]["study"]["seed"] == search.seed


@pytest.mark.parametrize("dataset", ["fashion_mnist", "digits"])
def test_the_committed_random_records_are_found_under_their_name_and_predate_time_budgets(
    dataset,
):
    """The records measured as `hand` were renamed, not rerun: a rerun finds them under
    `random`. They were made before trials had time budgets (`trial_minutes`,
    `max_epoch_ratio`), so their settings differ from today's in those keys alone, and a
    rerun refuses to mix them with new runs (`--replace` moves them aside)."""
    base = _base() if dataset == "fashion_mnist" else digits_sections(_base())
    runs = plan_runs(
        base,
        dataset=dataset,
        contestants=("random",),
        seeds=3,
        budget_minutes=20 if dataset == "fashion_mnist" else 3,
        out_dir=REPO / "benchmarks" / "results",
        workers=2,
    )
    assert all(run.path.exists() for run in runs)
    for run in runs:
        recorded = _comparable(read_record(run.path)["settings"])
        today = run.settings
        assert {k: v for k, v in recorded.items() if k != "study"} == {
            k: v for k, v in today.items() if k != "study"
        }
        differing = {
            (section, key)
            for section, table in today["study"].items()
            for key in table
            if recorded["study"].get(section, {}).get(key, "absent") != table[key]
        }
        assert differing == {("trials", "trial_minutes"), ("trials", "max_epoch_ratio")}
    assert conflicts(runs) == runs


def test_the_report_leads_with_the_lift_over_centre(tmp_path):
    out = tmp_path / "out"
    calls: list = []
    run_all(
        _runs(out, seeds=2, contestants=DEFAULT_CONTESTANTS),
        workdir=tmp_path / "work",
        command="test",
        settle_seconds=0,
        runner=fake_runner(calls),
        log=lambda _: None,
    )
    text = write_efficiency_report(out).read_text()
    # Paired by seed: search minus centre in each seed, then their median.
    assert "+0.0100 (seed 0), +0.0050 (seed 1); median **+0.0075**" in text
    assert text.index("lift over `centre`") < text.index("`search` against each contestant")
    for contestant in ("centre", "notebook", "tpe", "random"):
        assert f"| `{contestant}` | 2 |" in text
    # random: 0.80 in both seeds, search 0.93.
    assert "| `random` | 2 | 0.8000, 0.9300 | +0.1300, +0.1300 (+0.1300) |" in text
    assert "`notebook` (the notebook's models" in text
    assert (out / "efficiency" / "fashion_mnist" / "best_so_far.png").stat().st_size > 0


def test_centre_needs_a_space_with_a_prior(tmp_path, monkeypatch):
    # A space without a prior has no centre to train.
    monkeypatch.delattr(conv, "PRIOR")
    with pytest.raises(ValueError, match="no PRIOR"):
        _runs(tmp_path, contestants=("centre",))
