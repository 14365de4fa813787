"""Heartbeats on a real SQLite file: what a dead worker leaves behind gets failed and retried."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from search.storage import open_storage

GRACE = 1


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_retried(tmp_path):
    """Optuna alone leaves such a trial RUNNING forever, and a budget counting it never ends."""
    storage = open_storage(
        f"sqlite:///{tmp_path / 'search.db'}", heartbeat_interval=1, grace_period=GRACE
    )
    study = optuna.create_study(study_name="t", storage=storage, direction="maximize")
    # What a worker killed right after starting a trial leaves: RUNNING, no heartbeat ever.
    trial = study.ask()
    trial.suggest_int("units", 32, 1024)
    optuna.storages.fail_stale_trials(study)
    # Not yet stale: a live worker records its first heartbeat at once, so only time tells.
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    time.sleep(GRACE + 0.5)
    optuna.storages.fail_stale_trials(study)
    dead, retry = study.get_trials()
    assert dead.state == TrialState.FAIL
    # Queued again once, with the same parameters, for the next worker to take.
    assert retry.state == TrialState.WAITING
    assert retry.params == dead.params and retry.system_attrs["failed_trial"] == dead.number


def test_a_trial_with_fresh_heartbeats_is_left_running(tmp_path):
    storage = open_storage(
        f"sqlite:///{tmp_path / 'search.db'}", heartbeat_interval=1, grace_period=GRACE
    )
    study = optuna.create_study(study_name="t", storage=storage, direction="maximize")
    trial = study.ask()
    for _ in range(3):
        storage.record_heartbeat(trial._trial_id)
        time.sleep(GRACE / 2)
        optuna.storages.fail_stale_trials(study)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
