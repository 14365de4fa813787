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

from benchmarks.efficiency import (
    RecordConflict,
    censored_median,
    epoch_points,
    plan_runs,
    run_all,
    time_to,
)
from benchmarks.report import write_efficiency_report

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


def _runs(out: Path, *, budget: float = 1.0, seeds: int = 2):
    base = tomllib.loads((REPO / "studies" / "conv.toml").read_text())
    return plan_runs(
        base,
        dataset="fashion_mnist",
        contestants=("search", "hand"),
        seeds=seeds,
        budget_minutes=budget,
        out_dir=out,
        workers=2,
    )


def fake_runner(calls: list):
    def run(run, study_file, log):
        calls.append((run.contestant, run.seed))
        return {
            "launched": LAUNCH,
            "points": [[30.0, 0.9 if run.contestant == "search" else 0.8]],
            "trials_started": 3,
            "trials_pruned": 1,
        }

    return run


def test_runs_are_interleaved_by_seed(tmp_path):
    assert [(r.contestant, r.seed) for r in _runs(tmp_path)] == [
        ("search", 0),
        ("hand", 0),
        ("search", 1),
        ("hand", 1),
    ]


def test_a_finished_record_is_skipped_on_rerun(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    calls: list = []
    kwargs = {"workdir": work, "command": "test", "settle_seconds": 0, "log": lambda _: None}
    run_all(_runs(out, seeds=1), runner=fake_runner(calls), **kwargs)
    assert calls == [("search", 0), ("hand", 0)]
    record = out / "efficiency" / "fashion_mnist" / "search-seed0.json"
    first = record.read_text()
    calls.clear()
    run_all(_runs(out, seeds=2), runner=fake_runner(calls), **kwargs)
    assert calls == [("search", 1), ("hand", 1)]
    assert record.read_text() == first
    assert json.loads(first)["settings"]["study"]["trials"]["sampler"] == "tpe"


def test_a_record_with_other_settings_stops_the_run_and_is_kept(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    calls: list = []
    kwargs = {"workdir": work, "command": "test", "settle_seconds": 0, "log": lambda _: None}
    run_all(_runs(out, seeds=1), runner=fake_runner(calls), **kwargs)
    record = out / "efficiency" / "fashion_mnist" / "hand-seed0.json"
    before = record.read_text()
    calls.clear()
    with pytest.raises(RecordConflict):
        run_all(_runs(out, seeds=1, budget=2.0), runner=fake_runner(calls), **kwargs)
    assert calls == [] and record.read_text() == before
    run_all(_runs(out, seeds=1, budget=2.0), runner=fake_runner(calls), replace=True, **kwargs)
    assert calls == [("search", 0), ("hand", 0)]
    assert json.loads(record.read_text())["settings"]["budget_minutes"] == 2.0
    superseded = list((record.parent / "superseded").glob("hand-seed0-*.json"))
    assert [p.read_text() for p in superseded] == [before]


def test_a_changed_prior_makes_the_search_record_stale_not_the_hand_loops(tmp_path, monkeypatch):
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


def test_the_hand_study_is_random_unpruned_and_without_prior(tmp_path):
    hand = next(r for r in _runs(tmp_path) if r.contestant == "hand")
    trials = hand.settings["study"]["trials"]
    assert (trials["sampler"], trials["pruner"], trials["prior"]) == ("random", "none", False)
    search = next(r for r in _runs(tmp_path) if r.contestant == "search")
    conv = tomllib.loads((REPO / "studies" / "conv.toml").read_text())["trials"]
    assert search.settings["study"]["trials"]["pruner"] == conv["pruner"]
    assert search.settings["study"]["study"]["seed"] == search.seed


def test_the_report_compares_paired_seeds(tmp_path):
    out = tmp_path / "out"
    calls: list = []
    run_all(
        _runs(out, seeds=2),
        workdir=tmp_path / "work",
        command="test",
        settle_seconds=0,
        runner=fake_runner(calls),
        log=lambda _: None,
    )
    text = write_efficiency_report(out).read_text()
    assert "search 0.9000, hand 0.8000; search - hand +0.1000" in text
    assert "over the 2 seeds both ran" in text
    assert (out / "efficiency" / "fashion_mnist" / "best_so_far.png").stat().st_size > 0
