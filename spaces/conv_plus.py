"""The conv space plus two convs per block and label smoothing, with recipes that use them.

On top of `spaces.conv`: `convs_per_block` (1 or 2) and `label_smoothing` (0-0.2). Configs
build with `spaces.conv.build`; the notebook's Q5 models are points here too, with both
additions off, and its baselines start with two recipes: model_d's network with two convs
per block or less dropout, label smoothing and a cosine decay (`RECIPES`).

What was tried and left out: augmentation (random shifts, flips, erasing), a
global-average-pooling head, AdamW and warm-up/one-cycle schedules. On this budget (trials
of at most 20 epochs on 2 CPU cores) none of them helped. In single validation runs, shifts
of 3% of the side cost model_d with label smoothing and a cosine decay 0.008, and shifts of
10% with flips and a warm-up 0.022 (`benchmarks/results/conv-pilots.md`). In the 55-minute
target search over the wider space no TPE trial completed, and those with flips, erasing
above 0.1, the pooling head, AdamW or the warm-up/one-cycle schedules were pruned within 3
epochs (`benchmarks/results/targets-conv_plus.md`). `spaces.conv.build` still builds
augmentation and the pooling head (`augment`, head `pooling`) for a space of your own.
"""

from __future__ import annotations

from typing import Any

import optuna

from spaces import conv

build = conv.build


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """Draw a conv-net config, with the additions, from the trial."""
    return conv.suggest(trial) | {
        "convs_per_block": trial.suggest_int("convs_per_block", 1, 2),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
    }


def to_params(config: dict[str, Any]) -> dict[str, Any]:
    """The params for which `suggest` returns `config`."""
    return conv.to_params(config) | {
        "convs_per_block": config["convs_per_block"],
        "label_smoothing": config["label_smoothing"],
    }


def plain(config: dict[str, Any]) -> dict[str, Any]:
    """A `spaces.conv` config as a point of this space: both additions off."""
    return config | {"convs_per_block": 1, "label_smoothing": 0.0}


def _recipe(**changes: Any) -> dict[str, Any]:
    # The notebook's model_d network, label smoothing 0.1 and a cosine decay, no augmentation.
    return plain(conv.BASELINES["model_d"]) | {
        "label_smoothing": 0.1,
        "schedule": {"name": "cosine"},
        "batch_size": 64,
        **changes,
    }


RECIPES: dict[str, dict[str, Any]] = {
    # Two convs per block: 0.9395 validation accuracy after 15 epochs (about 2 min each).
    "recipe_two_convs": _recipe(convs_per_block=2),
    # Half model_d's dropout: 0.9334 after 20 epochs (about 40 s each).
    "recipe_light_dropout": _recipe(
        blocks=[
            {"filters": 32, "dropout": 0.1},
            {"filters": 64, "dropout": 0.1},
            {"filters": 128, "dropout": 0.2},
        ],
        head={"units": 128, "batch_norm": True, "dropout": 0.3},
    ),
}
"""Starting points, chosen by validation accuracy alone (single 1-thread runs on the study's
split, one seed each). With model_d's dropout and one conv per block the same training
reached 0.9289 after 20 epochs."""

BASELINES: dict[str, dict[str, Any]] = RECIPES | {
    name: plain(config) for name, config in conv.BASELINES.items()
}
"""The recipes first (they start while the workers are idle), then the notebook's models."""
