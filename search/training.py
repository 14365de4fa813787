"""Fitting a built model on a Dataset with its config's training settings.

Shared by the trials and the final retraining, so both train the same way: on arrays in
memory (Fashion-MNIST, .npz), or on batches streamed from image files (`dir:PATH`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from search.data import Dataset
from search.folders import FileSplit

SCHEDULES = ("constant", "step", "cosine", "plateau", "warmup_cosine", "one_cycle")


def learning_rate_callbacks(
    config: dict[str, Any], *, schedule_epochs: int
) -> list[keras.callbacks.Callback]:
    """The callbacks that apply a config's learning-rate schedule.

    Args:
        config: a space config with `learning_rate` and `schedule`.
        schedule_epochs: the horizon of a cosine schedule: the study's max_epochs, also
            when retraining for fewer epochs, so the rate follows the trial's own path.
    """
    schedule = config["schedule"]
    initial = config["learning_rate"]
    name = schedule["name"]
    if name == "constant":
        return []
    if name == "step":
        # Counted from the initial rate, not compounded on the current one (the
        # notebook's bug: its rate collapsed to zero after epoch 11).
        def rate(epoch: int, _: float) -> float:
            return initial * schedule["factor"] ** (epoch // schedule["every"])

        return [keras.callbacks.LearningRateScheduler(rate)]
    if name == "cosine":

        def rate(epoch: int, _: float) -> float:
            return initial * 0.5 * (1 + math.cos(math.pi * epoch / schedule_epochs))

        return [keras.callbacks.LearningRateScheduler(rate)]
    if name == "plateau":
        return [
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=schedule["factor"], patience=schedule["patience"]
            )
        ]
    if name == "warmup_cosine":
        # Linear warm-up over `warmup` epochs to the initial rate, then cosine to zero.
        warmup = schedule["warmup"]

        def rate(epoch: int, _: float) -> float:
            if epoch < warmup:
                return initial * (epoch + 1) / (warmup + 1)
            progress = (epoch - warmup) / max(1, schedule_epochs - warmup)
            return initial * 0.5 * (1 + math.cos(math.pi * progress))

        return [keras.callbacks.LearningRateScheduler(rate)]
    if name == "one_cycle":
        # One cycle (Smith): from a tenth of the rate up to it by `peak` of the epochs,
        # then cosine down to a hundredth.
        up = max(1, round(schedule["peak"] * schedule_epochs))

        def rate(epoch: int, _: float) -> float:
            if epoch < up:
                return initial * (0.1 + 0.9 * epoch / up)
            progress = (epoch - up) / max(1, schedule_epochs - up)
            return initial * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))

        return [keras.callbacks.LearningRateScheduler(rate)]
    raise ValueError(f"schedule is {name!r}, but must be one of {', '.join(SCHEDULES)}")


def fit(
    model: keras.Model,
    config: dict[str, Any],
    data: Dataset,
    *,
    epochs: int,
    schedule_epochs: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = 0,
    shuffle_seed: int = 0,
) -> keras.callbacks.History:
    """Train on the train split, validating on the validation split after every epoch.

    Args:
        shuffle_seed: seeds the order of streamed images (a trial's or retraining's seed);
            arrays are shuffled by Keras from the global seed, as before.
    """
    every_callback = [
        keras.callbacks.TerminateOnNaN(),
        *learning_rate_callbacks(config, schedule_epochs=schedule_epochs or epochs),
        *callbacks,
    ]
    if isinstance(data.train, FileSplit):
        return model.fit(
            data.train.batches(config["batch_size"], shuffle_seed=shuffle_seed),
            # The stream shuffles itself (with the seed); Keras would warn that it cannot.
            shuffle=False,
            epochs=epochs,
            validation_data=data.val.batches(config["batch_size"]),
            callbacks=every_callback,
            verbose=verbose,
        )
    return model.fit(
        data.train.x,
        data.train.y,
        batch_size=config["batch_size"],
        epochs=epochs,
        validation_data=(data.val.x, data.val.y),
        callbacks=every_callback,
        verbose=verbose,
    )


def describe_device() -> str:
    """Where this process trains: "cpu", or "gpu N" (N as CUDA_VISIBLE_DEVICES names it).

    With mixed precision on, the policy follows ("gpu 1, mixed_float16").
    """
    assigned = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not tf.config.list_physical_devices("GPU"):
        # A worker given a GPU on a machine without one (or without CUDA) says so.
        return (
            "cpu" if assigned is None else f"cpu (no GPU visible; CUDA_VISIBLE_DEVICES={assigned})"
        )
    # TensorFlow places a model on the first visible GPU.
    visible = (assigned or "").split(",")[0].strip() or "0"
    policy = keras.mixed_precision.global_policy().name
    return f"gpu {visible}" + ("" if policy == "float32" else f", {policy}")
