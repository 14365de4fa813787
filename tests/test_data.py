"""Data: the real Fashion-MNIST, stratified splits, and the rules for user .npz files."""

from __future__ import annotations

import numpy as np
import pytest

from search import data as data_mod
from search.data import DataError, load_dataset, load_test, stratified_split
from search.settings import Settings


@pytest.fixture(scope="module")
def full():
    return load_dataset("fashion_mnist")


def test_real_fashion_mnist_counts_and_pixel_mean(full):
    # The notebook's split: 48,000 train / 12,000 validation, 4,800 / 1,200 per class.
    assert (len(full.train), len(full.val)) == (48_000, 12_000)
    assert np.bincount(full.train.y).tolist() == [4_800] * 10
    assert np.bincount(full.val.y).tolist() == [1_200] * 10
    # Images stay compact: uint8, with a channel axis; scaling happens in the model.
    assert full.train.x.dtype == np.uint8 and full.input_shape == (28, 28, 1)
    pixels = np.concatenate([full.train.x, full.val.x])
    assert pixels.mean() / 255 == pytest.approx(0.2860, abs=5e-4)
    assert full.num_classes == 10 and full.class_names[9] == "Ankle boot"


def test_test_split_is_separate_and_complete():
    test = load_test("fashion_mnist")
    assert len(test) == 10_000
    assert np.bincount(test.y).tolist() == [1_000] * 10


def test_split_is_stratified_disjoint_and_seeded():
    y = np.repeat(np.arange(10), 600)
    kept, held = stratified_split(y, 0.2, seed=3)
    # Disjoint and together everything.
    assert not set(kept) & set(held) and len(kept) + len(held) == len(y)
    assert np.bincount(y[held]).tolist() == [120] * 10
    # Same seed, same split; another seed, another split.
    assert np.array_equal(stratified_split(y, 0.2, seed=3)[1], held)
    assert not np.array_equal(stratified_split(y, 0.2, seed=4)[1], held)


def test_subsets_are_stratified_and_inside_their_split(full):
    small = load_dataset("fashion_mnist", train_subset=1000, validation_subset=500)
    assert np.bincount(small.train.y).tolist() == [100] * 10
    assert np.bincount(small.val.y).tolist() == [50] * 10
    # The subset's validation images are validation images of the full split.
    full_val = {img.tobytes() for img in full.val.x}
    assert all(img.tobytes() in full_val for img in small.val.x[:50])


def test_subset_larger_than_the_split_is_an_error():
    with pytest.raises(DataError, match="train_subset is 50000, but must be between 10 and 48000"):
        load_dataset("fashion_mnist", train_subset=50_000)


def test_data_dir_flag_and_env_are_searched_first(tmp_path, monkeypatch):
    for name in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]:
        (tmp_path / name).symlink_to(data_mod.SYSTEM_DATA_DIR / name)
    # The flag, else the variable, read once into the settings, is searched first.
    monkeypatch.setenv("SEARCH_DATA_DIR", str(tmp_path))
    assert data_mod.find_fashion_mnist(Settings.from_env().data_dir) == tmp_path
    assert Settings.from_env(data_dir="/elsewhere").data_dir == "/elsewhere"
    with pytest.raises(DataError, match="does not hold the Fashion-MNIST files"):
        data_mod.find_fashion_mnist(tmp_path / "empty")


def _npz(path, **arrays):
    rng = np.random.default_rng(0)
    base = {
        "x_train": rng.integers(0, 256, (60, 12, 12), dtype=np.uint8),
        "y_train": np.arange(60) % 3,
        "x_test": rng.integers(0, 256, (30, 12, 12), dtype=np.uint8),
        "y_test": np.arange(30) % 3,
    }
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return f"npz:{path}"


def test_npz_dataset_loads_with_classes_from_its_labels(tmp_path):
    ds = load_dataset(_npz(tmp_path / "d.npz"), validation_split=0.2)
    assert ds.input_shape == (12, 12, 1) and ds.num_classes == 3
    assert (len(ds.train), len(ds.val)) == (48, 12)
    assert len(load_test(_npz(tmp_path / "d.npz"))) == 30


def test_npz_float_images_in_0_1_are_brought_to_0_255(tmp_path):
    rng = np.random.default_rng(1)
    spec = _npz(
        tmp_path / "f.npz",
        x_train=rng.random((60, 8, 8, 3), dtype=np.float32),
        x_test=rng.random((30, 8, 8, 3), dtype=np.float32),
    )
    ds = load_dataset(spec)
    assert ds.input_shape == (8, 8, 3)
    assert ds.train.x.dtype == np.float32 and 1.0 < ds.train.x.max() <= 255.0


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y_test": None}, r"missing arrays \['y_test'\]"),
        ({"y_train": np.arange(59) % 3}, "x_train has 60 images but y_train has 59"),
        ({"y_test": np.arange(30) % 4}, "y_test has labels 0..3, but must be 0..K-1 with K = 3"),
        ({"y_train": (np.arange(60) % 3) * 2}, "y_train has no images of classes"),
        ({"x_train": np.zeros((60, 144), np.uint8)}, r"x_train has shape \(60, 144\)"),
        ({"x_train": np.zeros((60, 12, 12), np.int32)}, "dtype int32, but must be uint8 or float"),
        ({"y_train": np.linspace(0, 2, 60)}, "must be a 1-D array of integer labels"),
        ({"x_test": np.zeros((30, 10, 10), np.uint8)}, "images are .* they must match"),
    ],
    ids=[
        "missing-key",
        "lengths",
        "label-range",
        "label-gaps",
        "dims",
        "dtype",
        "float-labels",
        "sizes",
    ],
)
def test_npz_rule_violations_name_the_file_and_rule(tmp_path, arrays, message):
    spec = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(spec)
    assert str(tmp_path / "bad.npz") in str(err.value)


def test_missing_or_unreadable_npz(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="dataset is 'mnist', but must be 'fashion_mnist'"):
        load_dataset("mnist")
