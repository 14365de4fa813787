"""Real studies: 2 worker processes on a temporary SQLite file over a small subset."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
from conftest import cli_env, run_search, search_here, start_search
from optuna.trial import TrialState

from search.record import FailureKind, TrialRecord
from search.settings import Settings
from search.storage import open_storage
from search.worker import WorkerSpec, write_spec

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)
DONE = {TrialState.COMPLETE, TrialState.PRUNED}


def _trials(storage_url: str, name: str = "t"):
    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=4)
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def _wait_for_trial_mid_training(storage_url: str, proc, *, timeout: float = 180):
    """The first RUNNING trial that has trained an epoch but still has epochs to go."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            for t in _trials(storage_url):
                if t.state == TrialState.RUNNING and len(t.intermediate_values) == 1:
                    return t
        except KeyError:  # the study does not exist yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"no trial mid-training within {timeout}s")


def _assert_budget_exact(trials, n_trials: int) -> None:
    # No trial is left RUNNING or WAITING, numbers are 0..N-1, and the budget is exact.
    assert {t.state for t in trials} <= DONE | {TrialState.FAIL}
    assert [t.number for t in trials] == list(range(len(trials)))
    assert sum(t.state in DONE for t in trials) == n_trials
    # Every failure says why.
    assert all(
        TrialRecord.of(t).fail_reason is not None or t.number in _retried(trials)
        for t in trials
        if t.state == TrialState.FAIL
    )


def _trials_if_any(storage_url: str) -> list:
    """The study's trials; none before it exists."""
    try:
        return _trials(storage_url)
    except KeyError:
        return []


def _retried(trials) -> set[int]:
    return {r.retry_of for r in map(TrialRecord.of, trials) if r.retry_of is not None}


def test_two_workers_run_a_pruned_study_to_its_budget(study_run):
    # `study_run`: `search run` with 2 workers, 12 trials of at most 3 epochs, median pruner.
    s = study_run
    trials = _trials(s.storage)
    _assert_budget_exact(trials, 12)
    assert not [t for t in trials if t.state == TrialState.FAIL]
    # The pruner stopped some trials early; their reports stop at the epoch they were pruned.
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(len(t.intermediate_values) < 3 for t in pruned)
    # Two processes shared the work.
    assert len({TrialRecord.of(t).worker for t in trials}) == 2
    # Live progress and the best trial are shown.
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert "12/12 trials done" in s.output
    assert f"best trial of 't': #{best.number}" in s.output
    assert f"val_accuracy {best.value:.4f}" in s.output
    # status shows the same study.
    status = search_here("status", "t", "--storage", s.storage, cwd=s.cwd)
    assert status.returncode == 0 and f"best trial of 't': #{best.number}" in status.stdout


def test_sigkilled_worker_trial_is_failed_and_retried_with_same_params(tmp_path, write_study):
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    # (What a retry resumes from: tests/test_checkpoints.py.)
    study = write_study(n_trials=3, max_epochs=4, train_subset=3000, pruner="none")
    proc = start_search("run", study, "--workers", "2", "--storage", storage, cwd=tmp_path)
    victim = _wait_for_trial_mid_training(storage, proc)
    os.kill(int(TrialRecord.of(victim).worker.split(":")[1]), signal.SIGKILL)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    trials = _trials(storage)
    _assert_budget_exact(trials, 3)
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL
    # Retried exactly once, with the same parameters, and the retry finished.
    retries = [t for t in trials if TrialRecord.of(t).retry_of == victim.number]
    assert len(retries) == 1
    assert retries[0].params == victim.params and retries[0].state in DONE
    # The supervisor replaced the dead worker.
    assert "exited with -9; restarting it" in output


def test_ctrl_c_stops_cleanly_and_the_study_resumes(tmp_path, write_study):
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    study = write_study(n_trials=3, max_epochs=4, train_subset=3000, pruner="none")
    proc = start_search(
        "run", study, "--workers", "2", "--storage", storage, cwd=tmp_path, start_new_session=True
    )
    victim = _wait_for_trial_mid_training(storage, proc)
    # What a terminal does on Ctrl-C: SIGINT to the whole foreground process group.
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    trials = _trials(storage)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = trials[victim.number]
    assert interrupted.state == TrialState.FAIL
    assert TrialRecord.of(interrupted).failure == FailureKind.INTERRUPTED
    # The interrupted trial waits in the queue with its params, and resuming runs it.
    queued = [t for t in trials if TrialRecord.of(t).retry_of == victim.number]
    assert len(queued) == 1 and queued[0].state == TrialState.WAITING
    # (One worker is enough to resume, and a worker's start is seconds of TensorFlow.)
    result = run_search("run", study, "--workers", "1", "--storage", storage, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming study 't'" in result.stdout
    trials = _trials(storage)
    _assert_budget_exact(trials, 3)
    retry = trials[queued[0].number]
    assert retry.state in DONE and retry.params == victim.params
    # It went on from the epoch the stopped trial had finished (its checkpoint, written
    # before the next epoch's first batch, where the stop came).
    record = TrialRecord.of(retry)
    assert record.resumed_from.trial == victim.number and record.resumed_from.epoch >= 1
    assert record.epochs_trained == 4 - record.resumed_from.epoch


def test_sigterm_to_the_supervisor_stops_its_workers(tmp_path, write_study):
    # What `kill PID`, systemd or a stopping container does: SIGTERM to `search run` alone.
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    study = write_study(n_trials=3, max_epochs=4, train_subset=3000, pruner="none")
    proc = start_search("run", study, "--workers", "2", "--storage", storage, cwd=tmp_path)
    victim = _wait_for_trial_mid_training(storage, proc)
    workers = [TrialRecord.of(t).worker for t in _trials(storage)]
    worker_pids = {int(w.rsplit(":", 1)[1]) for w in workers if w}
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "stopping workers" in output
    # No worker outlives its supervisor, and none left a trial RUNNING.
    for pid in worker_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    trials = _trials(storage)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert TrialRecord.of(trials[victim.number]).failure == FailureKind.INTERRUPTED


def test_recycled_workers_are_replaced_and_draw_new_points(tmp_path, write_study):
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    study = write_study(n_trials=3, max_epochs=1, sampler="random", pruner="none")
    result = run_search(
        "run",
        study,
        "--workers",
        "1",
        "--max-trials-per-process",
        "1",
        "--storage",
        storage,
        "-q",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # -q: the final line only.
    assert result.stdout.splitlines() == [result.stdout.strip()], result.stdout
    assert "3/3 trials done" in result.stdout
    trials = _trials(storage)
    _assert_budget_exact(trials, 3)
    # A worker process is replaced after each trial, bounding its memory...
    assert len({TrialRecord.of(t).worker for t in trials}) == 3
    # ...and each new process seeds its sampler afresh instead of repeating the first point.
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3


EPOCH_LINE = re.compile(r"trial \d+: epoch \d+/\d+ val_accuracy")


def test_timeout_sizes_trials_to_the_time_and_leaves_none_running(tmp_path, write_study):
    # Each trial would train for minutes; the study's time limit is a minute (on a slow or
    # busy machine a worker's start and a trial's first epoch take half of that). One
    # 1-thread worker: the time limit, not the work, sets how long this test takes.
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    study = write_study(n_trials=20, max_epochs=300, pruner="none")
    # A grace period longer than the pause below, which stops the worker's heartbeats too.
    flags = ("--workers", "1", "--threads", "1", "--grace-period", "60")
    proc = start_search(
        "run", study, *flags, "--timeout-minutes", "1", "--storage", storage, cwd=tmp_path
    )
    # Without a wall-clock limit the run would take many minutes: fail in 4 instead.
    # SIGTERM, not SIGKILL: the supervisor then stops its workers rather than orphaning them.
    watchdog = threading.Timer(240, proc.terminate)
    watchdog.start()
    lines, started, shown = [], [], threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[") and "started 1 workers" in line:
                # The supervisor set its deadline, a minute from now, just before this line.
                started.append(time.monotonic())
            if EPOCH_LINE.search(line):
                shown.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        # The run shows a running trial's epochs each time it looks at the study (every 5 s
        # when not on a terminal). To see that whatever the machine's speed, the worker is
        # paused (SIGSTOP) while its trial is past an epoch, until the run has shown it.
        while not shown.is_set() and proc.poll() is None:
            running = [
                t
                for t in _trials_if_any(storage)
                if t.state == TrialState.RUNNING and t.intermediate_values
            ]
            if running:
                pid = int(TrialRecord.of(running[0]).worker.rsplit(":", 1)[1])
                os.kill(pid, signal.SIGSTOP)
                try:
                    shown.wait(15)
                finally:
                    os.kill(pid, signal.SIGCONT)
            time.sleep(0.2)
        code = proc.wait()
        ended = time.monotonic()
        reader.join()
    finally:
        watchdog.cancel()
    output = "".join(lines)
    assert code == 0 and started, output
    # Trials stop between batches: the run ends within seconds of its deadline.
    assert 59 < ended - started[0] < 60 + 20, output
    trials = _trials(storage)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # Trials planned the epochs that fit in the time left, and completed with a result.
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and all(TrialRecord.of(t).planned_epochs < 300 for t in complete)
    # One stopped by the deadline after an epoch is valued by its best epoch so far.
    for t in complete:
        if TrialRecord.of(t).stopped_at_deadline is not None:
            assert t.value == max(TrialRecord.of(t).history["val_accuracy"])
    # One stopped before its first epoch ended waits in the queue with its params.
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert all(TrialRecord.of(t).failure == FailureKind.INTERRUPTED for t in stopped)
    queued = {TrialRecord.of(t).retry_of: t for t in trials if t.state == TrialState.WAITING}
    assert sorted(queued) == [t.number for t in stopped]
    assert all(queued[t.number].params == t.params for t in stopped)
    assert "time limit of 1 minutes reached" in output
    n = len(stopped)
    assert f"{n} running trial{'s' * (n != 1)} stopped and queued again" in output
    # Each epoch shows in the run's output and in the worker's log.
    assert EPOCH_LINE.search(output), output
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "t" / "logs").glob("*.log"))
    assert "worker 0: trial 0 epoch 1/" in logs, logs
    # The workers took the stop for their time limit (exit 0), not for a signal.
    assert "time limit reached" in logs
    # A worker started after the deadline it was given (recycled, restarted) runs nothing.
    spec = WorkerSpec("t", Settings(storage=storage), deadline=time.time() - 1)
    late = subprocess.run(
        [sys.executable, "-m", "search.worker", str(write_spec(spec, tmp_path / "late.spec"))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env(),
    )
    assert late.returncode == 0, late.stdout + late.stderr
    assert "time limit reached before it started" in late.stdout
    assert len(_trials(storage)) == len(trials)
