"""Datasets: Fashion-MNIST from its IDX files, a user's .npz or image folders, split once.

Fashion-MNIST and .npz images are held in memory as arrays (`Split`), compact (uint8 where
they came as uint8) and on a 0..255 scale; models scale them with their own Rescaling layer.
Image folders (`dir:PATH`, `search.folders`) are file lists (`FileSplit`) decoded as they
are read. The search reads only the training images: the test set is loaded by
`load_test` / `load_study_test`, which only the final evaluation calls. What a dataset is
and how it is split, which image folders share, lives in `search.splits`.
"""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.splits import DataError, Dataset, Split, stratified_split, take_subsets

if TYPE_CHECKING:
    from search.config import DataSection
    from search.folders import FileSplit

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_DATA_DIR = Path("~/.keras/datasets/fashion-mnist").expanduser()
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_dataset(
    dataset: str,
    *,
    validation_split: float = 0.2,
    split_seed: int = 0,
    train_subset: int | None = None,
    validation_subset: int | None = None,
    data_dir: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    color_mode: str | None = None,
    cache: str = "none",
    check: bool = False,
) -> Dataset:
    """Load a dataset's training images and split them into train and validation.

    Args:
        dataset: "fashion_mnist", "npz:PATH" or "dir:PATH".
        validation_split: fraction of the training images held out, per class.
        split_seed: seed of the stratified split (and of the subsets).
        train_subset: keep only this many training images (stratified), for fast studies.
        validation_subset: keep only this many validation images (stratified).
        data_dir: directory with the Fashion-MNIST IDX files, and the root of a relative
            dir:PATH (`Settings.data_dir`); for Fashion-MNIST, default: the Debian
            package's directory, then Keras' cache, then a download.
        image_size, color_mode: dir:PATH only; what every image becomes.
        cache: dir:PATH only; where decoded images are kept between epochs.
        check: dir:PATH only; decode every image once now (train, validation and test), so
            a broken file is named before anything is written.
    """
    if dataset.startswith("dir:"):
        from search.folders import load_folder

        data, _ = load_folder(
            dataset,
            validation_split=validation_split,
            split_seed=split_seed,
            train_subset=train_subset,
            validation_subset=validation_subset,
            data_dir=data_dir,
            image_size=image_size,
            color_mode=color_mode,
            cache=cache,
            check=check,
        )
        return data
    x, y, class_names = _load(dataset, "train", data_dir)
    train_idx, val_idx = stratified_split(y, validation_split, seed=split_seed)
    train_idx, val_idx = take_subsets(
        y,
        train_idx,
        val_idx,
        split_seed=split_seed,
        train_subset=train_subset,
        validation_subset=validation_subset,
    )
    return Dataset(
        name=dataset,
        train=Split(x[train_idx], y[train_idx]),
        val=Split(x[val_idx], y[val_idx]),
        class_names=class_names,
    )


def load_study_data(
    section: DataSection,
    *,
    data_dir: str | Path | None = None,
    cache: str = "none",
    check: bool = False,
) -> Dataset:
    """Load the train/validation split a study's [data] section describes."""
    return load_dataset(
        section.dataset,
        validation_split=section.validation_split,
        split_seed=section.split_seed,
        train_subset=section.train_subset,
        validation_subset=section.validation_subset,
        data_dir=data_dir,
        image_size=section.image_size,
        color_mode=section.color_mode,
        cache=cache,
        check=check,
    )


def load_study_test(
    section: DataSection, *, data_dir: str | Path | None = None
) -> Split | FileSplit:
    """The test split of a study's dataset: only for the one final evaluation."""
    if not section.dataset.startswith("dir:"):
        return load_test(section.dataset, data_dir=data_dir)
    from search.folders import load_folder

    # The same scan and split as the study's train and validation images.
    _, test = load_folder(
        section.dataset,
        validation_split=section.validation_split,
        split_seed=section.split_seed,
        train_subset=section.train_subset,
        validation_subset=section.validation_subset,
        data_dir=data_dir,
        image_size=section.image_size,
        color_mode=section.color_mode,
    )
    return test


def load_test(dataset: str, *, data_dir: str | Path | None = None) -> Split:
    """Load the test split of Fashion-MNIST or an .npz (`load_study_test` for any dataset)."""
    x, y, _ = _load(dataset, "test", data_dir)
    return Split(x, y)


def _load(
    dataset: str, part: str, data_dir: str | Path | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    if dataset == "fashion_mnist":
        x, y = _load_fashion_mnist(part, data_dir)
        return x[..., None], y, FASHION_MNIST_CLASSES
    if dataset.startswith("npz:"):
        return _load_npz(Path(dataset[4:]).expanduser(), part)
    raise DataError(
        f"dataset is {dataset!r}, but must be 'fashion_mnist', 'npz:PATH' or 'dir:PATH'"
    )


def find_fashion_mnist(data_dir: str | Path | None = None) -> Path | None:
    """The first directory holding all four Fashion-MNIST IDX files, in the documented order.

    `data_dir` (`Settings.data_dir`: --data-dir, SEARCH_DATA_DIR) first, then the Debian
    package's folder, then Keras' download folder.
    """
    candidates = [Path(data_dir)] if data_dir else []
    candidates += [SYSTEM_DATA_DIR, KERAS_DATA_DIR]
    names = [name for pair in FASHION_MNIST_FILES.values() for name in pair]
    if data_dir and not all((Path(data_dir) / n).is_file() for n in names):
        raise DataError(f"data dir {data_dir} does not hold the Fashion-MNIST files {names}")
    for directory in candidates:
        if all((directory / n).is_file() for n in names):
            return directory
    return None


def fashion_mnist(
    data_dir: str | Path | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST as `keras.datasets.fashion_mnist.load_data()` gives it, for notebooks.

    ((x_train, y_train), (x_test, y_test)): uint8 images (N, 28, 28) and labels, read from
    the first folder `find_fashion_mnist` finds (else Keras downloads them).
    """
    return _load_fashion_mnist("train", data_dir), _load_fashion_mnist("test", data_dir)


def _load_fashion_mnist(part: str, data_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    directory = find_fashion_mnist(data_dir)
    if directory is None:
        # Keras downloads into ~/.keras/datasets/fashion-mnist, found above next time.
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
        return (x_train, y_train) if part == "train" else (x_test, y_test)
    images, labels = FASHION_MNIST_FILES[part]
    x = read_idx(directory / images)
    y = read_idx(directory / labels)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{directory / images} has {x.shape[0]} images but {y.shape[0]} labels")
    return x, y


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes into an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, n_dims = data[0] | data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * n_dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {body.size} bytes, but its header says {shape}")
    return body.reshape(shape)


def _load_npz(path: Path, part: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Load one part of a user's .npz and check it against the rules in docs/studies.md."""
    where = f"dataset npz:{path}"
    if not path.is_file():
        raise DataError(f"{where}: no such file")
    # An .npz is a zip of .npy arrays (numpy.savez); a lone .npy, a pickle or text is not.
    not_npz = f"{where}: not a readable .npz file (a zip of .npy arrays, as numpy.savez writes)"
    if not zipfile.is_zipfile(path):
        raise DataError(not_npz)
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile):
        raise DataError(not_npz) from None
    with npz:
        missing = [k for k in NPZ_KEYS if k not in npz.files]
        if missing:
            raise DataError(f"{where}: missing arrays {missing}; it must hold {list(NPZ_KEYS)}")
        # Labels are small: check both parts so a broken test split fails before a search.
        try:
            labels = {k: npz[k] for k in ("y_train", "y_test")}
        except ValueError:  # arrays of Python objects, which only pickle could read
            raise DataError(
                f"{where}: y_train and y_test must be arrays of integer labels, not objects"
            ) from None
        x_shapes = {k: _npy_shape(path, k) for k in ("x_train", "x_test")}
        _check_npz(where, x_shapes, labels)
        x = npz[f"x_{part}"]
    y = labels[f"y_{part}"].astype(np.int64)
    num_classes = int(labels["y_train"].max()) + 1
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise DataError(f"{where}: x_{part} has NaN or infinite values")
        # Float images in 0..1 are brought to the 0..255 scale every model expects.
        if x.max(initial=0.0) <= 1.0:
            x *= 255.0
    return x, y, tuple(str(i) for i in range(num_classes))


def _npy_shape(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an array inside an .npz, read from its header without the data."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(f)
    return shape, dtype


def _check_npz(
    where: str,
    x_shapes: dict[str, tuple[tuple[int, ...], np.dtype]],
    labels: dict[str, np.ndarray],
) -> None:
    for part in ("train", "test"):
        shape, dtype = x_shapes[f"x_{part}"]
        y = labels[f"y_{part}"]
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
            raise DataError(
                f"{where}: x_{part} has shape {shape}, but must be (N, H, W) or (N, H, W, C)"
                " with C 1 or 3"
            )
        if not (dtype == np.uint8 or np.issubdtype(dtype, np.floating)):
            raise DataError(f"{where}: x_{part} has dtype {dtype}, but must be uint8 or float")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"{where}: y_{part} has shape {y.shape} and dtype {y.dtype}, but must be"
                " a 1-D array of integer labels"
            )
        if shape[0] != len(y):
            raise DataError(f"{where}: x_{part} has {shape[0]} images but y_{part} has {len(y)}")
        if len(y) == 0:
            raise DataError(f"{where}: x_{part} is empty")
    if x_shapes["x_train"][0][1:] != x_shapes["x_test"][0][1:]:
        raise DataError(
            f"{where}: x_train images are {x_shapes['x_train'][0][1:]} but x_test images are"
            f" {x_shapes['x_test'][0][1:]}; they must match"
        )
    num_classes = int(labels["y_train"].max()) + 1
    if num_classes < 2:
        raise DataError(f"{where}: y_train has one class; a classifier needs at least 2")
    for part, y in labels.items():
        if y.min() < 0 or y.max() >= num_classes:
            raise DataError(
                f"{where}: {part} has labels {y.min()}..{y.max()}, but must be 0..K-1 with"
                f" K = {num_classes} (the classes in y_train)"
            )
    missing = sorted(set(range(num_classes)) - set(np.unique(labels["y_train"]).tolist()))
    if missing:
        raise DataError(
            f"{where}: y_train has no images of classes {missing}; labels must be 0..K-1"
        )
