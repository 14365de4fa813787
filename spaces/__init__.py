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
from pathlib import Path
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


# What a config of a user's `Space` trains with where its suggest leaves them out: Keras'
# default batch size and a constant learning rate.
TRAINING_DEFAULTS: dict[str, Any] = {"batch_size": 32, "schedule": {"name": "constant"}}


class Space:
    """A space given in code: a user's own `suggest` and `build`, as a space module has them.

    `search.create_study(space=Space(suggest, build))` saves it with cloudpickle beside the
    study (functions defined in a notebook or a script travel by value), and the study's
    definition names that file (`pickle:PATH`), so workers, `search export` and `search
    retrain` load the same functions.

    Args:
        suggest: `suggest(trial) -> dict`, the config of a trial; training reads its
            `batch_size` and `schedule` (`TRAINING_DEFAULTS` where it names none) and,
            for a schedule other than constant, its `learning_rate`.
        build: `build(config, input_shape, num_classes) -> keras.Model`, compiled
            (`compile_model` compiles with the config's optimizer and learning rate).
        baselines: named params to enqueue (`enqueue_baselines`), as a module's BASELINES.
        prior: a `Prior` per param name, as a module's PRIOR.
        options: fixed settings with defaults, set by a study's [space] table.
        warning: `warning(config) -> str | None`, why a config's results would mislead.
        name: what the space is called in messages (default: build's module and name).
    """

    def __init__(
        self,
        suggest: Any,
        build: Any,
        *,
        baselines: dict[str, dict[str, Any]] | None = None,
        prior: dict[str, Prior] | None = None,
        options: dict[str, Any] | None = None,
        warning: Any = None,
        name: str | None = None,
    ) -> None:
        if not (callable(suggest) and callable(build)):
            raise SpaceError("a Space needs two functions: suggest(trial) and build(config, ...)")
        self.user_suggest = suggest
        self.build = build
        self.BASELINES = dict(baselines or {})
        self.OPTIONS = dict(options or {})
        if prior is not None:
            self.PRIOR = dict(prior)
        if warning is not None:
            self.warning = warning
        self.__name__ = name or f"{build.__module__}.{build.__qualname__}"

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The user's config, with the training settings it leaves out at their defaults."""
        return {**TRAINING_DEFAULTS, **self.user_suggest(trial)}

    def __repr__(self) -> str:
        return f"Space({self.__name__})"


PICKLED = "pickle:"


def save_space(space: Space, path: Path) -> str:
    """Write a Space with cloudpickle (functions by value); returns its name, `pickle:PATH`.

    Written beside and renamed over, so a worker never reads half a file.
    """
    import cloudpickle

    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(cloudpickle.dumps(space))
    tmp.replace(path)
    return f"{PICKLED}{path}"


def load_space(name: str) -> Any:
    """A space by short name ("conv"), dotted module path ("mypkg.myspace") or `pickle:PATH`.

    `pickle:PATH` is a `Space` saved by `save_space`; like a module, loading it runs code, so
    a study's definition must come from a storage one trusts.
    """
    if name.startswith(PICKLED):
        return _load_pickled(name, Path(name[len(PICKLED) :]))
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


def _load_pickled(name: str, path: Path) -> Space:
    import pickle

    try:
        with open(path, "rb") as f:
            space = pickle.load(f)
    except FileNotFoundError:
        raise SpaceError(
            f"space is {name!r}, but no such file: a space given in code is saved there when"
            " its study is created; every worker must reach it (a shared folder)"
        ) from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
        raise SpaceError(f"space is {name!r}, but it cannot be loaded here ({e})") from None
    if not isinstance(space, Space):
        raise SpaceError(f"space is {name!r}, but that file holds no Space")
    return space


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
