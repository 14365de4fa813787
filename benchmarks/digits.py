"""The second dataset of part 1: scikit-learn's bundled 8x8 digits as a study's .npz.

1,797 handwritten digits (8x8, values 0..16, ten classes) ship inside scikit-learn, so the
comparison runs on a real dataset that is not Fashion-MNIST without downloading anything.
They are written in the format `search.data` reads (`dataset = "npz:PATH"`), scaled to
uint8 0..255, with a stratified tenth held out as the test split that the search never
reads.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from search.data import stratified_split

NPZ_NAME = "digits.npz"
# Relative to the directory `search run` starts in (the benchmark's workdir), so records
# name the same dataset on every machine.
DATASET = f"npz:{NPZ_NAME}"
# A quarter held out: about 400 validation images, so one image moves accuracy by 0.0025.
VALIDATION_SPLIT = 0.25
TEST_FRACTION = 0.1


def write_digits_npz(path: Path) -> Path:
    """Write the digits as x_train, y_train, x_test, y_test (uint8 images, int labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.round(digits.images * (255 / 16)).astype(np.uint8)
    y = digits.target.astype(np.int64)
    train, test = stratified_split(y, TEST_FRACTION, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test])
    return path


def digits_sections(base: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The base study on the digits: the same space, sampler, pruner, prior and epochs.

    An epoch of about 1,200 8x8 images takes a second or less on one core, so a trial of
    conv study's 20 epochs takes seconds and a few minutes hold dozens of trials. Fewer
    epochs would judge batch-normalized nets early: at 10 steps an epoch their moving
    statistics lag, and their validation accuracy stays near chance for the first epochs.

    Args:
        base: the base study's sections as its file has them.
    """
    sections = copy.deepcopy(base)
    sections["data"] = {
        "dataset": DATASET,
        "validation_split": VALIDATION_SPLIT,
        "split_seed": 0,
        "train_subset": None,
        "validation_subset": None,
    }
    return sections
