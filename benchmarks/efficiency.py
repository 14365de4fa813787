"""Part 1, search efficiency: the best validation accuracy each contestant reaches in time.

Three contestants search the conv space on the same split for the same wall-clock budget,
one after another on the same machine: this service (TPE + Hyperband, workers = cores),
the hand loop (random sampling, no pruning, the same workers) and KerasTuner's Hyperband
(one process on all cores, as a Keras user runs it). The clock starts when the contestant's
process is launched, so starting up and loading data count. A model counts from the
moment its trial ends, with the best validation accuracy of its epochs; trials still
running when the budget ends do not count. None of them starts from the notebook's models.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from benchmarks.harness import (
    UNBOUNDED_TRIALS,
    bench_env,
    best_epoch_value,
    completed_epochs,
    run_search,
    study_trials,
    worker_load_seconds,
    write_study,
)
from search.config import load_config

CONTESTANTS = {
    "search": "this service: TPE + Hyperband",
    "hand": "hand loop: random, no pruning",
    "kerastuner": "KerasTuner Hyperband",
}
THRESHOLDS = (0.90, 0.915, 0.925)


def run_efficiency(
    base: dict[str, dict[str, Any]],
    *,
    budget_minutes: float,
    seeds: int,
    workdir: Path,
    contestants: tuple[str, ...] = tuple(CONTESTANTS),
) -> list[dict[str, Any]]:
    """Run the contestants (all by default) once per seed; return one record per run."""
    records = []
    for seed in range(seeds):
        for contestant in contestants:
            print(f"part 1: {contestant}, seed {seed}, {budget_minutes:g} min", flush=True)
            study_file = write_study(
                workdir / f"{contestant}-seed{seed}.toml",
                _sections(base, contestant, seed=seed, budget_minutes=budget_minutes),
            )
            run = _run_kerastuner if contestant == "kerastuner" else _run_optuna
            load = os.getloadavg()[0]
            record = run(study_file, budget_seconds=budget_minutes * 60, workdir=workdir)
            records.append(
                {
                    "contestant": contestant,
                    "seed": seed,
                    "budget_minutes": budget_minutes,
                    "load_average": [load, os.getloadavg()[0]],
                    **record,
                    **_summary(record["finished"]),
                }
            )
    return records


def _sections(
    base: dict[str, dict[str, Any]], contestant: str, *, seed: int, budget_minutes: float
) -> dict[str, dict[str, Any]]:
    sections = copy.deepcopy(base)
    sections["study"] |= {"name": f"{contestant}-seed{seed}", "seed": seed}
    hand = contestant == "hand"
    sections["trials"] |= {
        "n_trials": UNBOUNDED_TRIALS,
        "timeout_minutes": budget_minutes,
        "sampler": "random" if hand else "tpe",
        "pruner": "none" if hand else "hyperband",
        "enqueue_baselines": False,
    }
    return sections


def _run_optuna(study_file: Path, *, budget_seconds: float, workdir: Path) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    storage = f"sqlite:///{workdir / (study_file.stem + '.db')}"
    started = run_search(
        study_file,
        storage=storage,
        workers=cores,
        threads=1,
        cwd=workdir,
        budget_seconds=budget_seconds,
    )
    deadline = started + dt.timedelta(seconds=budget_seconds)
    began = [
        t for t in study_trials(study_file.stem, storage) if _before(t.datetime_start, deadline)
    ]
    ended = [
        t
        for t in began
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and _before(t.datetime_complete, deadline)
    ]
    finished = sorted(
        ((t.datetime_complete - started).total_seconds(), best_epoch_value(t)) for t in ended
    )
    return {
        "workers": cores,
        "threads_per_worker": 1,
        "finished": [[round(s, 1), v] for s, v in finished if math.isfinite(v)],
        "trials_started": len(began),
        "trials_pruned": sum(t.state == TrialState.PRUNED for t in ended),
        "trials_full": sum(t.state == TrialState.COMPLETE for t in ended),
        "trials_failed": sum(
            t.state == TrialState.FAIL and _before(t.datetime_complete, deadline) for t in began
        ),
        "epochs_in_finished_trials": sum(completed_epochs(t) for t in ended),
        "data_load_seconds": worker_load_seconds(workdir, study_file.stem),
    }


def _before(when: dt.datetime | None, deadline: dt.datetime) -> bool:
    return when is not None and when <= deadline


def _run_kerastuner(study_file: Path, *, budget_seconds: float, workdir: Path) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    events = workdir / f"{study_file.stem}.jsonl"
    cmd = [sys.executable, "-m", "benchmarks.kerastuner_conv", str(study_file)]
    cmd += ["--events", str(events), "--directory", str(workdir / "kerastuner")]
    cmd += ["--threads", str(cores)]
    log = workdir / f"{study_file.stem}.log"
    events.unlink(missing_ok=True)
    started = time.time()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=bench_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=budget_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        else:
            raise RuntimeError(
                f"KerasTuner exited before its budget ({proc.returncode}); see {log}"
            )
    records = (
        [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    )
    in_time = [r for r in records if r["time"] - started <= budget_seconds]
    began = [r for r in in_time if r["event"] == "begin"]
    ended = [r for r in in_time if r["event"] == "end" and r["status"] == "COMPLETED"]
    continued = {r["continues"] for r in began if r["continues"]}
    # A model is a trial that continues no other; it stopped early when it ended below
    # max_epochs and was not continued (not promoted, or still waiting for promotion).
    max_epochs = load_config(study_file).trials.max_epochs
    final = [r for r in ended if r["trial_id"] not in continued]
    finished = sorted(
        (r["time"] - started, r["score"])
        for r in ended
        if r["score"] is not None and math.isfinite(r["score"])
    )
    return {
        "workers": 1,
        "threads_per_worker": cores,
        "finished": [[round(s, 1), v] for s, v in finished],
        "trials_started": sum(r["continues"] is None for r in began),
        "trials_continued": sum(r["continues"] is not None for r in began),
        "trials_pruned": sum(r["epochs"] < max_epochs for r in final),
        "trials_full": sum(r["epochs"] >= max_epochs for r in final),
        "trials_failed": sum(r["event"] == "end" and r["status"] != "COMPLETED" for r in in_time),
        "epochs_in_finished_trials": sum(r["epochs"] - r["initial_epoch"] for r in ended),
    }


def _summary(finished: list[list[float]]) -> dict[str, Any]:
    """Best value at the end and the seconds until each threshold was first reached."""
    best = max((v for _, v in finished), default=None)
    time_to = {}
    for threshold in THRESHOLDS:
        reached = [s for s, v in finished if v >= threshold]
        time_to[f"{threshold:g}"] = min(reached, default=None)
    return {"best": best, "seconds_to": time_to}
