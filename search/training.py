"""Fitting a built model on a Dataset with its config's training settings.

Shared by the trials and the final retraining, so both train the same way: on arrays in
memory (Fashion-MNIST, .npz), or on batches streamed from image files (`dir:PATH`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from search.data import Dataset
from search.folders import FileSplit

SCHEDULES = ("constant", "step", "cosine", "plateau", "warmup_cosine", "one_cycle")


class Horizon:
    """The epochs a learning-rate schedule spans, which a trial may set after its first epoch.

    Every schedule's first epoch has the same rate whatever the horizon, so a trial that
    sizes itself from its first epoch's seconds (`search.pacing`) anneals to the end of the
    epochs it planned, as budgeted training does (Li, Yumer & Ramanan, ICLR 2020).
    """

    def __init__(self, epochs: int, *, planned: bool = True) -> None:
        """
        Args:
            planned: False while the epochs are a trial's max_epochs, not yet its plan.
        """
        self.epochs = epochs
        self.planned = planned


def learning_rate_callbacks(
    config: dict[str, Any], *, schedule_epochs: int | Horizon
) -> list[keras.callbacks.Callback]:
    """The callbacks that apply a config's learning-rate schedule.

    Args:
        config: a space config with `learning_rate` and `schedule`.
        schedule_epochs: the horizon of a cosine schedule: the epochs the trial planned,
            also when retraining for fewer epochs, so the rate follows the trial's own path.
    """
    horizon = schedule_epochs if isinstance(schedule_epochs, Horizon) else Horizon(schedule_epochs)
    schedule = config["schedule"]
    name = schedule["name"]
    if name == "constant":
        return []
    initial = config["learning_rate"]
    if name == "step":
        # Counted from the initial rate, not compounded on the current one (the
        # notebook's bug: its rate collapsed to zero after epoch 11).
        def rate(epoch: int, _: float) -> float:
            return initial * schedule["factor"] ** (epoch // schedule["every"])

        return [keras.callbacks.LearningRateScheduler(rate)]
    if name == "cosine":

        def rate(epoch: int, _: float) -> float:
            return initial * 0.5 * (1 + math.cos(math.pi * epoch / horizon.epochs))

        return [keras.callbacks.LearningRateScheduler(rate)]
    if name == "plateau":
        return [
            ResumablePlateau(
                monitor="val_loss", factor=schedule["factor"], patience=schedule["patience"]
            )
        ]
    if name == "warmup_cosine":
        # Linear warm-up over `warmup` epochs to the initial rate, then cosine to zero.
        warmup = schedule["warmup"]

        def rate(epoch: int, _: float) -> float:
            if epoch < warmup:
                return initial * (epoch + 1) / (warmup + 1)
            progress = (epoch - warmup) / max(1, horizon.epochs - warmup)
            return initial * 0.5 * (1 + math.cos(math.pi * progress))

        return [keras.callbacks.LearningRateScheduler(rate)]
    if name == "one_cycle":
        # One cycle (Smith): from a tenth of the rate up to it by `peak` of the epochs,
        # then cosine down to a hundredth.
        def rate(epoch: int, _: float) -> float:
            up = max(1, round(schedule["peak"] * horizon.epochs))
            if epoch < up:
                return initial * (0.1 + 0.9 * epoch / up)
            progress = (epoch - up) / max(1, horizon.epochs - up)
            return initial * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))

        return [keras.callbacks.LearningRateScheduler(rate)]
    raise ValueError(f"schedule is {name!r}, but must be one of {', '.join(SCHEDULES)}")


class ResumablePlateau(keras.callbacks.ReduceLROnPlateau):
    """Keras' reduce-on-plateau whose counters a checkpoint saves and a resumed fit restores."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._restored: dict[str, Any] | None = None

    def state(self) -> dict[str, Any]:
        best = None if self.best is None else float(self.best)
        return {"best": best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def restore(self, state: dict[str, Any]) -> None:
        """Counters to continue from when the next fit begins."""
        self._restored = dict(state)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        if self._restored is not None:
            self.best = self._restored["best"]
            self.wait = self._restored["wait"]
            self.cooldown_counter = self._restored["cooldown_counter"]


def epoch_batches(
    n: int,
    batch_size: int,
    *,
    seed: int,
    first_epoch: int,
    epochs: int,
    load: Callable[[tf.Tensor], Any] | None = None,
) -> tf.data.Dataset:
    """Batches of the positions 0..n-1 for epochs first_epoch..epochs-1, shuffled per epoch.

    Each epoch's order is a permutation drawn from (seed, epoch) alone, so a trial resumed
    at epoch k from its checkpoint trains on the very batches it would have had, and its
    results do not depend on where it was stopped. Batches never span two epochs.

    Args:
        load: mapped over single positions (in parallel) before they are batched.
    """
    seed = int(seed)

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        positions = tf.data.Dataset.from_tensor_slices(order)
        if load is not None:
            positions = positions.map(load, num_parallel_calls=tf.data.AUTOTUNE)
        return positions.batch(batch_size)

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch)


def array_batches(
    x: Any, y: Any, batch_size: int, *, seed: int, first_epoch: int, epochs: int
) -> tf.data.Dataset:
    """Batches of in-memory arrays in `epoch_batches`' order, gathered as Keras does its own.

    As in Keras' array adapter, the arrays enter the pipeline as one dataset element beside
    each batch of positions (not captured by the gathering function), and tf.data's default
    graph rewrites are off: they would serialize the pipeline, arrays included.

    tf.data's autotuning is off too, with a fixed parallelism and prefetch instead. Its
    model thread sleeps in periods that double up to a minute, and a deleted iterator waits
    for the current one to end: 10-45 s at the end of some trials' `fit` in a py-spy dump
    (`RootDataset::Iterator::~Iterator` waiting on `UnboundedThreadPool`), Keras' own array
    path included. Gathering a batch from memory needs no tuning.
    """
    arrays = tf.data.Dataset.from_tensors((tf.convert_to_tensor(x), tf.convert_to_tensor(y)))
    positions = epoch_batches(
        len(x), batch_size, seed=seed, first_epoch=first_epoch, epochs=epochs
    )
    batches = tf.data.Dataset.zip(positions, arrays.repeat()).map(
        lambda i, xy: (tf.gather(xy[0], i), tf.gather(xy[1], i)), num_parallel_calls=2
    )
    return untuned(batches.prefetch(2))


def untuned(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset without tf.data's autotuning and default graph rewrites (`array_batches`)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    return dataset.with_options(options)


def fit(
    model: keras.Model,
    config: dict[str, Any],
    data: Dataset,
    *,
    epochs: int,
    schedule_epochs: int | None = None,
    schedule: Sequence[keras.callbacks.Callback] | None = None,
    initial_epoch: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = 0,
    shuffle_seed: int = 0,
) -> keras.callbacks.History:
    """Train on the train split, validating on the validation split after every epoch.

    Args:
        schedule: the learning-rate callbacks (default: `learning_rate_callbacks`), given
            when the caller saves or restores their state.
        initial_epoch: epochs already trained (a trial resumed from its checkpoint).
        shuffle_seed: with the epoch, the order of the training images (`epoch_batches`).
    """
    if schedule is None:
        schedule = learning_rate_callbacks(config, schedule_epochs=schedule_epochs or epochs)
    batch_size = config["batch_size"]
    order = {"seed": shuffle_seed, "first_epoch": initial_epoch, "epochs": epochs}
    if isinstance(data.train, FileSplit):
        train = data.train.stream(
            lambda load: epoch_batches(len(data.train), batch_size, load=load, **order)
        )
        validation: Any = data.val.batches(batch_size)
    else:
        train = array_batches(data.train.x, data.train.y, batch_size, **order)
        # Keras would make this pipeline itself, autotuned (see `array_batches`).
        validation = untuned(
            tf.data.Dataset.from_tensor_slices((data.val.x, data.val.y)).batch(batch_size)
        )
    return model.fit(
        train,
        # The stream is shuffled per epoch by `epoch_batches`; Keras would warn it cannot.
        shuffle=False,
        epochs=epochs,
        initial_epoch=initial_epoch,
        # One pass over the data per epoch; the batches of all epochs come from one stream.
        steps_per_epoch=math.ceil(len(data.train) / batch_size),
        validation_data=validation,
        callbacks=[keras.callbacks.TerminateOnNaN(), *schedule, *callbacks],
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


def save_model(model: keras.Model, path: Path) -> None:
    """Save a model as a `.keras` file that plain `keras.models.load_model` reads anywhere.

    A trained model may be compiled with this project's own loss (label smoothing,
    `spaces.losses`) or optimizer (transfer's two rates), which a Python without this
    project cannot rebuild. The file holds the same layers and weights compiled with Keras'
    own pieces instead: sparse categorical cross-entropy (no smoothing), plain SGD, accuracy.
    Its predictions are the trained model's; it carries no optimizer state to go on from
    (plain SGD keeps no state per weight, so the file loads without Keras' warning about
    optimizer variables; to train it further, compile it with the optimizer you want).
    """
    try:
        standalone = keras.Model(model.input, model.output, name=model.name)
    except (AttributeError, ValueError):
        # A Sequential model that was never called as a graph (a user's own build) has no
        # input tensor: the same layers, cloned, with the trained weights.
        standalone = keras.models.clone_model(model)
        standalone.set_weights(model.get_weights())
    standalone.compile(
        optimizer=keras.optimizers.SGD(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    standalone.save(path)


def for_raw_images(model: keras.Model, input_shape: tuple[int, int, int]) -> keras.Model:
    """The trained model behind a Resizing to its input size: it takes images of any size.

    For image folders (dir:PATH): its input is decoded images with the study's channels (1
    for grayscale, 3 for rgb) on a 0..255 scale, as keras.utils.load_img(path,
    color_mode=...) gives them; it resizes them as training did (`search.folders.read_image`).
    """
    height, width, channels = input_shape
    inputs = keras.Input(shape=(None, None, channels), name="image")
    resized = keras.layers.Resizing(height, width, name="resize_to_training_size")(inputs)
    # A new graph over the trained layers (`input` and `output`, not the lists `inputs` and
    # `outputs`: one tensor in, one out).
    trained = keras.Model(model.input, model.output, name=model.name)
    return keras.Model(inputs, trained(resized), name=f"{model.name}_any_size")
