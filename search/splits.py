"""The dataset a search sees and how it is split: what `search.data` and `search.folders` share.

A `Dataset` holds a training and a validation split, each images in memory (`Split`) or an
image folder's file list (`search.folders.FileSplit`); both are drawn per class
(`stratified_split`, then `take_subsets` where a study asks for fewer images), and a dataset
that breaks a rule raises a `DataError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from search.folders import FileSplit


class DataError(ValueError):
    """A dataset that cannot be found or breaks a rule; the message names it and the rule."""


@dataclass(frozen=True)
class Split:
    """Images (N, H, W, C) on a 0..255 scale and integer labels (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def example(self, label: int) -> np.ndarray:
        """The first image of a class (H, W, C), on a 0..255 scale."""
        return self.x[np.flatnonzero(self.y == label)[0]]


@dataclass(frozen=True)
class Dataset:
    """The training and validation splits a search sees, and what the models need to know."""

    name: str
    train: Split | FileSplit
    val: Split | FileSplit
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def stratified_split(
    y: np.ndarray, fraction: float, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held_out) with `fraction` of every class held out."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation_split is {fraction}, but must be between 0 and 1")
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_held = int(round(len(idx) * fraction))
        if n_held == 0 or n_held == len(idx):
            raise DataError(
                f"class {label} has {len(idx)} images: too few to hold out {fraction} of them"
            )
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def take_subsets(
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    *,
    split_seed: int,
    train_subset: int | None,
    validation_subset: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices (into `y`), cut to stratified subsets where asked."""
    rng = np.random.default_rng(split_seed + 1)
    if train_subset is not None:
        train_idx = train_idx[_stratified_take(y[train_idx], train_subset, rng, "train_subset")]
    if validation_subset is not None:
        val_idx = val_idx[
            _stratified_take(y[val_idx], validation_subset, rng, "validation_subset")
        ]
    return train_idx, val_idx


def _stratified_take(y: np.ndarray, n: int, rng: np.random.Generator, key: str) -> np.ndarray:
    """Indices of `n` items of `y`, each class in proportion (largest remainders)."""
    labels, counts = np.unique(y, return_counts=True)
    if not len(labels) <= n <= len(y):
        raise DataError(f"{key} is {n}, but must be between {len(labels)} and {len(y)}")
    exact = counts * n / len(y)
    take = np.floor(exact).astype(int)
    take[np.argsort(take - exact)[: n - take.sum()]] += 1
    chosen = [
        rng.permutation(np.flatnonzero(y == label))[:k]
        for label, k in zip(labels, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))
