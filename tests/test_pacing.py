"""A trial's time: epochs planned to fit, stops at the deadline, too costly epochs cut.

In-process, on the real Fashion-MNIST subset, with the worker's own deadline timer.
"""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
import types

import keras
import optuna
import pytest
from conftest import study_toml
from optuna.trial import TrialState

from search import pacing, supervisor, worker
from search.config import from_dict
from search.objective import Objective
from search.record import FailureKind, StoppedAtDeadline, TrialRecord, TrialWriter
from spaces import compile_model, dense

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _config(extra: str = "", **keys):
    return from_dict(tomllib.loads(study_toml(**keys) + extra), source="test")


@pytest.fixture(autouse=True)
def _clear_stop():
    yield
    pacing.STOP.clear()
    worker.TIME_UP.clear()


def _study() -> optuna.Study:
    """A study whose first trial is the notebook's smallest dense net (fast epochs)."""
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(dense.BASELINES["model_0"])
    return study


def test_a_trial_plans_the_epochs_that_fit_before_the_deadline(small_data):
    # Without a deadline this trial would train 1,000 epochs.
    config = _config(max_epochs=1000, pruner="none")
    deadline = time.time() + 12
    lines = []
    study = _study()
    study.optimize(Objective(config, dense, small_data, deadline=deadline, log=lines.append), 1)
    t = study.trials[0]
    record = TrialRecord.of(t)
    # It planned fewer epochs, trained exactly those, and ended before the deadline.
    assert t.state == TrialState.COMPLETE
    assert 1 < record.planned_epochs < 1000
    assert record.epochs == record.planned_epochs
    assert t.datetime_complete.timestamp() < deadline
    assert "the run's time limit" in record.plan_note
    # The worker's log has a line per epoch, "n of planned".
    planned = record.planned_epochs
    epoch_lines = [line for line in lines if line.startswith("trial 0 epoch ")]
    assert len(epoch_lines) == planned and epoch_lines[-1].startswith(f"trial 0 epoch {planned}/")


def test_trial_minutes_bounds_a_trial_without_a_deadline(small_data):
    config = _config(max_epochs=1000, pruner="none", extra="trial_minutes = 0.1\n")
    study = _study()
    start = time.monotonic()
    study.optimize(Objective(config, dense, small_data, log=lambda _: None), n_trials=1)
    t = study.trials[0]
    record = TrialRecord.of(t)
    assert t.state == TrialState.COMPLETE and record.planned_epochs < 1000
    assert "its trial_minutes" in record.plan_note
    # 6 seconds of budget; the first epoch also builds the model.
    assert time.monotonic() - start < 6 + 10


def test_a_trial_stopped_by_the_deadline_completes_with_its_best_epoch(small_data, monkeypatch):
    # Epochs slower than the plan assumed (a busier machine): the deadline cuts the trial.
    monkeypatch.setattr(pacing, "EPOCH_SAFETY", 0.01)
    config = _config(max_epochs=1000, pruner="none")
    deadline = time.time() + 12
    # The worker's own timer: at the deadline it sets TIME_UP and STOP.
    timer = worker._start_timer(deadline)
    study = _study()
    try:
        study.optimize(Objective(config, dense, small_data, deadline=deadline), n_trials=1)
    finally:
        timer.cancel()
    stopped_after = time.time() - deadline
    t = study.trials[0]
    record = TrialRecord.of(t)
    curve = record.history["val_accuracy"]
    # Complete, valued by its best epoch so far, and saying how far it got.
    assert t.state == TrialState.COMPLETE and t.value == max(curve)
    assert record.stopped_at_deadline == StoppedAtDeadline(
        epochs=len(curve), planned=record.planned_epochs
    )
    assert len(curve) < record.planned_epochs
    # Stopped between batches, not at the end of an epoch or later.
    assert stopped_after < 3


def test_an_epoch_far_slower_than_the_studys_typical_one_is_pruned_as_too_costly(
    small_data, monkeypatch
):
    # Projections start after half a second of batches here (5 s in a study).
    monkeypatch.setattr(pacing, "COST_CHECK_SECONDS", 0.5)
    config = _config(max_epochs=2, pruner="none")

    def build(config, input_shape, num_classes):
        # Trial 1 is two 4,096-unit layers with batches of 16: far more work per image.
        inputs = keras.Input(shape=input_shape)
        x = keras.layers.Rescaling(1.0 / 255)(keras.layers.Flatten()(inputs))
        for _ in range(config["layers"]):
            x = keras.layers.Dense(config["units"], activation="relu")(x)
        outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
        return compile_model(keras.Model(inputs, outputs), config)

    def suggest(trial) -> dict:
        big = trial.number == 1
        return {
            "layers": trial.suggest_int("layers", 1, 2),
            "units": trial.suggest_int("units", 8, 4096),
            "optimizer": "adam",
            "learning_rate": 1e-3,
            "schedule": {"name": "constant"},
            "batch_size": 16 if big else 256,
        }

    space = types.SimpleNamespace(suggest=suggest, build=build, BASELINES={})
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"layers": 1, "units": 8})
    study.enqueue_trial({"layers": 2, "units": 4096})
    lines = []
    study.optimize(Objective(config, space, small_data, log=lines.append), n_trials=2)
    fast, slow = study.trials
    assert fast.state == TrialState.COMPLETE
    # Cut in its first epoch, as pruned (the sampler ranks it below any reported value).
    assert slow.state == TrialState.PRUNED and not slow.intermediate_values
    reason = TrialRecord.of(slow).pruned_reason
    assert reason.startswith("too costly: epoch 1 projected at")
    assert "max_epoch_ratio 8" in reason
    assert any("too costly" in line for line in lines)


def test_a_worker_that_ignores_sigterm_is_killed_and_its_trial_requeued(tmp_path, monkeypatch):
    from search.storage import open_storage

    monkeypatch.setattr(supervisor, "STOP_GRACE_SECONDS", 1.0)
    storage = open_storage(f"sqlite:///{tmp_path / 'search.db'}")
    study = optuna.create_study(study_name="t", storage=storage, direction="maximize")
    # A process that ignores SIGTERM, running a trial as a hung worker would.
    hung = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ready', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert hung.stdout.readline().strip() == "ready"
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    import socket

    TrialWriter(trial).set_worker(f"{socket.gethostname()}:{hung.pid}")
    said = []
    supervisor._stop(study, [hung], said.append)
    # Killed, and its trial failed with the reason and queued again with its params.
    assert hung.returncode == -9
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    failed = TrialRecord.of(trials[0])
    assert failed.fail_reason.startswith("killed: its worker did not stop")
    assert failed.failure == FailureKind.KILLED
    assert trials[1].params == trials[0].params
    assert said == ["1 worker killed; trials [0] failed and queued again"]


def test_status_and_progress_show_a_running_trials_epoch_of_its_plan(tmp_path, capsys):
    from search.budget import progress
    from search.progress import Display, show
    from search.status import print_status
    from search.storage import open_storage
    from search.study import create_study

    storage = open_storage(f"sqlite:///{tmp_path / 'search.db'}")
    config = _config(max_epochs=10, prior=False)
    study, _ = create_study(config, storage, {})
    trial = study.ask()
    # What a trial writes after its 3rd epoch, having planned 7.
    writer = TrialWriter(trial)
    writer.set_plan(7)
    writer.set_epoch_times([1.0, 2.0, 3.0], [30.0, 28.0, 29.0])
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    writer.set_history({k: [0.5, 0.8, 0.7] for k in keys})
    print_status(storage, "t")
    row = next(line for line in capsys.readouterr().out.splitlines() if "RUNNING" in line)
    assert " 3/7 " in row
    # `search run`'s plain lines: the trial's epoch, last and best value, seconds per epoch.
    display = Display(quiet=False)
    display.live = False
    show(
        display,
        study,
        progress(study),
        n_trials=8,
        metric="val_accuracy",
        direction="maximize",
        max_epochs=10,
        deadline=time.time() + 125,
    )
    out = capsys.readouterr().out
    assert "trial 0: epoch 3/7 val_accuracy 0.7000 (best 0.8000), 29 s/epoch" in out
    assert "0/8 trials done" in out and "| 2:0" in out
