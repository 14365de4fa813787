"""Image folders (`dataset = "dir:PATH"`): scanned, split once, decoded as they are read.

The Keras layout: PATH/train holds one sub-folder per class (PNG, JPEG, BMP, GIF); PATH/validation
and PATH/test, both optional, hold the same class folders. What is missing is split off
PATH/train, stratified, with the study's split seed. The split is a function of the sorted file
list and the seed alone, so every worker, re-evaluation and retraining gets the same one and
nothing needs writing. Class names are the folder names, sorted; labels are their positions.

A split is a file list (`FileSplit`); `read()` streams batches of its images' positions
(shuffled per epoch by `search.training.epoch_batches`) through tf.data: decode, convert to the
study's colour mode and resize to its image size (cache "none"), or gather them from the images
decoded once (cache "memory": an array; "disk": a file mapped into memory); prefetch. The
batches, and so every result, are the same whatever the cache.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from search.splits import DataError, Dataset, stratified_split, take_subsets

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
PARTS = ("train", "validation", "test")
CHANNELS = {"grayscale": 1, "rgb": 3}
_disk_cache_names = itertools.count()


@dataclass(frozen=True, eq=False)
class FileSplit:
    """Image files and their labels; images are decoded and resized as they are read."""

    paths: tuple[str, ...]
    y: np.ndarray
    image_size: tuple[int, int]
    channels: int
    cache: str = "none"

    def __len__(self) -> int:
        return len(self.y)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, self.channels)

    def example(self, label: int) -> np.ndarray:
        """The first image of a class (H, W, C), as training sees it: float32, 0..255."""
        path = self.paths[int(np.flatnonzero(self.y == label)[0])]
        return read_image(tf.constant(path), self.image_size, self.channels).numpy()

    def batches(self, batch_size: int) -> tf.data.Dataset:
        """(images, labels) batches in the split's order (validation, test)."""

        def in_order(load: Callable | None) -> tf.data.Dataset:
            positions = tf.data.Dataset.range(len(self))
            if load is not None:
                positions = positions.map(load, num_parallel_calls=tf.data.AUTOTUNE)
            return positions.batch(batch_size)

        return self.stream(in_order)

    def stream(self, batches: Callable[[Callable | None], tf.data.Dataset]) -> tf.data.Dataset:
        """(images, labels) batches of the positions `batches` yields, prefetched.

        `batches(load)` makes the batches of positions; with cache "none" it is given `load`,
        which decodes one image and its label, to map over single positions (in parallel)
        before they are batched; with a cache, None, and the batches of positions are
        gathered from the images decoded once. The images, and so every result, are the
        same whatever the cache.
        """
        labels = tf.constant(self.y)
        if self.cache == "none":
            paths = tf.constant(self.paths)
            size, channels = self.image_size, self.channels

            def load(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                return read_image(tf.gather(paths, i), size, channels), tf.gather(labels, i)

            images = batches(load)
        else:
            decoded = self._decoded
            shape = (None, *self.image_shape)

            def gather(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                x = tf.numpy_function(lambda i: decoded[np.asarray(i)], [i], tf.float32)
                return tf.ensure_shape(x, shape), tf.gather(labels, i)

            images = batches(None).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        return images.with_options(self._options()).prefetch(tf.data.AUTOTUNE)

    @functools.cached_property
    def _decoded(self) -> np.ndarray:
        """Every image decoded once, in the split's order: an array, or a file mapped (disk)."""
        shape = (len(self), *self.image_shape)
        if self.cache == "disk":
            path = _disk_cache_dir() / f"split-{next(_disk_cache_names)}.f32"
            out: np.ndarray = np.lib.format.open_memmap(path, "w+", np.float32, shape)
        else:
            out = np.empty(shape, np.float32)
        size, channels = self.image_size, self.channels
        decoded = (
            tf.data.Dataset.from_tensor_slices(list(self.paths))
            .map(
                lambda path: read_image(path, size, channels),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            .batch(1024)
            .with_options(self._options())
        )
        start = 0
        for batch in decoded.as_numpy_iterator():
            out[start : start + len(batch)] = batch
            start += len(batch)
        if isinstance(out, np.memmap):
            out.flush()
        return out

    @staticmethod
    def _options() -> tf.data.Options:
        options = tf.data.Options()
        # Decoding counts against the worker's threads (--threads; 0: TensorFlow's default).
        options.threading.private_threadpool_size = (
            tf.config.threading.get_intra_op_parallelism_threads()
        )
        return options


def read_image(path: tf.Tensor, image_size: tuple[int, int], channels: int) -> tf.Tensor:
    """Decode an image file (a GIF's first frame), convert and resize it: float32, 0..255.

    A saved model does the same to the images it is given (`search.retrain`): bilinear
    resizing without antialiasing, as keras.layers.Resizing does.
    """
    # Decoded as RGB (GIF decodes to nothing else), then converted: one path for every format.
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    if channels == 1:
        image = tf.image.rgb_to_grayscale(image)
    return tf.image.resize(image, image_size)


def resolve_folder(dataset: str, data_dir: str | Path | None = None) -> Path:
    """The folder of "dir:PATH": a relative PATH is under the data root, if one is set.

    The data root is `data_dir` (`Settings.data_dir`: --data-dir, else SEARCH_DATA_DIR);
    without one, a relative PATH is relative to the current directory.
    """
    path = Path(dataset.removeprefix("dir:")).expanduser()
    return path if path.is_absolute() or not data_dir else Path(data_dir) / path


def load_folder(
    dataset: str,
    *,
    validation_split: float,
    split_seed: int,
    train_subset: int | None,
    validation_subset: int | None,
    data_dir: str | Path | None,
    image_size: tuple[int, int] | None,
    color_mode: str | None,
    cache: str = "none",
    check: bool = False,
) -> tuple[Dataset, FileSplit]:
    """The train/validation Dataset of an image folder, and its test split.

    Args:
        check: decode every image of every part once now, so that a file that cannot be
            decoded is named before anything is written.

    Raises:
        DataError: a missing folder, a class folder without images, fewer than two
            classes, validation or test classes other than train's, a file that cannot be
            decoded (with `check`), or too few images to split.
    """
    root = resolve_folder(dataset, data_dir)
    where = f"dataset {dataset}"
    if not dataset.removeprefix("dir:"):
        raise DataError(f"{where}: give the folder, as dir:PATH")
    if image_size is None or color_mode not in CHANNELS:
        raise DataError(f"{where}: needs [data] image_size and color_mode")
    paths, y, parts, class_names = scan_folder(root, where)
    if check:
        check_images(paths, where)

    def split_off(idx: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            kept, held = stratified_split(y[idx], validation_split, seed=seed)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        return idx[kept], idx[held]

    train_idx = parts["train"]
    # Missing parts are split off train: test first (its own seed), then validation.
    test_idx = parts.get("test")
    if test_idx is None:
        train_idx, test_idx = split_off(train_idx, split_seed + 2)
    val_idx = parts.get("validation")
    if val_idx is None:
        train_idx, val_idx = split_off(train_idx, split_seed)
    try:
        train_idx, val_idx = take_subsets(
            y,
            train_idx,
            val_idx,
            split_seed=split_seed,
            train_subset=train_subset,
            validation_subset=validation_subset,
        )
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    # Train's order is shuffled once, so that a shuffle buffer smaller than the split still
    # mixes the classes (the scan lists them one after another).
    train_idx = np.random.default_rng(split_seed + 3).permutation(train_idx)
    size = (int(image_size[0]), int(image_size[1]))

    def split(idx: np.ndarray, cache: str = "none") -> FileSplit:
        return FileSplit(tuple(paths[i] for i in idx), y[idx], size, CHANNELS[color_mode], cache)

    data = Dataset(
        name=dataset,
        train=split(train_idx, cache),
        val=split(val_idx, cache),
        class_names=class_names,
    )
    return data, split(test_idx)


def scan_folder(
    root: Path, where: str
) -> tuple[list[str], np.ndarray, dict[str, np.ndarray], tuple[str, ...]]:
    """Every image of an image folder, sorted, with its label.

    Returns:
        The paths, their labels, the indices of each part present (train, and validation
        and test where the folder has them) and the class names.
    """
    if not root.is_dir():
        raise DataError(f"{where}: no such folder {root}")
    train = root / "train"
    if not train.is_dir():
        raise DataError(
            f"{where}: no folder {train}; it must hold one sub-folder of images per class"
        )
    class_names = _class_folders(train)
    if len(class_names) < 2:
        raise DataError(
            f"{where}: {train} has {len(class_names)} class folder(s) {list(class_names)};"
            " a classifier needs at least 2"
        )
    paths: list[str] = []
    labels: list[int] = []
    parts: dict[str, np.ndarray] = {}
    skipped: list[Path] = []
    for part in PARTS:
        folder = root / part
        if not folder.exists():
            continue
        classes = _class_folders(folder) if folder.is_dir() else ()
        if classes != class_names:
            missing = sorted(set(class_names) - set(classes))
            extra = sorted(set(classes) - set(class_names))
            raise DataError(
                f"{where}: the classes of {folder} differ from those of {train}: missing"
                f" {missing}, extra {extra}"
            )
        start = len(paths)
        skipped += [f for f in folder.iterdir() if f.is_file()]
        for label, name in enumerate(class_names):
            files = sorted(f for f in (folder / name).rglob("*") if f.is_file())
            images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
            skipped += [f for f in files if f.suffix.lower() not in IMAGE_EXTENSIONS]
            if not images:
                raise DataError(
                    f"{where}: {folder / name} holds no images"
                    f" ({', '.join(IMAGE_EXTENSIONS)}); every class needs some"
                )
            paths += [str(f) for f in images]
            labels += [label] * len(images)
        parts[part] = np.arange(start, len(paths))
    if skipped:
        print(
            f"warning: {where}: skipped {len(skipped)} file(s) that are not images"
            f" ({', '.join(IMAGE_EXTENSIONS)}), e.g. {skipped[0]}",
            file=sys.stderr,
        )
    return paths, np.array(labels, dtype=np.int64), parts, class_names


def check_images(paths: list[str], where: str) -> None:
    """Decode every image once, in parallel; raise a DataError naming one that fails."""

    def decodes(path: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.shape(image)[0]

    images = tf.data.Dataset.from_tensor_slices(paths).map(
        decodes, num_parallel_calls=tf.data.AUTOTUNE
    )
    try:
        images.reduce(np.int32(0), lambda n, _: n + 1)
        return
    except tf.errors.OpError:
        pass
    # Something failed: find the first file that does, one by one, to name it.
    for path in paths:
        try:
            decodes(tf.constant(path))
        except tf.errors.OpError as e:
            reason = e.message.strip().splitlines()[0] if e.message else type(e).__name__
            raise DataError(f"{where}: {path} cannot be decoded as an image ({reason})") from None
    raise DataError(f"{where}: an image could not be decoded, but none fails on its own")


def _class_folders(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))


@functools.cache
def _disk_cache_dir() -> Path:
    """This process's directory of decoded images (cache = "disk"), removed when it exits."""
    path = Path(tempfile.mkdtemp(prefix="search-cache-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
