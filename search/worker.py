"""Worker processes: one runs trials until the budget is spent; a supervisor runs N of them.

A worker is a plain process running `search worker`, the same command docker-compose and
other machines run, so the local and the distributed setups share one code path.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.budget import progress
from search.checkpoints import keep_best, open_store, prune_kept
from search.config import StudyConfig
from search.data import Dataset
from search.failures import check_failures, deadline_summary, fail_running, reap, requeue
from search.progress import Display, show
from search.record import StudyRecord, write_class_names
from search.storage import TRANSIENT_ERRORS, describe_error
from search.study import load_definition, make_pruner, make_sampler

# Seconds between a supervisor's looks at the study (progress, reaping stale trials), and
# between two redraws of its live display on a terminal.
POLL_SECONDS = 5.0
LIVE_POLL_SECONDS = 1.0
# Seconds a worker has to stop after SIGTERM before it is killed. Trials stop between
# batches, so only a hung worker takes this long.
STOP_GRACE_SECONDS = 60.0
# Seconds a worker waits for others' last trials (and reaps stale ones) before looking again.
TAIL_WAIT_SECONDS = 2.0
EXIT_CONFIG_ERROR = 2

# Set when a worker's deadline passes; it also sets pacing.STOP, so a running trial stops
# at its next batch and is queued again, and the worker tells a timeout (a normal end, exit 0)
# from a signal.
TIME_UP = threading.Event()


def configure_threads(n_threads: int) -> None:
    """Limit TensorFlow's threads; must run before TensorFlow starts its runtime."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(n_threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(n_threads, 2))


def gpu_env(gpu: str) -> dict[str, str]:
    """The environment that gives a process one GPU, whose memory it takes as it needs it."""
    return {"CUDA_VISIBLE_DEVICES": gpu, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


def worker_env(slot: int, gpus: Sequence[str] | None = None) -> dict[str, str]:
    """A worker process's environment: this one's, and with `gpus` one of them (by slot).

    Slots take the GPUs in turn, so with K workers per GPU each GPU has K of them.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    if gpus:
        env |= gpu_env(gpus[slot % len(gpus)])
    return env


def configure_device(
    *, threads: int, gpu: int | None = None, mixed_precision: bool = False
) -> None:
    """A training process's GPU, threads and precision; must run before TensorFlow starts.

    Args:
        gpu: train on this GPU only (CUDA_VISIBLE_DEVICES); default: as the environment says.
        mixed_precision: float16 compute (Keras' mixed_float16); ignored with a warning
            where no GPU is visible, as it only slows a CPU down.
    """
    if gpu is not None:
        os.environ.update(gpu_env(str(gpu)))
    configure_threads(threads)
    if mixed_precision:
        import keras
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            keras.mixed_precision.set_global_policy("mixed_float16")
        else:
            print("warning: --mixed-precision is ignored: no GPU is visible", file=sys.stderr)


def hide_gpus() -> None:
    """Keep a process that trains nothing (a supervisor, `search create`) off the GPUs.

    TensorFlow takes the memory of every GPU it sees when it starts; checking a folder's
    images starts it.
    """
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow has started already; nothing to be done here
        pass


def run_worker(
    study_name: str,
    storage: optuna.storages.BaseStorage,
    *,
    worker_index: int,
    data_dir: str | None = None,
    data: Dataset | None = None,
    cache: str = "none",
    max_trials: int | None = None,
    deadline: float | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Run trials of a study until its budget is spent, its time is up or `max_trials` ran.

    Args:
        data: the study's dataset if the caller has loaded it already; else loaded here.
        cache: where a dir:PATH dataset's decoded images are kept (none, memory, disk).
        deadline: when the time is up, a Unix time (default: the study's timeout_minutes
            from now). A trial running then stops at its next batch and is queued again.

    Returns the number of trials this worker ran.
    """
    from search.data import load_study_data
    from search.objective import Objective
    from search.pacing import STOP, Interrupted
    from search.training import describe_device
    from spaces import load_space

    config = load_definition(study_name, storage)
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=make_sampler(config, worker_index=worker_index),
        pruner=make_pruner(config),
    )
    timeout = config.trials.timeout_minutes
    if deadline is None and timeout:
        deadline = time.time() + timeout * 60
    if deadline is not None and time.time() >= deadline:
        # A worker recycled or restarted after the deadline: nothing to load or run.
        TIME_UP.set()
        log(f"worker {worker_index}: time limit reached before it started")
        return 0
    # Stops a running trial at its next batch when the time is up, not after its last epoch.
    timer = _start_timer(deadline) if deadline is not None else None
    try:
        start = time.monotonic()
        if data is None:
            data = load_study_data(config.data, data_dir=data_dir, cache=cache)
        log(
            f"worker {worker_index}: {config.data.dataset} loaded in"
            f" {time.monotonic() - start:.1f}s"
            f" ({len(data.train)} train, {len(data.val)} validation images);"
            f" training on {describe_device()}"
        )
        if StudyRecord.of(study).class_names is None:
            # What the models' outputs mean, for exports (and their kept models) to carry.
            write_class_names(study, list(data.class_names))
        store = open_store()
        keep = keep_best()
        objective = Objective(
            config,
            load_space(config.study.space),
            data,
            store=store,
            deadline=deadline,
            log=lambda line: log(f"worker {worker_index}: {line}"),
        )

        def prune(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            # After the trial is told: a completed trial counts in the ranking.
            if trial.state == TrialState.COMPLETE:
                prune_kept(store, study, keep)

        n_run = 0
        while (max_trials is None or n_run < max_trials) and not STOP.is_set():
            state = progress(study)
            if state.spent(config.trials.n_trials):
                break
            check_failures(study_name, state.counts[TrialState.FAIL], config.trials.n_trials)
            if state.all_claimed(config.trials.n_trials):
                # Every remaining trial is running elsewhere: wait, and fail those whose
                # worker died so their retries come back as WAITING trials for us.
                reap(study)
                time.sleep(TAIL_WAIT_SECONDS)
                continue
            if deadline is not None and _no_time_for_an_epoch(study, deadline, log, worker_index):
                # Idle until the deadline, when the timer sets STOP (a trial started now
                # would be stopped before its first epoch and queued again for nothing).
                if not STOP.wait(max(0.0, deadline - time.time())):
                    TIME_UP.set()  # the deadline came before its timer's thread ran
                break
            try:
                study.optimize(objective, n_trials=1, callbacks=[prune])
            except Interrupted:
                requeue(study, objective.last_trial)
                # The supervisor's SIGTERM at the deadline may come before this timer fires.
                if deadline is not None and time.time() >= deadline:
                    TIME_UP.set()
                if not TIME_UP.is_set():
                    raise
                log(f"worker {worker_index}: its running trial was stopped and queued again")
                break
            n_run += 1
    finally:
        if timer is not None:
            timer.cancel()
    if TIME_UP.is_set():
        log(f"worker {worker_index}: time limit reached")
    summary = progress(study).line(config.trials.n_trials, config.study.metric)
    log(f"worker {worker_index}: ran {n_run} trials; {summary}")
    return n_run


def _no_time_for_an_epoch(
    study: optuna.Study, deadline: float, log: Callable[[str], None], worker_index: int
) -> bool:
    """Less time is left before the deadline than the study's typical epoch takes."""
    from search.pacing import EPOCH_SAFETY, typical_epoch_seconds

    typical = typical_epoch_seconds(study, exclude=-1, first=True)
    left = deadline - time.time()
    if typical is None or left >= typical * EPOCH_SAFETY:
        return False
    log(
        f"worker {worker_index}: {left:.0f} s left, less than the study's typical first"
        f" epoch ({typical:.0f} s): no new trial"
    )
    return True


def _start_timer(deadline: float) -> threading.Timer:
    """Set TIME_UP and STOP at `deadline` (a Unix time), from a thread of its own."""

    def time_up() -> None:
        from search.pacing import STOP

        TIME_UP.set()
        STOP.set()

    # A daemon: a worker that ends before its deadline does not wait for the timer.
    timer = threading.Timer(max(0.0, deadline - time.time()), time_up)
    timer.daemon = True
    timer.start()
    return timer


def supervise(
    config: StudyConfig,
    storage: optuna.storages.BaseStorage,
    *,
    worker_args: list[str],
    n_workers: int,
    log_dir: Path,
    gpus: Sequence[str] | None = None,
    max_restarts: int = 3,
    display: Display | None = None,
) -> int:
    """Run `n_workers` worker processes until the budget is spent; return an exit code.

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
    if deadline is not None:
        # One deadline for every process: a recycled or restarted worker keeps it rather
        # than timing its own full timeout from its start.
        worker_args = [*worker_args, "--deadline", repr(deadline)]
    # Every process gets a new worker index, so a replaced or recycled worker seeds its
    # sampler afresh instead of suggesting its predecessor's first points again.
    starts = itertools.count()
    procs = {
        i: _start_worker(worker_args, i, next(starts), log_dir, gpus) for i in range(n_workers)
    }
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
                procs[i] = _start_worker(worker_args, i, next(starts), log_dir, gpus)
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
    worker_args: list[str],
    slot: int,
    index: int,
    log_dir: Path,
    gpus: Sequence[str] | None = None,
) -> subprocess.Popen:
    log = open(log_dir / f"worker-{slot}.log", "ab")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen(
        [sys.executable, "-m", "search", "worker", *worker_args, "--worker-index", str(index)],
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
