"""DEHB (Awad, Mallik & Hutter, IJCAI 2021) on the LCBench surrogate, with simulated workers.

DEHB 0.1.2, the newest on PyPI, pins numpy<2, which this project's TensorFlow cannot share,
so it runs in its own virtual environment (`make lcbench-deps` makes `.venv-dehb`), as
`python -m benchmarks.lcbench.dehb_run`: one job per line of JSON on stdin, one record per
line of JSON on stdout. Only numpy, onnxruntime, ConfigSpace and dehb are imported here.

DEHB is driven through its own ask/tell interface, asynchronously: a free worker asks for
a job as soon as it is free, as DEHB's own `run` does with several workers. A job trains
a config for the job's fidelity in epochs from scratch (DEHB does not continue a config
from a lower fidelity) and tells DEHB the last epoch's validation accuracy (negated, as
DEHB minimizes) and the job's seconds. Each epoch's value counts for the best-so-far from
the end of that epoch, as in the Optuna contestants' simulation.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import sys
import tempfile
from typing import Any

import numpy as np

from benchmarks.lcbench.surrogate import MAX_EPOCHS, Surrogate, hyperparameters

ETA = 3


def run_dehb(
    surrogate: Surrogate,
    *,
    task: str,
    seed: int,
    seconds: float,
    n_workers: int,
    min_epochs: int,
) -> dict[str, Any]:
    """One DEHB search of `seconds` of simulated time; the record's fields as `simulate.Run`.

    DEHB's fidelities are `MAX_EPOCHS` / ETA**k; its smallest is chosen so that, rounded up
    to whole epochs, its rungs are those of successive halving from `min_epochs`.
    """
    from dehb import DEHB
    from loguru import logger

    n_rungs = math.ceil(math.log(MAX_EPOCHS / min_epochs) / math.log(ETA) - 1e-9)
    with tempfile.TemporaryDirectory() as output:
        dehb = DEHB(
            cs=_config_space(seed),
            min_fidelity=MAX_EPOCHS / ETA**n_rungs,
            max_fidelity=MAX_EPOCHS,
            eta=ETA,
            n_workers=1,  # no Dask client: the workers are simulated here
            seed=seed,
            output_path=output,
            save_freq="end",
            log_level="ERROR",
        )
        record = _simulate(dehb, surrogate, task=task, seconds=seconds, n_workers=n_workers)
        # DEHB adds a log file handler per instance; a long-lived process drops them.
        logger.remove()
    return record


def _simulate(
    dehb: Any, surrogate: Surrogate, *, task: str, seconds: float, n_workers: int
) -> dict[str, Any]:
    seen: list[tuple[float, float]] = []  # (end of an epoch, its value)
    events: list[tuple[float, int]] = []  # (end of the worker's job, worker)
    jobs: dict[int, tuple[dict[str, Any], float, float]] = {}  # worker -> job, value, seconds
    n_trials = 0

    def start(worker: int, now: float) -> None:
        nonlocal n_trials
        job = dehb.ask()
        epochs = math.ceil(job["fidelity"] - 1e-9)
        curves = surrogate.curves(task, [dict(job["config"])])
        values = curves.val_accuracy[0, :epochs]
        ends = now + np.cumsum(curves.epoch_seconds[0, :epochs])
        seen.extend((float(t), float(v)) for t, v in zip(ends, values, strict=True))
        jobs[worker] = (job, float(values[-1]), float(ends[-1] - now))
        n_trials += 1
        heapq.heappush(events, (float(ends[-1]), worker))

    for worker in range(n_workers):
        start(worker, 0.0)
    while events:
        now, worker = heapq.heappop(events)
        if now > seconds:
            break
        job, value, cost = jobs.pop(worker)
        dehb.tell(job, {"fitness": -value, "cost": cost})
        start(worker, now)
    best: list[tuple[float, float]] = []
    for t, v in sorted(seen):
        if t <= seconds and math.isfinite(v) and (not best or v > best[-1][1]):
            best.append((t, v))
    n_epochs = sum(t <= seconds for t, _ in seen)
    return {"best": best, "n_trials": n_trials, "n_pruned": 0, "n_epochs": n_epochs}


def _config_space(seed: int) -> Any:
    from ConfigSpace import ConfigurationSpace, Float, Integer

    space = ConfigurationSpace(seed=seed)
    for name, h in hyperparameters().items():
        kind = Integer if h["type"] == "uniform_int" else Float
        space.add(kind(name, (h["lower"], h["upper"]), log=h["log"]))
    return space


def main() -> None:
    """Serve jobs: each stdin line {"task", "seed", "seconds", "n_workers", "min_epochs"}."""
    # Records go to the real stdout; anything a library prints goes to stderr instead.
    records = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    surrogate = Surrogate()
    for line in sys.stdin:
        job = json.loads(line)
        record = run_dehb(surrogate, **job)
        records.write(json.dumps(record) + "\n")
        records.flush()


if __name__ == "__main__":
    main()
