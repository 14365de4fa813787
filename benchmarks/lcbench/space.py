"""LCBench's MLP space as a search space: `suggest(trial) -> dict` and its `PRIOR`.

The same seven hyperparameters and ranges as YAHPO Gym's LCBench surrogate
(`data/config_space.json`): a funnel-shaped MLP trained with SGD for up to 52 epochs. The
task and the epoch are not searched. There is no `build`: the surrogate predicts what
training the config would give (`benchmarks.lcbench.surrogate`).
"""

from __future__ import annotations

from typing import Any

import optuna

from spaces import Prior


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """Draw an LCBench config from the trial."""
    return {
        "batch_size": trial.suggest_int("batch_size", 16, 512, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True),
        "momentum": trial.suggest_float("momentum", 0.1, 0.99),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 0.1),
        "num_layers": trial.suggest_int("num_layers", 1, 5),
        "max_units": trial.suggest_int("max_units", 64, 1024, log=True),
        "max_dropout": trial.suggest_float("max_dropout", 0.0, 1.0),
    }


# The centres are the defaults of config_space.json (the middle of each range, on the log
# scale where the range is logarithmic): a study sets its own with a [prior] table, as the
# benchmark does for its good and misleading priors. The spread, a standard deviation of a
# quarter of each range, is a belief of middling confidence: about two draws in three fall
# within half of the range around the centre.
PRIOR: dict[str, Prior] = {
    "batch_size": Prior(91, 0.25),
    "learning_rate": Prior(0.0031622777, 0.25),
    "momentum": Prior(0.545, 0.25),
    "weight_decay": Prior(0.050005, 0.25),
    "num_layers": Prior(3, 0.25),
    "max_units": Prior(256, 0.25),
    "max_dropout": Prior(0.5, 0.25),
}
