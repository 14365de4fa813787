"""A worker: one process that runs a study's trials until its budget is spent.

Every worker is this code, however it was started: by `search run`'s supervisor
(`search.supervisor`, which hands it a `WorkerSpec`), by `search worker` on any machine, by
docker-compose, a SLURM job array or a Kubernetes Job. `serve` is its process's body: it
sets the device up, turns Ctrl-C and SIGTERM into a stop between batches and runs
`run_worker`. `python -m search.worker SPEC` is the entry point the supervisor starts.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.budget import progress
from search.checkpoints import open_store, prune_kept
from search.data import Dataset
from search.device import configure_device
from search.failures import check_failures, reap, requeue
from search.record import StudyRecord, write_class_names
from search.settings import Settings
from search.study import load_definition, make_pruner, make_sampler

# Seconds a worker waits for others' last trials (and reaps stale ones) before looking again.
TAIL_WAIT_SECONDS = 2.0
EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED = 130

# Set when a worker's deadline passes; it also sets pacing.STOP, so a running trial stops
# at its next batch and is queued again, and the worker tells a timeout (a normal end, exit 0)
# from a signal.
TIME_UP = threading.Event()


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process runs: a study in a storage, with a process's settings.

    Attributes:
        worker_index: seeds the worker's sampler; every process gets its own.
        deadline: the run's time limit, a Unix time, which a recycled worker keeps.
        max_trials: the process exits after this many trials (a supervisor starts another).
        mixed_precision: float16 compute on a GPU.
    """

    study_name: str
    settings: Settings
    worker_index: int = 0
    deadline: float | None = None
    max_trials: int | None = None
    mixed_precision: bool = False


def serve(
    spec: WorkerSpec,
    *,
    storage: optuna.storages.BaseStorage | None = None,
    data: Dataset | None = None,
) -> int:
    """A worker process's body: set up its device and signals, run trials; an exit code.

    Ctrl-C (which reaches every worker) or SIGTERM (compose, the supervisor, SLURM): the
    running trial stops at its next batch, is failed with its reason and queued again, and
    this returns 130. The study's timeout is its normal end: 0.

    Args:
        storage, data: the caller's, where it opened or loaded them already.
    """
    from search.pacing import STOP, Interrupted
    from search.storage import open_storage

    # Before TensorFlow starts; two 1-thread workers beat one 2-thread worker on CPU.
    configure_device(threads=spec.settings.threads or 1, mixed_precision=spec.mixed_precision)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: STOP.set())
    try:
        run_worker(
            spec.study_name,
            storage or open_storage(spec.settings),
            spec.settings,
            worker_index=spec.worker_index,
            data=data,
            max_trials=spec.max_trials,
            deadline=spec.deadline,
        )
    except Interrupted as e:
        print(f"search worker: stopped ({e}); the trial was queued again", file=sys.stderr)
        return EXIT_INTERRUPTED
    # A timeout is the study's normal end, not an interruption.
    return EXIT_INTERRUPTED if STOP.is_set() and not TIME_UP.is_set() else 0


def write_spec(spec: WorkerSpec, path: Path) -> Path:
    """Write a spec for `python -m search.worker PATH`, which reads and removes it."""
    with open(path, "wb") as f:
        pickle.dump(spec, f)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m search.worker SPEC`: the process a supervisor starts for one worker."""
    import warnings

    from search.errors import USER_ERRORS

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    (path,) = sys.argv[1:] if argv is None else argv
    with open(path, "rb") as f:
        spec: WorkerSpec = pickle.load(f)
    os.unlink(path)
    levels = {-2: optuna.logging.ERROR, -1: optuna.logging.WARNING, 0: optuna.logging.INFO}
    optuna.logging.set_verbosity(levels.get(spec.settings.verbosity, optuna.logging.DEBUG))
    try:
        return serve(spec)
    except USER_ERRORS as e:
        print(f"search worker: error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def run_worker(
    study_name: str,
    storage: optuna.storages.BaseStorage,
    settings: Settings,
    *,
    worker_index: int,
    data: Dataset | None = None,
    max_trials: int | None = None,
    deadline: float | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Run trials of a study until its budget is spent, its time is up or `max_trials` ran.

    Args:
        settings: where checkpoints go, how many kept models, the data's folder and cache.
        data: the study's dataset if the caller has loaded it already; else loaded here.
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
            data = load_study_data(config.data, data_dir=settings.data_dir, cache=settings.cache)
        log(
            f"worker {worker_index}: {config.data.dataset} loaded in"
            f" {time.monotonic() - start:.1f}s"
            f" ({len(data.train)} train, {len(data.val)} validation images);"
            f" training on {describe_device()}"
        )
        if StudyRecord.of(study).class_names is None:
            # What the models' outputs mean, for exports (and their kept models) to carry.
            write_class_names(study, list(data.class_names))
        store = open_store(settings.checkpoints)
        keep = settings.keep_best
        objective = Objective(
            config,
            load_space(config.study.space),
            data,
            store=store,
            keep_best=keep,
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


if __name__ == "__main__":
    sys.exit(main())
