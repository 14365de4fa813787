"""Asynchronous workers in simulated time, driving real Optuna studies with curves, not training.

Each worker holds its own `optuna.Study` object on one shared in-memory storage, with its
own sampler and pruner, as `search worker` processes do (`search.worker.run_worker`). A
trial goes as `search.objective` runs one: `space.suggest(trial)`, then one report per
epoch with `step` = epochs trained, `trial.should_prune()` after every epoch but the last,
and at the end the best epoch's value (`search.ranking.best_value`). The curve function
stands in for `fit`: it gives every epoch's value and what the epoch cost.

The simulation is event-driven: the next event is always the end of the epoch that ends
first, so a sampler asked at time t sees exactly the reports made before t.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from search.ranking import best_value


@dataclass(frozen=True)
class Curve:
    """What training a config would give: each epoch's value and each epoch's seconds."""

    values: Sequence[float]
    seconds: Sequence[float]


@dataclass
class Run:
    """What a simulated search saw.

    `best` lists (time, value) at every improvement of the best value reported so far: a
    value counts from the end of the epoch that reached it.
    """

    best: list[tuple[float, float]] = field(default_factory=list)
    n_trials: int = 0
    n_pruned: int = 0
    n_epochs: int = 0


def simulate(
    studies: Sequence[optuna.Study],
    suggest: Callable[[optuna.Trial], dict[str, Any]],
    curve: Callable[[dict[str, Any]], Curve],
    *,
    max_epochs: int,
    seconds: float = math.inf,
    n_trials: int | None = None,
) -> Run:
    """Run one worker per study object until `seconds` of simulated time or `n_trials`.

    Args:
        studies: one study object per worker, all on the same storage.
        suggest: the space's `suggest(trial) -> config`.
        curve: the config's curve, at least `max_epochs` long.
        seconds: simulated time; an epoch ending later is not run.
        n_trials: trials to start in all, at most (None: no limit).

    Returns what the search reported, in the order of simulated time.
    """
    run = Run()
    direction = studies[0].direction
    sign = 1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    # Per worker: its trial, the trial's curve and the epochs it has reported.
    running: dict[int, tuple[optuna.Trial, Curve, list[float]]] = {}
    events: list[tuple[float, int]] = []  # (when the worker's epoch ends, worker)

    def start(worker: int, now: float) -> None:
        if n_trials is not None and run.n_trials >= n_trials:
            return
        trial = studies[worker].ask()
        trial_curve = curve(suggest(trial))
        running[worker] = (trial, trial_curve, [])
        run.n_trials += 1
        heapq.heappush(events, (now + float(trial_curve.seconds[0]), worker))

    for worker in range(len(studies)):
        start(worker, 0.0)
    while events:
        now, worker = heapq.heappop(events)
        if now > seconds:
            break
        trial, trial_curve, values = running[worker]
        epoch = len(values)
        value = float(trial_curve.values[epoch])
        values.append(value)
        run.n_epochs += 1
        if math.isfinite(value) and (not run.best or sign * value > sign * run.best[-1][1]):
            run.best.append((now, value))
        trial.report(value, step=epoch + 1)
        study = studies[worker]
        if epoch + 1 >= max_epochs:
            study.tell(trial, best_value(values, direction.name.lower()))
        elif trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            run.n_pruned += 1
        else:
            heapq.heappush(events, (now + float(trial_curve.seconds[epoch + 1]), worker))
            continue
        del running[worker]
        start(worker, now)
    return run
