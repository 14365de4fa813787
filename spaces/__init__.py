"""Search spaces: one module per model family.

A space module has `suggest(trial) -> dict` (define-by-run, returns a plain JSON-able
config that includes its training settings), `build(config, input_shape, num_classes)`
(a compiled keras.Model; never sees a trial) and `BASELINES` (the notebook's models as
params: `suggest(optuna.trial.FixedTrial(params))` is their config). Training settings
every space shares: `optimizer`, `learning_rate`, `schedule` and `batch_size`; optional:
`weight_decay` (with the "adamw" optimizer) and `label_smoothing`.

Optional: `PRIOR` (what one believes before any trial: a `Prior` per param, read by
`search.prior`), `OPTIONS` (fixed settings with defaults, set in a study's [space] table)
and `warning(config) -> str | None` (why a config's results would mislead; the trial
records it).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, NamedTuple

SPACES = ("dense", "conv", "transfer")
# Batch norm's running statistics follow the weights over about ten steps (PyTorch's
# default). Keras' 0.99 averages over a hundred or more, so early in training, or on a
# small dataset with few steps per epoch, a model is validated with stale statistics and
# scores far below what it learned: what a pruner judging early epochs would see.
BN_MOMENTUM = 0.9
REQUIRED = ("suggest", "build", "BASELINES")


class Prior(NamedTuple):
    """A belief about one param: where the search starts, and how sure one is.

    `spread` is, for a number, the standard deviation of a normal around `centre` in
    units of the param's range (of its logarithm where the param is log-scaled); for a
    choice, the chance of drawing one of the other choices instead of `centre`.
    """

    centre: Any
    spread: float


class SpaceError(ValueError):
    """A space name that does not resolve to a usable space module."""


def load_space(name: str) -> ModuleType:
    """Import a space by short name ("conv") or dotted module path ("mypkg.myspace")."""
    module_name = f"spaces.{name}" if "." not in name else name
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            raise SpaceError(
                f"space is {name!r}, but no module {module_name} exists; built-in spaces:"
                f" {', '.join(SPACES)}, or a dotted module path"
            ) from e
        raise
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    if missing:
        raise SpaceError(f"space {name!r} ({module.__file__}) lacks {', '.join(missing)}")
    return module


def compile_model(model: Any, config: dict[str, Any], *, optimizer: Any = None) -> Any:
    """Compile with the config's optimizer and learning rate, for integer labels.

    A config's `label_smoothing` (0 when absent) above 0 trains with smoothed labels
    (`spaces.losses`); its `weight_decay` is AdamW's decoupled weight decay.

    Args:
        optimizer: the space's own optimizer instead (e.g. one with two learning rates).
    """
    import keras

    optimizers = {
        "adam": lambda lr: keras.optimizers.Adam(learning_rate=lr),
        "adamw": lambda lr: keras.optimizers.AdamW(
            learning_rate=lr, weight_decay=config.get("weight_decay", 0.004)
        ),
        "sgd": lambda lr: keras.optimizers.SGD(learning_rate=lr, momentum=0.9, nesterov=True),
        "rmsprop": lambda lr: keras.optimizers.RMSprop(learning_rate=lr),
    }
    if optimizer is None:
        if config["optimizer"] not in optimizers:
            raise ValueError(
                f"optimizer is {config['optimizer']!r}, but must be one of {sorted(optimizers)}"
            )
        optimizer = optimizers[config["optimizer"]](config["learning_rate"])
    loss: Any = "sparse_categorical_crossentropy"
    if config.get("label_smoothing", 0) > 0:
        from spaces.losses import SparseSmoothedCrossentropy

        loss = SparseSmoothedCrossentropy(config["label_smoothing"])
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=["accuracy"],
    )
    return model


def suggest_schedule(trial: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """Suggest a learning-rate schedule; `search.training` applies it per epoch."""
    name = trial.suggest_categorical("schedule", list(names))
    if name == "step":
        return {
            "name": "step",
            "every": trial.suggest_int("step_every", 2, 15),
            "factor": trial.suggest_float("step_factor", 0.1, 0.5),
        }
    if name == "plateau":
        return {
            "name": "plateau",
            "patience": trial.suggest_int("plateau_patience", 1, 5),
            "factor": trial.suggest_float("plateau_factor", 0.1, 0.5),
        }
    if name == "warmup_cosine":
        return {"name": name, "warmup": trial.suggest_int("warmup_epochs", 1, 3)}
    if name == "one_cycle":
        return {"name": name, "peak": trial.suggest_float("one_cycle_peak", 0.1, 0.5)}
    return {"name": name}
