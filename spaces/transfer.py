"""Pretrained backbones (Keras Applications) under a new head, frozen or partly fine-tuned.

The model adapts the images itself, one batch at a time: padding or resizing to the
backbone's input size, grey to 3 channels and the backbone's own preprocessing (the
notebook ran out of memory resizing the whole set up front). The backbone and its weights
are fixed settings (`OPTIONS`, a study's [space] table), not searched. The head and the
backbone learn at two rates: one Adam, whose rate is scaled for the backbone's variables.
The notebook's Q6 model is `BASELINES["mobilenet_v2_frozen"]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import optuna

from spaces import BN_MOMENTUM, Prior, compile_model, suggest_schedule

OPTIONS: dict[str, Any] = {
    "backbone": "mobilenet_v2",
    # "imagenet" (Keras downloads it once into ~/.keras/models), a local weights file of
    # the backbone without its top, or "none": random init, which the trial warns about.
    "weights": "imagenet",
}
# Keras Applications constructor, and the layer that maps 0..255 to what it was trained
# on (None: the backbone preprocesses inside itself).
BACKBONES: dict[str, tuple[Any, Any]] = {
    "mobilenet_v2": (
        keras.applications.MobileNetV2,
        # Its preprocess_input: 0..255 to -1..1.
        lambda: keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocessing"),
    ),
    "efficientnet_b0": (keras.applications.EfficientNetB0, None),
}
# Head layers are named head_*: how the optimizer tells their variables from the backbone's
# (a name survives saving and loading; a variable's path scope does not).
HEAD = "head_"
POOLINGS = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}
BATCH_SIZES = [32, 64, 128]
SCHEDULES = ("constant", "step", "cosine", "plateau")


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """Draw a transfer-learning config from the trial."""
    # 32 is MobileNetV2's smallest input; 96 its smallest with ImageNet weights of its own.
    input_size = trial.suggest_int("input_size", 32, 96, step=16)
    input_fit = trial.suggest_categorical("input_fit", ["pad", "resize"])
    # Layers counted from the backbone's output, weightless ones (activations, adds) too.
    unfrozen_layers = trial.suggest_int("unfrozen_layers", 0, 100, step=10)
    return {
        "input_size": input_size,
        "input_fit": input_fit,
        "unfrozen_layers": unfrozen_layers,
        "head": {
            "pooling": trial.suggest_categorical("head_pooling", list(POOLINGS)),
            "batch_norm": trial.suggest_categorical("head_batch_norm", [False, True]),
            "units": trial.suggest_int("head_units", 32, 1024, log=True),
            "dropout": trial.suggest_float("head_dropout", 0.0, 0.6),
        },
        "optimizer": "adam",
        # The head's rate; schedules scale it and, in proportion, the backbone's.
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True),
        # The backbone's rate as a fraction of the head's; nothing to learn when frozen.
        "backbone_lr_scale": (
            trial.suggest_float("backbone_lr_scale", 1e-3, 1.0, log=True)
            if unfrozen_layers
            else 0.0
        ),
        "schedule": suggest_schedule(trial, SCHEDULES),
        "batch_size": trial.suggest_categorical("batch_size", BATCH_SIZES),
    }


# Where the search starts: the Keras guide "Transfer learning & fine-tuning" where it gives a
# value, a judgement (not measured, and not tuned on any study's data) where it gives none.
# The same for every dataset; the spreads are a judgement too.
PRIOR: dict[str, Prior] = {
    # MobileNetV2's smallest input with ImageNet weights of its own (Keras Applications),
    # images resized to it: a judgement over padding them.
    "input_size": Prior(96, 0.3),
    "input_fit": Prior("resize", 0.2),
    # First train a new head on the frozen backbone (the guide's first step).
    "unfrozen_layers": Prior(0, 0.2),
    # Global average pooling and dropout 0.2 before the classifier, as in the guide; the
    # guide has no hidden layer or batch norm in its head: Dense 128 without batch norm is
    # a judgement.
    "head_pooling": Prior("avg", 0.1),
    "head_batch_norm": Prior(False, 0.3),
    "head_units": Prior(128, 0.2),
    "head_dropout": Prior(0.2, 0.2),
    # Adam at Keras' default 1e-3 for the new head, as the guide compiles it; a backbone
    # being fine-tuned learns a hundredth as fast (the guide fine-tunes at 1e-5).
    "learning_rate": Prior(1e-3, 0.2),
    "backbone_lr_scale": Prior(1e-2, 0.2),
    # A cosine decay (Loshchilov & Hutter 2017), as in the other spaces; batch 64, a
    # judgement.
    "schedule": Prior("cosine", 0.3),
    "batch_size": Prior(64, 0.3),
}


def warning(config: dict[str, Any]) -> str | None:
    """Why this config's results would mislead, if they would; the trial records it."""
    if config["weights"] == "none":
        return (
            f'weights = "none": the {config["backbone"]} backbone is randomly initialized,'
            " not pretrained, so this trial says nothing about transfer learning"
        )
    return None


def build(config: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Build and compile the backbone-plus-head model a config describes.

    Raises:
        ValueError: an unknown backbone, or weights that are neither "imagenet", "none"
            nor an existing file, or ImageNet weights that cannot be downloaded.
    """
    if config["backbone"] not in BACKBONES:
        raise ValueError(
            f"backbone is {config['backbone']!r}, but must be one of {', '.join(BACKBONES)}"
        )
    make_backbone, preprocessing = BACKBONES[config["backbone"]]
    size = config["input_size"]
    inputs = keras.Input(shape=input_shape)
    x = _fit_input(inputs, size, config["input_fit"])
    if input_shape[-1] == 1:
        # Pretrained filters expect RGB: grey repeated to 3 channels.
        x = keras.layers.Concatenate()([x, x, x])
    if preprocessing is not None:
        x = preprocessing()(x)
    backbone = _make_backbone(make_backbone, size, config["weights"])
    _unfreeze_top(backbone, config["unfrozen_layers"])
    # Batch norm keeps its ImageNet statistics even where unfrozen (Keras' fine-tuning
    # guide): small batches of 28x28 clothes would overwrite them.
    x = backbone(x, training=False)
    head = config["head"]
    x = POOLINGS[head["pooling"]](name=f"{HEAD}pooling")(x)
    if head["batch_norm"]:
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{HEAD}batch_norm")(x)
    x = keras.layers.Dense(head["units"], activation="relu", name=f"{HEAD}dense")(x)
    if head["dropout"] > 0:
        x = keras.layers.Dropout(head["dropout"], name=f"{HEAD}dropout")(x)
    # float32 probabilities also under mixed precision (Keras' mixed-precision guide).
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name=f"{HEAD}output"
    )(x)
    optimizer = TwoRateAdam(
        learning_rate=config["learning_rate"],
        head_prefix=HEAD,
        backbone_scale=config["backbone_lr_scale"],
    )
    model = keras.Model(inputs, outputs, name="transfer")
    return compile_model(model, config, optimizer=optimizer)


@keras.saving.register_keras_serializable(package="search")
class TwoRateAdam(keras.optimizers.Adam):
    """Adam at `learning_rate` for the head's variables, `backbone_scale` times it for the rest.

    Scaling the backbone's gradients instead would not do: Adam normalizes them away.
    """

    def __init__(self, *, head_prefix: str, backbone_scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head_prefix = head_prefix
        self.backbone_scale = backbone_scale

    def build(self, variables: list[keras.Variable]) -> None:
        super().build(variables)
        self._backbone_keys = frozenset(
            self._var_key(v) for v in variables if not v.path.startswith(self.head_prefix)
        )

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        # Decided per variable while tracing: no branch in the compiled step.
        if self._var_key(variable) in self._backbone_keys:
            learning_rate = learning_rate * self.backbone_scale
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {
            "head_prefix": self.head_prefix,
            "backbone_scale": self.backbone_scale,
        }


def _fit_input(x: Any, size: int, fit: str) -> Any:
    """Pad images with black (centred) or resize them to size x size."""
    height, width = x.shape[1], x.shape[2]
    if fit == "pad" and height <= size and width <= size:
        top, left = (size - height) // 2, (size - width) // 2
        padding = ((top, size - height - top), (left, size - width - left))
        return keras.layers.ZeroPadding2D(padding)(x)
    # Images larger than the input size are resized even where padding was asked for.
    return keras.layers.Resizing(size, size)(x)


def _make_backbone(make_backbone: Any, size: int, weights: str) -> keras.Model:
    """The backbone without its top, as one layer named "backbone"."""
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise ValueError(
            f'weights is {weights!r}, but must be "imagenet", "none" or an existing weights file'
        )
    try:
        return make_backbone(
            input_shape=(size, size, 3),
            include_top=False,
            weights=None if weights == "none" else weights,
            name="backbone",
        )
    except Exception as e:
        if weights != "imagenet" or isinstance(e, ValueError):
            raise
        # Keras raises a bare Exception when the download fails; as a ValueError it fails
        # the trial with this reason instead of crashing the worker.
        raise ValueError(
            f"cannot load the ImageNet weights ({e}); without internet, set [space] weights"
            ' to a local weights file or "none"'
        ) from e


def _unfreeze_top(backbone: keras.Model, n_layers: int) -> None:
    """Make only the backbone's top `n_layers` layers trainable (0: all frozen)."""
    n_frozen = max(len(backbone.layers) - n_layers, 0)
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= n_frozen


# The notebook's Q6 model: 32x32 zero-padded, frozen MobileNetV2 (alpha 1.0), GAP, BN,
# Dense 512, Dropout 0.5; Adam at Keras' default rate, batch 32, and its
# ReduceLROnPlateau(val_loss, factor 0.1, patience 2). Its EarlyStopping is the pruner's job.
BASELINES: dict[str, dict[str, Any]] = {
    "mobilenet_v2_frozen": {
        "input_size": 32,
        "input_fit": "pad",
        "unfrozen_layers": 0,
        "head_pooling": "avg",
        "head_batch_norm": True,
        "head_units": 512,
        "head_dropout": 0.5,
        "learning_rate": 1e-3,
        "schedule": "plateau",
        "plateau_patience": 2,
        "plateau_factor": 0.1,
        "batch_size": 32,
    },
}
