"""Best first, whichever way a study's metric goes: one place that knows the direction."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

T = TypeVar("T")


def maximizes(direction: str | optuna.study.StudyDirection) -> bool:
    """Whether a direction ("maximize"/"minimize" or Optuna's enum) wants larger values."""
    if isinstance(direction, optuna.study.StudyDirection):
        return direction == optuna.study.StudyDirection.MAXIMIZE
    return direction == "maximize"


def best_first(
    items: Iterable[T], direction: str | optuna.study.StudyDirection, key: Callable[[T], Any]
) -> list[T]:
    """`items` sorted best first by `key` (stable: ties keep their order)."""
    return sorted(items, key=key, reverse=maximizes(direction))


def ranked_trials(
    trials: Iterable[FrozenTrial], direction: str | optuna.study.StudyDirection
) -> list[FrozenTrial]:
    """The COMPLETE trials, best value first."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return best_first(complete, direction, key=lambda t: t.value)


def best_trial(
    trials: Iterable[FrozenTrial], direction: str | optuna.study.StudyDirection
) -> FrozenTrial | None:
    """The COMPLETE trial with the best value (None if none completed)."""
    ranked = ranked_trials(trials, direction)
    return ranked[0] if ranked else None


def best_value(values: list[float], direction: str | optuna.study.StudyDirection) -> float:
    """The best of some values of the metric."""
    return max(values) if maximizes(direction) else min(values)
