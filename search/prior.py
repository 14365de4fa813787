"""A space's prior in the search: its centre first, then prior samples, mutations and TPE.

As PriorBand does (Mallik et al., NeurIPS 2023), each new trial draws where it comes from:
a sample of the prior (a normal around each param's centre, or the centre's choice most
of the time), a mutation of the best trial so far (a few params moved a little), or the
study's model-based sampler (TPE). Early, while TPE is still sampling at random, the prior
and the incumbent carry most of the weight; later TPE does, so a wrong prior costs a
share of the trials, not the search. The mix is a plain schedule, not PriorBand's
adaptive one. Every trial records its origin (`TrialRecord.origin`, the user attribute
`origin`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from search.storage import params_fixed
from spaces import Prior

PRIOR_CENTRE = "prior centre"
PRIOR_SAMPLE = "prior sample"
MUTATION = "mutation"
SAMPLER = "sampler"
BASELINE = "baseline"
EXPORT = "enqueued export"
RETRY = "retry"
ENQUEUED = "enqueued"

# Chances of each origin while the model-based sampler is still in its random start-up,
# and after it. Without an incumbent yet, the mutation's share goes to the prior. A
# judgement, neither measured nor taken from PriorBand (whose mix adapts as it goes): the
# prior leads while TPE samples at random, TPE leads once it models.
EARLY_WEIGHTS = {PRIOR_SAMPLE: 0.6, MUTATION: 0.2, SAMPLER: 0.2}
LATE_WEIGHTS = {PRIOR_SAMPLE: 0.2, MUTATION: 0.3, SAMPLER: 0.5}
# A mutation moves each param with this chance, by a normal of this standard deviation
# in units of the param's (log) range. PriorBand's local perturbation of the incumbent is
# of this kind; these two values are a judgement, not measured.
MUTATION_RATE = 0.5
MUTATION_STD = 0.15


class PriorError(ValueError):
    """A [prior] table that does not fit the space."""


def resolve_prior(
    space: Any, overrides: Mapping[str, Any], *, source: str
) -> tuple[dict[str, Prior] | None, dict[str, Any] | None]:
    """The space's prior with a study's [prior] centres, and the centre as params.

    The centre's params are those `suggest` draws when every param sits at its centre, so
    the first trial is exactly that config. A space without a `PRIOR` has neither (None).

    Raises:
        PriorError: [prior] centres for a space without a prior, a key that is not one of
            its params, or a centre outside the param's range.
    """
    prior: dict[str, Prior] | None = getattr(space, "PRIOR", None)
    if prior is None:
        if overrides:
            raise PriorError(
                f"{source}: a [prior] table, but the space declares no PRIOR"
                " (spaces/conv.py shows how to give it one)"
            )
        return None, None
    unknown = sorted(set(overrides) - set(prior))
    if unknown:
        raise PriorError(
            f"{source}: unknown key [prior] {unknown[0]}; the space's params are"
            f" {', '.join(prior)}"
        )
    defaults = {name: p.centre for name, p in prior.items()}
    try:
        trial = _replay(defaults | dict(overrides), space)
    except ValueError:
        # Optuna rejects a choice that is not among a categorical param's: find whose.
        for name, value in overrides.items():
            try:
                _replay(defaults | {name: value}, space)
            except ValueError as e:
                raise PriorError(f"{source}: [prior] {name} is {value!r}, but {e}") from None
        raise
    for name, distribution in trial.distributions.items():
        if name in overrides and not _within(distribution, overrides[name]):
            raise PriorError(
                f"{source}: [prior] {name} is {overrides[name]!r}, but must lie in the"
                f" space's range for it: {_describe(distribution)}"
            )
    centred = {
        name: p._replace(centre=overrides[name]) if name in overrides else p
        for name, p in prior.items()
    }
    return centred, dict(trial.params)


def _replay(params: dict[str, Any], space: Any) -> optuna.trial.Trial:
    """A trial that ran `space.suggest` with `params` enqueued (Optuna checks each value)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study()
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.enqueue_trial(params)
    trial = study.ask()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # out-of-range values are reported by the caller
        space.suggest(trial)
    return trial


class PriorSampler(optuna.samplers.BaseSampler):
    """Mixes prior samples, mutations of the incumbent and a base sampler, trial by trial.

    Args:
        prior: each param's centre and spread; params without one are drawn uniformly.
        base: the model-based sampler (TPE), which also sees every trial.
        n_startup_trials: the base sampler's random start-up; the mix shifts after it.
        seed: seeds the choices; give each worker its own.
    """

    def __init__(
        self,
        prior: Mapping[str, Prior],
        *,
        base: optuna.samplers.BaseSampler,
        n_startup_trials: int,
        seed: int | None = None,
    ) -> None:
        self._prior = dict(prior)
        self._base = base
        self._n_startup_trials = n_startup_trials
        self._rng = np.random.RandomState(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        # Per trial number: its origin, and for a mutation the incumbent's params.
        self._origins: dict[int, str] = {}
        self._incumbents: dict[int, dict[str, Any]] = {}

    def origin(self, trial_number: int) -> str:
        """Where this sampler took a trial's params from."""
        return self._origins.get(trial_number, SAMPLER)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()
        self._base.reseed_rng()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)
        # Enqueued or retried: its params are known already.
        if params_fixed(trial):
            self._origins[trial.number] = ENQUEUED
            return
        if trial.params:
            self._origins[trial.number] = RETRY
            return
        trials = study.get_trials(deepcopy=False)
        n_finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        weights = dict(EARLY_WEIGHTS if n_finished < self._n_startup_trials else LATE_WEIGHTS)
        incumbent = best_so_far(trials, study.direction)
        if incumbent is None:
            weights[PRIOR_SAMPLE] += weights.pop(MUTATION)
        names = list(weights)
        p = np.array([weights[n] for n in names])
        origin = names[self._rng.choice(len(names), p=p / p.sum())]
        self._origins[trial.number] = origin
        if origin == MUTATION:
            self._incumbents[trial.number] = dict(incumbent.params)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self.origin(trial.number) != SAMPLER:
            return {}
        return self._base.infer_relative_search_space(study, trial)

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        if self.origin(trial.number) != SAMPLER:
            return {}
        return self._base.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        origin = self.origin(trial.number)
        if origin == SAMPLER:
            return self._base.sample_independent(study, trial, param_name, param_distribution)
        incumbent = self._incumbents.get(trial.number, {})
        if origin == MUTATION and param_name in incumbent:
            value = incumbent[param_name]
            if _within(param_distribution, value):
                return self._mutate(param_distribution, value)
        if param_name in self._prior:
            return self._sample_prior(param_distribution, self._prior[param_name])
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: list[float] | None,
    ) -> None:
        self._base.after_trial(study, trial, state, values)
        # The objective read the origin when the trial started; a worker's maps stay small.
        self._origins.pop(trial.number, None)
        self._incumbents.pop(trial.number, None)

    def _sample_prior(self, distribution: BaseDistribution, prior: Prior) -> Any:
        if isinstance(distribution, CategoricalDistribution):
            others = [c for c in distribution.choices if c != prior.centre]
            if prior.centre in distribution.choices and (
                not others or self._rng.rand() >= prior.spread
            ):
                return prior.centre
            return others[self._rng.randint(len(others))] if others else prior.centre
        centre = _to_unit(distribution, prior.centre)
        for _ in range(20):  # a truncated normal, by rejection
            u = self._rng.normal(centre, prior.spread)
            if 0.0 <= u <= 1.0:
                break
        return _from_unit(distribution, float(np.clip(u, 0.0, 1.0)))

    def _mutate(self, distribution: BaseDistribution, value: Any) -> Any:
        if self._rng.rand() >= MUTATION_RATE:
            return value
        if isinstance(distribution, CategoricalDistribution):
            others = [c for c in distribution.choices if c != value]
            return others[self._rng.randint(len(others))] if others else value
        u = _to_unit(distribution, value) + self._rng.normal(0.0, MUTATION_STD)
        # Reflected at the range's ends, so values near an end are not piled onto it.
        u = abs(u) if u < 0 else (2.0 - u if u > 1 else u)
        return _from_unit(distribution, float(np.clip(u, 0.0, 1.0)))


def best_so_far(
    trials: list[FrozenTrial], direction: optuna.study.StudyDirection
) -> FrozenTrial | None:
    """The incumbent: the trial that got furthest (most epochs reported), best there.

    Running trials count too: under successive halving, the trial that passed the most
    rungs is the one the pruner believes in.
    """
    sign = 1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    best, best_key = None, None
    for t in trials:
        if t.state == TrialState.FAIL or t.state == TrialState.WAITING:
            continue
        steps = [s for s, v in t.intermediate_values.items() if math.isfinite(v)]
        if not steps:
            continue
        last = max(steps)
        key = (last, sign * t.intermediate_values[last])
        if best_key is None or key > best_key:
            best, best_key = t, key
    return best


def _within(distribution: BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return any(value == c and type(value) is type(c) for c in distribution.choices)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(distribution, IntDistribution) and value != int(value):
        return False
    return distribution.low <= value <= distribution.high


def _to_unit(distribution: BaseDistribution, value: float) -> float:
    low, high = distribution.low, distribution.high
    if high == low:
        return 0.5
    if distribution.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def _from_unit(distribution: BaseDistribution, u: float) -> Any:
    low, high = distribution.low, distribution.high
    if distribution.log:
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        value = low + u * (high - low)
    step = getattr(distribution, "step", None)
    if step is not None:
        value = low + round((value - low) / step) * step
    value = min(max(value, low), high)
    return int(round(value)) if isinstance(distribution, IntDistribution) else float(value)


def _describe(distribution: BaseDistribution) -> str:
    if isinstance(distribution, CategoricalDistribution):
        return f"one of {list(distribution.choices)}"
    assert isinstance(distribution, FloatDistribution | IntDistribution)
    scale = ", log scale" if distribution.log else ""
    return f"{distribution.low} to {distribution.high}{scale}"
