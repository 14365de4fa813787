"""Spaces used only by tests: a tiny dense net, and one whose first trial diverges."""

from __future__ import annotations

import math
from typing import Any

import keras

from spaces import compile_model

BASELINES: dict[str, dict[str, Any]] = {}


def suggest(trial) -> dict[str, Any]:
    units = trial.suggest_int("units", 8, 32)
    # Trial 0 gets an infinite rate: SGD's first step makes the weights infinite or NaN (a
    # zero gradient times infinity), so the loss is NaN from the second batch on. (At 1e12
    # the ReLUs sometimes died instead and the loss stayed finite.)
    learning_rate = math.inf if trial.number == 0 else 1e-3
    return {
        "units": units,
        "optimizer": "sgd" if trial.number == 0 else "adam",
        "learning_rate": learning_rate,
        "schedule": {"name": "constant"},
        "batch_size": 64,
    }


def build(config: dict[str, Any], input_shape, num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Rescaling(1.0 / 255)(x)
    x = keras.layers.Dense(config["units"], activation="relu")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return compile_model(keras.Model(inputs, outputs), config)
