"""The compose topology for real, without Docker: PostgreSQL, `search create`, 4 workers and
a reaper, with 2 workers SIGKILLed mid-trial and the database restarted once."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import time

import optuna
import pytest
from conftest import TEST_GRACE_PERIOD, cli_env, search_cmd, search_here, start_search
from optuna.trial import TrialState
from pgserver import PostgresServer

from search.record import TrialRecord
from search.storage import open_storage

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)
GRACE, REAP_EVERY = TEST_GRACE_PERIOD, 2
# The budget: enough trials that workers run before, during and after the kills and the restart.
N_TRIALS = 6
# Seconds the study may take; it takes about 60 on 2 cores.
DEADLINE = 600
DONE = {TrialState.COMPLETE, TrialState.PRUNED}


class Fleet:
    """Worker processes restarted when they fail, like compose's `restart: on-failure`."""

    def __init__(self, url: str, cwd, logs) -> None:
        self.url, self.cwd, self.logs = url, cwd, logs
        self.procs: dict[int, subprocess.Popen] = {}
        self.n_restarts = 0

    def start(self, index: int) -> None:
        log = open(self.logs / f"worker-{index}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
        cmd = search_cmd(
            "worker",
            "--study-name",
            "t",
            "--storage",
            self.url,
            "--threads",
            "1",
            "--worker-index",
            str(index),
        )
        self.procs[index] = subprocess.Popen(
            cmd, cwd=self.cwd, env=cli_env(), stdout=log, stderr=subprocess.STDOUT
        )

    def pid_of(self, index: int) -> int:
        return self.procs[index].pid

    def tend(self) -> bool:
        """Restart failed workers; True while any worker still runs."""
        running = False
        for index, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                running = True
            elif code != 0:
                self.n_restarts += 1
                assert self.n_restarts <= 12, "workers keep failing: see the logs"
                self.start(index)
                running = True
        return running


def _trials(storage: optuna.storages.BaseStorage):
    return optuna.load_study(study_name="t", storage=storage).get_trials(deepcopy=False)


def _stuck(trials, fleet: Fleet, logs, reaper: subprocess.Popen) -> str:
    """What a study that did not finish in time looks like: its trials, workers and logs."""
    reaper.kill()
    lines = [f"the study did not finish in {DEADLINE} s; trials:"]
    lines += [
        f"  {t.number} {t.state.name} epochs={len(t.intermediate_values)}"
        f" worker={TrialRecord.of(t).worker} retry_of={TrialRecord.of(t).retry_of}"
        for t in trials
    ]
    lines.append(f"workers: { {i: (p.pid, p.poll()) for i, p in fleet.procs.items()} }")
    for log in sorted(logs.iterdir()):
        lines += [f"--- {log.name}", *log.read_text().splitlines()[-15:]]
    lines += ["--- reaper", *reaper.communicate()[0].splitlines()[-15:]]
    return "\n".join(lines)


def test_workers_survive_sigkills_and_a_database_restart(tmp_path, write_study):
    logs = tmp_path / "logs"
    logs.mkdir()
    with PostgresServer() as pg:
        study = write_study(
            n_trials=N_TRIALS,
            max_epochs=3,
            # Small: what is tested is the fleet, not the models (an epoch still takes seconds).
            train_subset=1000,
            validation_subset=500,
            pruner="median",
        )
        created = search_here("create", study, "--storage", pg.url, cwd=tmp_path)
        assert created.returncode == 0, created.stderr
        # `create` is idempotent: compose may run it again on every `up`.
        assert search_here("create", study, "--storage", pg.url, cwd=tmp_path).returncode == 0
        reaper = subprocess.Popen(
            search_cmd("reap", "--every", str(REAP_EVERY), "--storage", pg.url),
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # One storage for the test's looks, 5 a second: a new one each time would cost a new
        # connection (and a server process) each time. Its pool pings across the restart.
        watch = open_storage(pg.url, heartbeat_interval=1, grace_period=GRACE)
        fleet = Fleet(pg.url, tmp_path, logs)
        for index in range(4):
            fleet.start(index)
        killed: dict[int, tuple[datetime.datetime, dict]] = {}
        restarted_db = False
        deadline = time.monotonic() + DEADLINE
        while fleet.tend():
            trials = _trials(watch)
            assert time.monotonic() < deadline, _stuck(trials, fleet, logs, reaper)
            if len(killed) < 2:
                # Kill a worker that is in the middle of a trial, and start its replacement.
                # Not a retry's: each killed trial is then retried exactly once.
                for t in trials:
                    pid = int((TrialRecord.of(t).worker or "x:0").split(":")[1])
                    mid = t.state == TrialState.RUNNING and len(t.intermediate_values) == 1
                    mid = mid and TrialRecord.of(t).retry_of is None
                    index = next((i for i, p in fleet.procs.items() if p.pid == pid), None)
                    if mid and index is not None and t.number not in killed:
                        os.kill(pid, signal.SIGKILL)
                        fleet.procs[index].wait()
                        killed[t.number] = (datetime.datetime.now(), t.params)
                        fleet.start(index)
                        break
            elif not restarted_db:
                pg.restart()
                restarted_db = True
            time.sleep(0.2)
        # The reaper outlived the database restart.
        assert reaper.poll() is None, reaper.communicate()[0]
        reaper.send_signal(signal.SIGINT)
        reaper_output = reaper.communicate(timeout=30)[0]
        trials = _trials(watch)
        watch.engine.dispose()

    worker_logs = "\n".join(p.read_text() for p in logs.iterdir())
    print(f"worker restarts after failures: {fleet.n_restarts}")
    assert restarted_db and len(killed) == 2, worker_logs
    # Every trial ended; none is left RUNNING or WAITING; numbers are exactly 0..N-1.
    assert {t.state for t in trials} <= DONE | {TrialState.FAIL}, worker_logs
    assert [t.number for t in trials] == list(range(len(trials)))
    # The budget is exact: N_TRIALS trials COMPLETE or PRUNED, none counted twice.
    assert sum(t.state in DONE for t in trials) == N_TRIALS
    retried = {
        TrialRecord.of(t).retry_of: t for t in trials if TrialRecord.of(t).retry_of is not None
    }
    for t in trials:
        if t.state == TrialState.FAIL:
            # A failure has a recorded reason, or is a dead worker's trial that was retried.
            assert TrialRecord.of(t).fail_reason is not None or t.number in retried, t
    for number, (killed_at, params) in killed.items():
        dead = trials[number]
        # Failed within the grace period plus the reaper's period (and a little slack).
        assert dead.state == TrialState.FAIL
        assert (dead.datetime_complete - killed_at).total_seconds() <= GRACE + REAP_EVERY + 3
        # ...and retried once, with the same parameters, to the end.
        assert retried[number].params == params and retried[number].state in DONE
        assert sum(TrialRecord.of(t).retry_of == number for t in trials) == 1
    assert "stale trials failed and queued again" in reaper_output, reaper_output


def test_heartbeats_and_the_reaper_outlive_a_database_outage(tmp_path, write_study, capfd):
    """A database gone for a moment costs no running trial, and the reaper keeps reaping."""
    with PostgresServer() as pg:
        study_file = write_study()
        assert search_here("create", study_file, "--storage", pg.url, cwd=tmp_path).returncode == 0
        storage = open_storage(pg.url, heartbeat_interval=1, grace_period=GRACE)
        study = optuna.load_study(study_name="t", storage=storage)
        trial = study.ask()
        storage.record_heartbeat(trial._trial_id)
        reaper = start_search("reap", "--every", "1", "--storage", pg.url, cwd=tmp_path)
        try:
            assert reaper.stdout.readline().startswith("reaping stale trials of t every 1s")
            pg.stop()
            # A worker's heartbeat thread calls this: it must not die of the outage.
            storage.record_heartbeat(trial._trial_id)
            assert "heartbeat of trial id" in capfd.readouterr().err
            time.sleep(3)
            pg.start()
            storage.record_heartbeat(trial._trial_id)
            # The outage was shorter than the grace period: the trial still runs.
            optuna.storages.fail_stale_trials(study)
            assert study.get_trials(deepcopy=False)[0].state == TrialState.RUNNING
            time.sleep(2)
            assert reaper.poll() is None, reaper.communicate()[0]
        finally:
            reaper.send_signal(signal.SIGINT)
            output = reaper.communicate(timeout=30)[0]
        storage.engine.dispose()
    assert "t: storage unreachable, trying again in 1s" in output, output
