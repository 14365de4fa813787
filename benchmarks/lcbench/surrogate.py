"""YAHPO Gym's LCBench surrogate, read with onnxruntime: a config's learning curve and its cost.

`yahpo-gym` itself pins numpy<2, which this project's TensorFlow cannot use, so the vendored
ONNX model (`data/`, see its NOTICE) is run here directly. Its inputs are built as
yahpo_gym's `BenchmarkSet._config_to_xs` builds them for the lcbench entry: the task id
integer-encoded (`encoding.json`) into an int32 array `x_cat`, and the continuous values in
the order `CONT_NAMES` into a float32 array `x_cont`. Its six outputs, in `Y_NAMES` order,
are in their original units (no transformation): validation accuracy in percent, cumulative
training time in seconds up to the epoch, cross-entropies and balanced accuracies.

Only numpy and onnxruntime are imported: the DEHB contestant runs this module in its own
virtual environment (numpy<2).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).parent / "data"
# yahpo_gym/benchmarks/lcbench.py: cont_names and y_names, in the model's order.
CONT_NAMES = (
    "epoch",
    "batch_size",
    "learning_rate",
    "momentum",
    "weight_decay",
    "num_layers",
    "max_units",
    "max_dropout",
)
Y_NAMES = (
    "time",
    "val_accuracy",
    "val_cross_entropy",
    "val_balanced_accuracy",
    "test_cross_entropy",
    "test_balanced_accuracy",
)
MAX_EPOCHS = 52
# An epoch never costs less than this: the surrogate's cumulative time is not always
# increasing (it is a regression fit), and a zero-cost epoch would stall simulated time.
MIN_EPOCH_SECONDS = 0.01


def _config_space() -> dict[str, Any]:
    return json.loads((DATA / "config_space.json").read_text())


def tasks() -> tuple[str, ...]:
    """LCBench's OpenML task ids, as `config_space.json` lists them."""
    hp = next(h for h in _config_space()["hyperparameters"] if h["name"] == "OpenML_task_id")
    return tuple(hp["choices"])


def hyperparameters() -> dict[str, dict[str, Any]]:
    """The searched hyperparameters of `config_space.json` (not the task, not the epoch)."""
    return {
        h["name"]: h
        for h in _config_space()["hyperparameters"]
        if h["name"] not in ("OpenML_task_id", "epoch")
    }


@dataclass(frozen=True)
class Curves:
    """Learning curves of configs on one task: arrays of shape (n_configs, MAX_EPOCHS)."""

    val_accuracy: np.ndarray  # percent, after each epoch
    epoch_seconds: np.ndarray  # what each epoch cost


class Surrogate:
    """The ONNX model, one thread (the benchmark runs one process per core)."""

    def __init__(self, data: Path = DATA) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(data / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self._cat, self._cont = (i.name for i in self._session.get_inputs())
        self._encoding = json.loads((data / "encoding.json").read_text())["OpenML_task_id"]

    def curves(self, task: str, configs: list[dict[str, Any]]) -> Curves:
        """Every epoch's validation accuracy and cost for each config on `task`.

        Raises:
            ValueError: an unknown task, or a config that lacks a hyperparameter.
        """
        y = self._predict(task, configs, np.arange(1, MAX_EPOCHS + 1))
        elapsed = np.maximum.accumulate(y[:, :, Y_NAMES.index("time")], axis=1)
        seconds = np.diff(elapsed, axis=1, prepend=0.0)
        return Curves(
            val_accuracy=y[:, :, Y_NAMES.index("val_accuracy")],
            epoch_seconds=np.maximum(seconds, MIN_EPOCH_SECONDS),
        )

    def final(self, task: str, configs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Each config's validation accuracy after MAX_EPOCHS epochs, and their seconds in all."""
        y = self._predict(task, configs, np.array([MAX_EPOCHS]))
        return y[:, 0, Y_NAMES.index("val_accuracy")], y[:, 0, Y_NAMES.index("time")]

    def _predict(self, task: str, configs: list[dict[str, Any]], epochs: np.ndarray) -> np.ndarray:
        """The model's outputs, shape (n_configs, n_epochs, len(Y_NAMES))."""
        if task not in self._encoding or task == "#na#":
            raise ValueError(f"task is {task!r}, but must be one of {', '.join(tasks())}")
        names = CONT_NAMES[1:]
        for config in configs:
            missing = [n for n in names if n not in config]
            if missing:
                raise ValueError(f"config {config} lacks {', '.join(missing)}")
        n, n_epochs = len(configs), len(epochs)
        x_cont = np.empty((n, n_epochs, len(CONT_NAMES)), dtype=np.float32)
        x_cont[:, :, 0] = epochs
        x_cont[:, :, 1:] = np.array([[c[k] for k in names] for c in configs])[:, None, :]
        x_cat = np.full((n * n_epochs, 1), self._encoding[task], dtype=np.int32)
        (y,) = self._session.run(
            None, {self._cat: x_cat, self._cont: x_cont.reshape(-1, len(CONT_NAMES))}
        )
        return y.reshape(n, n_epochs, len(Y_NAMES)).astype(np.float64)


def sample_configs(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """`n` configs drawn uniformly from `config_space.json` (log-uniformly where log)."""
    columns = {}
    for name, h in hyperparameters().items():
        low, high = h["lower"], h["upper"]
        if h["log"]:
            values = np.exp(rng.uniform(math.log(low), math.log(high), n))
        else:
            values = rng.uniform(low, high, n)
        if h["type"] == "uniform_int":
            values = np.clip(np.round(values), low, high).astype(int)
        columns[name] = values
    return [{name: columns[name][i].item() for name in columns} for i in range(n)]
