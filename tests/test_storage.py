"""Heartbeats on a real SQLite file: what a dead worker leaves behind gets failed and retried."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.record import TrialRecord
from search.storage import open_storage

GRACE = 2
ROOT = Path(__file__).resolve().parents[1]


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
    assert retry.params == dead.params and TrialRecord.of(retry).retry_of == dead.number


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


CLAIM_QUEUED = """
import json, sys
import optuna
from search.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="t", storage=open_storage(sys.argv[1]))
claimed = []
while "queued" in (trial := study.ask()).user_attrs:
    claimed.append(trial.number)
print(json.dumps(claimed))
"""


def test_two_workers_never_claim_the_same_queued_trial(tmp_path):
    """Each enqueued trial (the prior's centre, a baseline, a retry) runs once, not twice.

    Optuna alone lets two processes on one SQLite file both claim a WAITING trial.
    """
    url = f"sqlite:///{tmp_path / 'search.db'}"
    study = optuna.create_study(study_name="t", storage=open_storage(url))
    n_queued = 300
    for i in range(n_queued):
        study.enqueue_trial({"x": i}, user_attrs={"queued": True})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIM_QUEUED, url], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    first, second = (json.loads(p.communicate(timeout=120)[0]) for p in procs)
    assert first and second  # both took part
    assert not set(first) & set(second)
    assert sorted(first + second) == list(range(n_queued))
