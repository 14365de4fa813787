"""The supervisor `search run` (and `search.Study.optimize`) uses: N local worker processes.

It starts each worker as its own process (`python -m search.worker`, given a `WorkerSpec`),
shows progress, reaps stale trials, restarts crashed workers, recycles those that ran
their share of trials, and stops them all at the deadline, on Ctrl-C or on SIGTERM, leaving
no trial RUNNING.
"""

from __future__ import annotations

import itertools
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import optuna

from search.budget import progress
from search.config import StudyConfig
from search.device import worker_env
from search.failures import deadline_summary, fail_running, reap
from search.progress import Display, show
from search.settings import Settings
from search.storage import TRANSIENT_ERRORS, describe_error
from search.worker import EXIT_CONFIG_ERROR, WorkerSpec, write_spec

# Seconds between a supervisor's looks at the study (progress, reaping stale trials), and
# between two redraws of its live display on a terminal.
POLL_SECONDS = 5.0
LIVE_POLL_SECONDS = 1.0
# Seconds a worker has to stop after SIGTERM before it is killed. Trials stop between
# batches, so only a hung worker takes this long.
STOP_GRACE_SECONDS = 60.0


def supervise(
    config: StudyConfig,
    storage: optuna.storages.BaseStorage,
    settings: Settings,
    *,
    n_workers: int,
    log_dir: Path,
    gpus: Sequence[str] | None = None,
    max_trials_per_process: int | None = None,
    mixed_precision: bool = False,
    max_restarts: int = 3,
    display: Display | None = None,
) -> int:
    """Run `n_workers` worker processes until the budget is spent; return an exit code.

    Each worker is `python -m search.worker` given a `WorkerSpec` (the study's name, these
    settings with `settings.threads` per worker, its index and the run's deadline).

    With `gpus`, worker slot i trains on GPU gpus[i % len(gpus)] (`worker_env`), also
    when it is restarted or recycled.

    Shows progress, fails stale trials (a reaper, so a study whose workers all died still
    recovers), restarts crashed workers up to `max_restarts` times each and recycles
    workers that exit after their `--max-trials-per-process`. At the study's timeout the
    workers stop their trials at the next batch (`search.objective` says what becomes of
    them), and this returns 0. A worker that does not stop within `STOP_GRACE_SECONDS` is
    killed and its trial failed and queued again here: none is left RUNNING.

    Args:
        display: where progress goes (default: this process's stdout).
    """
    display = display or Display()
    out = display.event
    study = optuna.load_study(study_name=config.name, storage=storage)
    log_dir.mkdir(parents=True, exist_ok=True)
    n_trials = config.trials.n_trials
    timeout = config.trials.timeout_minutes
    deadline = time.time() + timeout * 60 if timeout else None
    # One deadline for every process: a recycled or restarted worker keeps it rather than
    # timing its own full timeout from its start.
    spec = WorkerSpec(
        config.name,
        settings,
        deadline=deadline,
        max_trials=max_trials_per_process,
        mixed_precision=mixed_precision,
    )
    # Every process gets a new worker index, so a replaced or recycled worker seeds its
    # sampler afresh instead of suggesting its predecessor's first points again.
    starts = itertools.count()
    procs = {i: _start_worker(spec, i, next(starts), log_dir, gpus) for i in range(n_workers)}
    placed = f" on GPUs {','.join(gpus)} (CUDA_VISIBLE_DEVICES)" if gpus else ""
    out(f"started {n_workers} workers{placed}; their logs: {log_dir}/worker-*.log")
    restarts = dict.fromkeys(procs, 0)
    gave_up = False
    unreachable = ""
    # SIGTERM (kill, systemd, a container stopping) stops the workers as Ctrl-C does,
    # rather than leaving them running without their supervisor. SIGINT is handled even
    # where a shell started this process ignoring it (in the background), as the workers
    # handle it: else a Ctrl-C to the group would stop the workers and this would restart them.
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, _terminated),
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
    }
    try:
        while procs:
            try:
                reap(study)
                state = progress(study)
                show(
                    display,
                    study,
                    state,
                    n_trials=n_trials,
                    metric=config.study.metric,
                    direction=config.direction,
                    max_epochs=config.trials.max_epochs,
                    deadline=deadline,
                )
                unreachable = ""
            except TRANSIENT_ERRORS as e:
                # The workers wait for the database themselves (or exit and are restarted);
                # the supervisor keeps tending them and looks at the study again next time.
                line = f"storage unreachable ({describe_error(e)}); looking again soon"
                if line != unreachable:
                    out(line)
                unreachable, state = line, None
            if deadline is not None and time.time() >= deadline:
                # The workers' own timers stopped their trials at this deadline; SIGTERM
                # reaches any that missed it (a clock step, a worker still loading data).
                out(f"time limit of {timeout:g} minutes reached; stopping workers...")
                _stop(study, procs.values(), out)
                procs.clear()
                out(deadline_summary(study, deadline))
                break
            spent = state is not None and state.spent(n_trials)
            for i, proc in list(procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                if spent or code == EXIT_CONFIG_ERROR:
                    del procs[i]
                    gave_up |= code != 0
                    continue
                if code != 0:
                    restarts[i] += 1
                    if restarts[i] > max_restarts:
                        out(
                            f"worker {i} failed {restarts[i]} times (exit {code}); giving up on it"
                        )
                        del procs[i]
                        gave_up = True
                        continue
                    out(
                        f"worker {i} exited with {code};"
                        f" restarting it ({restarts[i]}/{max_restarts})"
                    )
                procs[i] = _start_worker(spec, i, next(starts), log_dir, gpus)
            if procs:
                # A live display ticks every second; plain lines need no more than a poll.
                period = LIVE_POLL_SECONDS if display.live else POLL_SECONDS
                wait = period if deadline is None else deadline - time.time()
                time.sleep(min(period, max(0.0, wait)))
    except (KeyboardInterrupt, Terminated) as e:
        out("stopping workers (their running trials are failed and queued again)...")
        _stop(study, procs.values(), out)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    state = progress(study)
    display.final(f"[{time.strftime('%H:%M:%S')}] {state.line(n_trials, config.study.metric)}")
    return 1 if gave_up and state.finished < n_trials else 0


class Terminated(Exception):
    """The supervisor received SIGTERM."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def _start_worker(
    spec: WorkerSpec,
    slot: int,
    index: int,
    log_dir: Path,
    gpus: Sequence[str] | None = None,
) -> subprocess.Popen:
    """Start worker `slot` as a new process with its own worker index (its sampler's seed)."""
    path = write_spec(replace(spec, worker_index=index), log_dir / f".worker-{index}.spec")
    log = open(log_dir / f"worker-{slot}.log", "ab")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen(
        [sys.executable, "-m", "search.worker", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=worker_env(slot, gpus),
    )


def _stop(study: optuna.Study, procs, out: Callable[[str], None]) -> None:
    """SIGTERM the workers, then SIGKILL stragglers and fail and requeue their trials.

    A worker stops its trial within a batch of SIGTERM; one that does not within
    `STOP_GRACE_SECONDS` (a batch that long, a hung call) is killed, and its trial, which
    would stay RUNNING until the grace period of some later process, is failed and queued
    again now.
    """
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    killed = []
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            killed.append(proc.pid)
    if killed:
        host = socket.gethostname()
        reason = f"killed: its worker did not stop within {STOP_GRACE_SECONDS:g} s of SIGTERM"
        numbers = fail_running(study, {f"{host}:{pid}" for pid in killed}, reason)
        out(
            f"{len(killed)} worker{'s' * (len(killed) != 1)} killed; trials {numbers} failed"
            " and queued again"
        )
