"""Part 3, storage: trials per second with a trivial objective, by worker processes.

Each worker process opens the storage as a search worker does (search.storage.open_storage:
WAL and a busy timeout on SQLite, a small pre-pinged pool on PostgreSQL, heartbeats on
both) and runs one-trial `optimize` calls, as a worker's loop does, for a fixed time.
The objective draws one param, reports one epoch and writes one attribute, the storage
traffic of a trial without its training. Every exception an `optimize` call raises is
counted as a storage error (the goal is none). PostgreSQL is a throwaway local server
(tests/pgserver.py, Debian's `postgresql`).
"""

from __future__ import annotations

import multiprocessing
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from search.record import TrialWriter
from search.storage import open_storage
from tests.pgserver import PostgresServer

WORKER_COUNTS = (1, 2, 4, 8)
# Seconds the workers of a measurement wait for each other to start before giving up.
START_TIMEOUT = 120


def run_storage(*, seconds: float, workdir: Path) -> dict[str, Any]:
    """Measure SQLite and PostgreSQL for every worker count; `seconds` per measurement."""
    print(f"part 3: storage, {seconds:g} s per measurement", flush=True)
    sqlite = workdir / "storage.db"
    sqlite.unlink(missing_ok=True)
    results: dict[str, Any] = {"seconds": seconds, "workers": list(WORKER_COUNTS)}
    results["sqlite"] = _measure(f"sqlite:///{sqlite}", seconds, label="SQLite")
    try:
        server = PostgresServer()
    except FileNotFoundError as e:
        results["postgresql"] = {"skipped": str(e)}
        return results
    with server as pg:
        engine = sqlalchemy.create_engine(pg.url)
        with engine.connect() as conn:
            version = conn.execute(sqlalchemy.text("SHOW server_version")).scalar()
        engine.dispose()
        results["postgresql"] = {
            "server_version": version,
            **_measure(pg.url, seconds, label="PostgreSQL"),
        }
    return results


def _measure(url: str, seconds: float, *, label: str) -> dict[str, Any]:
    storage = open_storage(url)  # creates the tables before the workers race to
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for n_workers in WORKER_COUNTS:
        name = f"storage-{n_workers}-workers"
        optuna.create_study(study_name=name, storage=storage)
        barrier = ctx.Barrier(n_workers)
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=_work, args=(url, name, seconds, barrier, queue))
            for _ in range(n_workers)
        ]
        for proc in procs:
            proc.start()
        reports = [queue.get(timeout=START_TIMEOUT + seconds + 60) for _ in procs]
        for proc in procs:
            proc.join()
        errors: Counter = Counter()
        for report in reports:
            errors.update(report["errors"])
        n_trials = sum(r["trials"] for r in reports)
        elapsed = max(r["seconds"] for r in reports)
        study = optuna.load_study(study_name=name, storage=storage)
        states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
        rows.append(
            {
                "workers": n_workers,
                "trials": n_trials,
                "trials_per_second": n_trials / elapsed,
                "errors": dict(errors),
                "trial_states": dict(states),
            }
        )
        print(f"  {label}, {n_workers} worker(s): {n_trials / elapsed:.1f} trials/s", flush=True)
    return {"rows": rows}


def _objective(trial: optuna.Trial) -> float:
    """A trial's storage traffic without its training: a param, an epoch's report, history."""
    x = trial.suggest_float("x", 0.0, 1.0)
    trial.report(x, step=1)
    TrialWriter(trial).set_history({"val_accuracy": [x]})
    return x


def _work(url: str, study_name: str, seconds: float, barrier, queue) -> None:
    """One worker process: one-trial optimize calls for `seconds`, counting the errors."""
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=study_name, storage=open_storage(url), sampler=optuna.samplers.RandomSampler()
    )
    barrier.wait(timeout=START_TIMEOUT)
    start = time.monotonic()
    n_trials, errors = 0, Counter()
    while time.monotonic() - start < seconds:
        try:
            study.optimize(_objective, n_trials=1)
            n_trials += 1
        except Exception as e:  # a storage error is a result to count, not a crash
            errors[f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"] += 1
    queue.put({"trials": n_trials, "seconds": time.monotonic() - start, "errors": dict(errors)})
