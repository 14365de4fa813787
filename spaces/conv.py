"""Conv nets: 1-4 conv blocks (conv, optional batch norm, max-pool, dropout) and a dense head.

Training settings are searched too: optimizer, learning rate, its schedule (constant, step
decay counted from the initial rate, cosine, reduce-on-plateau) and batch size. The
notebook's Q5 models are points of this space (`BASELINES`).
"""

from __future__ import annotations

from typing import Any

import keras
import optuna

from spaces import compile_model, schedule_params, suggest_schedule

BATCH_SIZES = [32, 64, 128, 256]
SCHEDULES = ("constant", "step", "cosine", "plateau")


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """Draw a conv-net config from the trial."""
    return suggest_network(trial) | {
        "optimizer": trial.suggest_categorical("optimizer", ["adam", "sgd"]),
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
        "schedule": suggest_schedule(trial, SCHEDULES),
        "batch_size": trial.suggest_categorical("batch_size", BATCH_SIZES),
    }


def suggest_network(trial: optuna.Trial) -> dict[str, Any]:
    """The layers of a config: blocks, kernel, padding, batch norm and dense head."""
    n_blocks = trial.suggest_int("n_blocks", 1, 4)
    return {
        "blocks": [
            {
                "filters": trial.suggest_int(f"filters_b{i}", 16, 256, log=True),
                "dropout": trial.suggest_float(f"dropout_b{i}", 0.0, 0.5),
            }
            for i in range(n_blocks)
        ],
        "kernel_size": trial.suggest_categorical("kernel_size", [3, 5]),
        "padding": trial.suggest_categorical("padding", ["same", "valid"]),
        "batch_norm": trial.suggest_categorical("batch_norm", [False, True]),
        "head": {
            "units": trial.suggest_int("head_units", 32, 512, log=True),
            "batch_norm": trial.suggest_categorical("head_batch_norm", [False, True]),
            "dropout": trial.suggest_float("head_dropout", 0.0, 0.6),
        },
    }


def to_params(config: dict[str, Any]) -> dict[str, Any]:
    """The params for which `suggest` returns `config`."""
    params: dict[str, Any] = {"n_blocks": len(config["blocks"])}
    for i, block in enumerate(config["blocks"]):
        params[f"filters_b{i}"] = block["filters"]
        params[f"dropout_b{i}"] = block["dropout"]
    head = config["head"]
    return params | {
        "kernel_size": config["kernel_size"],
        "padding": config["padding"],
        "batch_norm": config["batch_norm"],
        "head_units": head["units"],
        "head_batch_norm": head["batch_norm"],
        "head_dropout": head["dropout"],
        "optimizer": config["optimizer"],
        "learning_rate": config["learning_rate"],
        **schedule_params(config["schedule"]),
        "batch_size": config["batch_size"],
    }


def build(config: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Build and compile the conv net a config describes.

    Any config builds for any input size: a 'valid' conv that would shrink the feature map
    below 2x2 pads 'same' instead, and pooling stops once the map is 1x1, so deep
    configs on small images are still trained rather than failed.

    Optional keys, which this space leaves out: `convs_per_block` (1 or 2; `conv_plus`
    searches it), `augment` (random shifts, horizontal flips and erasing, in training only)
    and the head's `pooling` ("flatten" or "gap", global average pooling); no built-in
    space searches the last two, which configs exported from `conv_plus` before
    2026-11-26 carry.
    """
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for layer in augmentation(config.get("augment")):
        x = layer(x)
    k = config["kernel_size"]
    for block in config["blocks"]:
        for _ in range(config.get("convs_per_block", 1)):
            size = min(x.shape[1], x.shape[2])
            padding = config["padding"] if size - (k - 1) >= 2 else "same"
            x = keras.layers.Conv2D(block["filters"], k, padding=padding, activation="relu")(x)
            if config["batch_norm"]:
                x = keras.layers.BatchNormalization()(x)
        if min(x.shape[1], x.shape[2]) >= 2:
            x = keras.layers.MaxPooling2D(2)(x)
        if block["dropout"] > 0:
            x = keras.layers.Dropout(block["dropout"])(x)
    head = config["head"]
    if head.get("pooling", "flatten") == "gap":
        x = keras.layers.GlobalAveragePooling2D()(x)
    else:
        x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(head["units"], activation="relu")(x)
    if head["batch_norm"]:
        x = keras.layers.BatchNormalization()(x)
    if head["dropout"] > 0:
        x = keras.layers.Dropout(head["dropout"])(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return compile_model(keras.Model(inputs, outputs, name="conv"), config)


def augmentation(augment: dict[str, Any] | None) -> list[keras.layers.Layer]:
    """Random shifts (a fraction of the side), horizontal flips and erasing (a probability).

    Active in training only. Runs on the rescaled 0..1 images, per batch.
    """
    augment = augment or {}
    layers: list[keras.layers.Layer] = []
    if augment.get("shift", 0) > 0:
        shift = augment["shift"]
        layers.append(keras.layers.RandomTranslation(shift, shift, fill_mode="constant"))
    if augment.get("flip", False):
        layers.append(keras.layers.RandomFlip("horizontal"))
    if augment.get("erase", 0) > 0:
        p = augment["erase"]
        layers.append(keras.layers.RandomErasing(factor=(p, p), value_range=(0, 1)))
    return layers


def _notebook(
    filters: list[int],
    dropout: list[float],
    *,
    padding: str = "same",
    batch_norm: bool = False,
    head_dropout: float = 0.5,
    schedule: dict[str, Any] | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    # Every notebook conv model: 3x3 convs, Dense 128 head, Adam at Keras' default rate.
    return {
        "blocks": [{"filters": f, "dropout": d} for f, d in zip(filters, dropout, strict=True)],
        "kernel_size": 3,
        "padding": padding,
        "batch_norm": batch_norm,
        "head": {"units": 128, "batch_norm": batch_norm, "dropout": head_dropout},
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "schedule": schedule or {"name": "constant"},
        "batch_size": batch_size,
    }


BASELINES: dict[str, dict[str, Any]] = {
    "model_a": _notebook([32], [0.0], padding="valid", head_dropout=0.0, batch_size=64),
    "model_b": _notebook([32, 64, 128], [0.25, 0.25, 0.4]),
    "model_c": _notebook([32, 64, 128, 256], [0.2, 0.3, 0.4, 0.4]),
    # The notebook meant a 10x drop after epochs 10, 20 and 30, counted from 0.001.
    "model_d": _notebook(
        [32, 64, 128],
        [0.25, 0.25, 0.4],
        batch_norm=True,
        schedule={"name": "step", "every": 10, "factor": 0.1},
    ),
}
