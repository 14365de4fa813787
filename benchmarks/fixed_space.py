"""A space of one point, the notebook's model_b: every trial trains the same conv net.

The overhead and workers-on-cores benchmarks need a fixed model, so that what they time
is the service, not the sampler's choice of model. Named by its dotted path:
`space = "benchmarks.fixed_space"` (with the repository on PYTHONPATH).
"""

from __future__ import annotations

from typing import Any

import optuna

from spaces import conv

CONFIG: dict[str, Any] = conv.suggest(optuna.trial.FixedTrial(conv.BASELINES["model_b"]))
BASELINES: dict[str, dict[str, Any]] = {}
build = conv.build


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """model_b's config, whatever the trial."""
    return CONFIG
