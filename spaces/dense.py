"""Dense nets: 1-4 hidden layers with width, dropout, L1 activity regularization, batch norm.

Training settings are searched too: Adam or AdamW (decoupled weight decay), learning rate
and its schedule (constant, step decay, cosine, warm-up + cosine), label smoothing, batch
size, and data augmentation in training only (small random shifts, horizontal flips).
The notebook's Q3-Q4 models are points of this space (`BASELINES`), every addition off.
"""

from __future__ import annotations

from typing import Any

import keras
import optuna

from spaces import compile_model, schedule_params, suggest_schedule
from spaces.conv import augmentation

BATCH_SIZES = [32, 64, 128, 256]
SCHEDULES = ("constant", "step", "cosine", "warmup_cosine")
OPTIMIZERS = ["adam", "adamw"]


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """Draw a dense-net config from the trial."""
    n_layers = trial.suggest_int("n_layers", 1, 4)
    use_l1 = trial.suggest_categorical("use_l1", [False, True])
    config: dict[str, Any] = {
        "units": [trial.suggest_int(f"units_l{i}", 32, 1024, log=True) for i in range(n_layers)],
        "dropout": [trial.suggest_float(f"dropout_l{i}", 0.0, 0.5) for i in range(n_layers)],
        # Off, or a log-scaled strength: the notebook's 1e-4 sits in the middle.
        "l1": trial.suggest_float("l1", 1e-6, 1e-2, log=True) if use_l1 else 0.0,
        "batch_norm": trial.suggest_categorical("batch_norm", [False, True]),
        "augment": {
            "shift": trial.suggest_float("augment_shift", 0.0, 0.1),
            "flip": trial.suggest_categorical("augment_flip", [False, True]),
        },
        "optimizer": trial.suggest_categorical("optimizer", OPTIMIZERS),
    }
    if config["optimizer"] == "adamw":
        config["weight_decay"] = trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True)
    return config | {
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
        "schedule": suggest_schedule(trial, SCHEDULES),
        "batch_size": trial.suggest_categorical("batch_size", BATCH_SIZES),
    }


def to_params(config: dict[str, Any]) -> dict[str, Any]:
    """The params for which `suggest` returns `config`."""
    params: dict[str, Any] = {"n_layers": len(config["units"]), "use_l1": config["l1"] > 0}
    for i, (units, dropout) in enumerate(zip(config["units"], config["dropout"], strict=True)):
        params[f"units_l{i}"] = units
        params[f"dropout_l{i}"] = dropout
    if config["l1"] > 0:
        params["l1"] = config["l1"]
    params["batch_norm"] = config["batch_norm"]
    # Configs exported before the additions existed have none of their keys: all off.
    augment = config.get("augment", {})
    params["augment_shift"] = augment.get("shift", 0.0)
    params["augment_flip"] = augment.get("flip", False)
    params["optimizer"] = config["optimizer"]
    if config["optimizer"] == "adamw":
        params["weight_decay"] = config["weight_decay"]
    params["label_smoothing"] = config.get("label_smoothing", 0.0)
    params["learning_rate"] = config["learning_rate"]
    params |= schedule_params(config["schedule"])
    params["batch_size"] = config["batch_size"]
    return params


def build(config: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Build and compile the dense net a config describes."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for layer in augmentation(config.get("augment")):
        x = layer(x)
    x = keras.layers.Flatten()(x)
    for units, dropout in zip(config["units"], config["dropout"], strict=True):
        regularizer = keras.regularizers.L1(config["l1"]) if config["l1"] > 0 else None
        x = keras.layers.Dense(units, activation="relu", activity_regularizer=regularizer)(x)
        if config["batch_norm"]:
            x = keras.layers.BatchNormalization()(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return compile_model(keras.Model(inputs, outputs, name="dense"), config)


def _notebook(units: list[int], dropout: float = 0.0, l1: float = 0.0) -> dict[str, Any]:
    # Every notebook dense model: Adam at Keras' default rate, batch 32, no batch norm.
    return {
        "units": units,
        "dropout": [dropout] * len(units),
        "l1": l1,
        "batch_norm": False,
        "augment": {"shift": 0.0, "flip": False},
        "optimizer": "adam",
        "label_smoothing": 0.0,
        "learning_rate": 1e-3,
        "schedule": {"name": "constant"},
        "batch_size": 32,
    }


# The notebook's L1 strength is shown only for model_7 (1e-4); model_5/6 use the same.
BASELINES: dict[str, dict[str, Any]] = {
    "model_0": _notebook([128]),
    "model_1": _notebook([256, 512]),
    "model_2": _notebook([512, 256]),
    "model_3": _notebook([512, 256], dropout=0.5),
    "model_4": _notebook([1024, 512, 256]),
    "model_5": _notebook([512, 256], l1=1e-4),
    "model_6": _notebook([512, 256], dropout=0.5, l1=1e-4),
    "model_7": _notebook([1024, 512, 256], dropout=0.5, l1=1e-4),
}
