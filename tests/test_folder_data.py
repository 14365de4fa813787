"""Image folders (dir:PATH): the split, the stream, broken folders, a study end to end; GPUs."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import run_search, search_here
from optuna.trial import TrialState
from PIL import Image

from search.config import ConfigError, DataSection, load_config
from search.data import load_dataset, load_study_test
from search.device import worker_env
from search.folders import resolve_folder
from search.record import TrialRecord
from search.settings import Settings
from search.storage import open_storage
from search.supervisor import _start_worker
from search.worker import WorkerSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Three classes told apart by colour; images of 20x24, resized to 16x16 by the studies.
COLOURS = {"blue": (40, 70, 220), "green": (40, 190, 70), "red": (220, 50, 40)}
HEIGHT, WIDTH = 20, 24
FOLDER_KEYS = 'image_size = [16, 16]\ncolor_mode = "rgb"\n'


def make_folder(
    root: Path,
    *,
    per_class: int = 60,
    parts: tuple[str, ...] = ("train",),
    colours: dict[str, tuple[int, int, int]] = COLOURS,
    seed: int = 0,
) -> Path:
    """Class folders of RGB PNGs: dark noise with a block of the class's colour somewhere."""
    rng = np.random.default_rng(seed)
    for part in parts:
        for name, colour in colours.items():
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 50, (HEIGHT, WIDTH, 3))
                top, left = rng.integers(0, HEIGHT // 2), rng.integers(0, WIDTH // 2)
                block = np.asarray(colour) + rng.integers(-20, 20, (HEIGHT // 2, WIDTH // 2, 3))
                image[top : top + HEIGHT // 2, left : left + WIDTH // 2] = block
                Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def study_text(dataset: str, *, extra: str = "") -> str:
    """A small dense study of a dataset; a dir:PATH one gets image_size and color_mode."""
    folder_keys = FOLDER_KEYS if dataset.startswith("dir:") else ""
    return (
        '[study]\nname = "folders"\nspace = "dense"\n\n'
        f'[data]\ndataset = "{dataset}"\n{folder_keys}{extra}\n'
        '[trials]\nn_trials = 4\nmax_epochs = 6\npruner = "none"\n'
    )


def _load(root: Path, **keys):
    """The train/validation Dataset of an image folder, images resized to 16x16 RGB."""
    keys = {"image_size": (16, 16), "color_mode": "rgb", **keys}
    return load_dataset(f"dir:{root}", **keys)


def _test_split(root: Path):
    """The test split of an image folder, as `search retrain` loads it."""
    return load_study_test(
        DataSection(dataset=f"dir:{root}", image_size=(16, 16), color_mode="rgb")
    )


# --- the split -------------------------------------------------------------------------


def test_missing_parts_are_split_off_train_stratified_and_the_same_every_time(tmp_path):
    root = make_folder(tmp_path / "shapes", per_class=50)
    data = _load(root)
    test = _test_split(root)
    # Classes are the sorted folder names; the test split holds out 20% of each class, and
    # validation 20% of what remains.
    assert data.class_names == ("blue", "green", "red")
    assert np.bincount(test.y).tolist() == [10] * 3
    assert np.bincount(data.val.y).tolist() == [8] * 3
    assert np.bincount(data.train.y).tolist() == [32] * 3
    assert data.input_shape == (16, 16, 3)
    # Disjoint, and together every image.
    parts = [set(data.train.paths), set(data.val.paths), set(test.paths)]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 150
    # A label is its file's class folder.
    train = zip(data.train.paths, data.train.y, strict=True)
    assert all(Path(path).parent.name == data.class_names[y] for path, y in train)
    # Loading again (another worker, a retraining) gives the very same split; another seed
    # another one.
    assert _load(root).val.paths == data.val.paths
    assert _load(root, split_seed=1).val.paths != data.val.paths


def test_validation_and_test_folders_are_used_as_they_are(tmp_path):
    root = make_folder(tmp_path / "shapes", per_class=20)
    make_folder(root, per_class=4, parts=("validation",), seed=1)
    make_folder(root, per_class=5, parts=("test",), seed=2)
    data = _load(root)
    test = _test_split(root)
    assert (len(data.train), len(data.val), len(test)) == (60, 12, 15)
    assert all("/validation/" in p for p in data.val.paths)
    assert all("/test/" in p for p in test.paths)


def test_subsets_are_stratified_subsets_of_the_file_lists(tmp_path):
    root = make_folder(tmp_path / "shapes", per_class=50)
    full = _load(root)
    small = _load(root, train_subset=30, validation_subset=6)
    assert np.bincount(small.train.y).tolist() == [10] * 3
    assert np.bincount(small.val.y).tolist() == [2] * 3
    assert set(small.train.paths) <= set(full.train.paths)
    assert set(small.val.paths) <= set(full.val.paths)


def test_a_relative_path_is_under_the_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("SEARCH_DATA_DIR", raising=False)
    assert resolve_folder("dir:shapes", tmp_path) == tmp_path / "shapes"
    assert resolve_folder("dir:shapes") == Path("shapes")
    assert resolve_folder(f"dir:{tmp_path}/x", "/elsewhere") == tmp_path / "x"
    monkeypatch.setenv("SEARCH_DATA_DIR", str(tmp_path / "root"))
    root = Settings.from_env().data_dir
    assert resolve_folder("dir:shapes", root) == tmp_path / "root" / "shapes"
    make_folder(tmp_path / "root" / "shapes", per_class=10)
    shapes = load_dataset("dir:shapes", image_size=(8, 8), color_mode="rgb", data_dir=root)
    assert len(shapes.class_names) == 3


def test_files_that_are_not_images_are_skipped_and_counted(tmp_path, capsys):
    root = make_folder(tmp_path / "shapes", per_class=10)
    (root / "train" / "red" / "notes.txt").write_text("not an image")
    (root / "train" / "README.md").write_text("class folders")
    data = _load(root)
    assert len(data.train) + len(data.val) + len(_test_split(root)) == 30
    assert "skipped 2 file(s) that are not images" in capsys.readouterr().err


# --- the stream ------------------------------------------------------------------------


def _epoch(split, seed, epoch=0):
    from search.training import epoch_batches

    stream = split.stream(
        lambda load: epoch_batches(
            len(split), 16, seed=seed, first_epoch=epoch, epochs=epoch + 1, load=load
        )
    )
    batches = list(stream.as_numpy_iterator())
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def test_batches_are_resized_converted_and_the_same_whatever_the_cache(tmp_path):
    root = make_folder(tmp_path / "shapes", per_class=20)
    x, y = _epoch(_load(root).train, seed=3)
    assert x.shape == (len(y), 16, 16, 3) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 255 and x.max() > 150
    # The cache only changes where decoded images wait: the images and their order do not.
    for cache in ("memory", "disk"):
        split = _load(root, cache=cache).train
        for _ in range(2):  # filling the cache, then reading from it
            cached_x, cached_y = _epoch(split, seed=3)
            assert np.array_equal(cached_y, y) and np.array_equal(cached_x, x)
    # Another seed, another order; every epoch a new one.
    assert not np.array_equal(_epoch(_load(root).train, seed=4)[1], y)
    assert not np.array_equal(_epoch(_load(root).train, seed=3, epoch=1)[1], y)
    # Grayscale: one channel.
    grey, _ = _epoch(_load(root, color_mode="grayscale").train, seed=3)
    assert grey.shape[1:] == (16, 16, 1)


# --- the study file --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "extra", "message"),
    [
        ("dir:x", 'color_mode = "rgb"\n', r"\[data\] image_size is required for a dir:PATH"),
        ("dir:x", "image_size = [16, 16]\n", r"\[data\] color_mode is required for a dir:PATH"),
        ("fashion_mnist", "image_size = [16, 16]\n", r"image_size is only for dir:PATH datasets"),
        ("fashion_mnist", 'color_mode = "rgb"\n', r"color_mode is only for dir:PATH datasets"),
        ("dir:x", 'image_size = [16]\ncolor_mode = "rgb"\n', r"must be \[height, width\]"),
        ("dir:x", 'image_size = [16, 0]\ncolor_mode = "rgb"\n', r"must be \[height, width\]"),
        ("dir:x", 'image_size = 16\ncolor_mode = "rgb"\n', r"image_size is 16, but must be list"),
        ("dir:x", 'image_size = [8, 8]\ncolor_mode = "cmyk"\n', r"color_mode is 'cmyk'"),
    ],
)
def test_folder_keys_are_required_for_folders_and_refused_for_others(
    tmp_path, dataset, extra, message
):
    path = tmp_path / "study.toml"
    # study_text adds the keys for dir: datasets; these cases give their own.
    text = study_text("fashion_mnist", extra=extra).replace("fashion_mnist", dataset)
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_folder_keys_load_and_are_recorded_as_json(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(study_text("dir:shapes"))
    config = load_config(path)
    assert config.data.image_size == (16, 16) and config.data.color_mode == "rgb"
    # As a storage gives it back: a list.
    assert config.to_dict()["data"]["image_size"] == [16, 16]


# --- broken input: exit 2, the path named, nothing written -----------------------------


def _broken(case: str, root: Path) -> tuple[str, Path]:
    """A broken dataset: its `dataset` value and the path its error must name."""
    npz = root.parent / "data.npz"
    if case == "missing-folder":
        return f"dir:{root}", root
    if case == "npz-one-class":
        x, y = np.zeros((10, 8, 8), np.uint8), np.zeros(10, np.int64)
        np.savez(npz, x_train=x, y_train=y, x_test=x, y_test=y)
        return f"npz:{npz}", npz
    if case == "npz-is-npy":
        with npz.open("wb") as f:
            np.save(f, np.zeros((10, 8, 8), np.uint8))
        return f"npz:{npz}", npz
    if case == "npz-is-pickle":
        npz.write_bytes(pickle.dumps({"x_train": [[0]]}))
        return f"npz:{npz}", npz
    make_folder(root, per_class=5)
    train = root / "train"
    if case == "no-train":
        train.rename(root / "training")
        return f"dir:{root}", train
    if case == "empty-class":
        for f in (train / "blue").iterdir():
            f.unlink()
        (train / "blue" / "notes.txt").write_text("no images here")
        return f"dir:{root}", train / "blue"
    if case == "one-class":
        shutil.rmtree(train / "blue")
        shutil.rmtree(train / "green")
        return f"dir:{root}", train
    if case == "validation-classes":
        make_folder(
            root, per_class=2, parts=("validation",), colours=dict(list(COLOURS.items())[1:])
        )
        return f"dir:{root}", root / "validation"
    if case == "test-classes":
        make_folder(
            root, per_class=2, parts=("test",), colours=COLOURS | {"yellow": (220, 220, 0)}
        )
        return f"dir:{root}", root / "test"
    if case == "undecodable":
        broken = train / "red" / "broken.png"
        broken.write_bytes(b"\x89PNG but not really")
        return f"dir:{root}", broken
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing-folder",
        "no-train",
        "empty-class",
        "one-class",
        "validation-classes",
        "test-classes",
        "undecodable",
        "npz-one-class",
        "npz-is-npy",
        "npz-is-pickle",
    ],
)
def test_a_broken_dataset_exits_2_names_the_path_and_writes_nothing(tmp_path, case):
    dataset, named = _broken(case, tmp_path / "shapes")
    study = tmp_path / "study.toml"
    study.write_text(study_text(dataset))
    db = tmp_path / "s.db"
    result = search_here("create", study, "--storage", f"sqlite:///{db}", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(named) in result.stderr and result.stderr.count("error:") == 1, result.stderr
    # Never the advice to load pickles.
    assert "allow_pickle" not in result.stderr
    # Nothing half-written: no storage file, so certainly no study in it.
    assert not db.exists()


# --- a study end to end ----------------------------------------------------------------


@pytest.mark.slow
def test_a_folder_study_runs_exports_retrains_and_reports(tmp_path):
    data_root = tmp_path / "data"
    # A few hundred RGB PNGs of 20x24 in 3 class folders.
    make_folder(data_root / "shapes", per_class=100)
    (data_root / "shapes" / "train" / "red" / "Thumbs.db").write_bytes(b"\0")
    work = tmp_path / "work"
    work.mkdir()
    study = work / "study.toml"
    # A relative PATH, under the data root every command is given.
    study.write_text(study_text("dir:shapes"))
    storage = f"sqlite:///{work / 's.db'}"
    data_dir = ("--data-dir", str(data_root))

    flags = ("--workers", "2", "--cache", "memory", *data_dir, "--storage", storage)
    # The workers are processes; `run`, `export` and `report` themselves run in this one.
    result = search_here("run", study, *flags, cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = optuna.load_study(study_name="folders", storage=open_storage(storage)).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    assert all(TrialRecord.of(t).device.startswith(("cpu", "gpu")) for t in complete)

    result = search_here("export", "folders", "--storage", storage, cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    export = work / "runs" / "folders" / "best.json"
    best = json.loads(export.read_text())["trials"][0]
    result = run_search("retrain", export, *data_dir, "--cache", "disk", cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    out_dir = export.parent / f"trial-{best['number']}"
    report = json.loads((out_dir / "report.json").read_text())
    names = ["blue", "green", "red"]
    assert report["class_names"] == names
    assert json.loads((out_dir / "classes.json").read_text()) == names
    assert report["input_shape"] == [None, None, 3]
    # 100 images per class: 20 held out for test, then 16 of the other 80 for validation.
    assert report["data"]["test_images"] == 60
    assert report["data"]["validation_images"] == 48 and report["data"]["train_images"] == 192

    result = search_here("report", "folders", "--storage", storage, *data_dir, cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    page = (work / "runs" / "folders" / "report.html").read_text()
    assert all(f'<td class="text">{name}</td>' in page for name in names)

    # The saved model takes the images as the folders hold them (20x24, RGB) and resizes
    # them itself; it tells the classes apart far better than chance (1/3).
    import keras

    import spaces.losses  # noqa: F401 (the label-smoothed loss a config may train with)

    model = keras.models.load_model(out_dir / "model.keras")
    assert model.input_shape == (None, None, None, 3)
    files = sorted((data_root / "shapes" / "train").glob("*/*.png"))
    images = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files])
    labels = np.array([names.index(f.parent.name) for f in files])
    predicted = model.predict(images, verbose=0).argmax(axis=1)
    assert np.mean(predicted == labels) > 0.6


# --- GPUs ------------------------------------------------------------------------------


def test_each_worker_slot_gets_its_gpu_through_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    envs = [worker_env(slot, ["0", "1"]) for slot in range(4)]
    # Two workers per GPU, in turn; each takes GPU memory as it needs it.
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["0", "1", "0", "1"]
    assert all(env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for env in envs)
    # Without --gpus a worker sees what the supervisor sees.
    assert worker_env(0)["CUDA_VISIBLE_DEVICES"] == "7"

    # The process the supervisor starts for slot 3 gets that environment.
    started = {}

    class Popen:
        def __init__(self, args, **kwargs):
            started.update(args=args, env=kwargs["env"])

    monkeypatch.setattr("search.supervisor.subprocess.Popen", Popen)
    _start_worker(WorkerSpec("s", Settings()), 3, 9, tmp_path, ["2", "5"])
    assert started["env"]["CUDA_VISIBLE_DEVICES"] == "5"
    # The worker gets its spec (its own index among it) as an object, not as flags.
    assert started["args"][1:3] == ["-m", "search.worker"]
    with open(started["args"][3], "rb") as f:
        assert pickle.load(f) == WorkerSpec("s", Settings(), worker_index=9)


def test_run_with_gpus_places_each_worker_on_its_gpu(tmp_path):
    # On this CPU machine the GPU each worker was given shows in its trials' device.
    study = tmp_path / "study.toml"
    study.write_text(
        '[study]\nname = "gpus"\nspace = "dense"\n\n[data]\ndataset = "fashion_mnist"\n'
        "train_subset = 500\nvalidation_subset = 200\n\n"
        '[trials]\nn_trials = 2\nmax_epochs = 1\npruner = "none"\n'
    )
    storage = f"sqlite:///{tmp_path / 's.db'}"
    result = search_here("run", study, "--gpus", "3,5", "--storage", storage, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started 2 workers on GPUs 3,5" in result.stdout
    # Worker slot i on GPU i: each says so in its log, and its trials record it.
    expected = [f"cpu (no GPU visible; CUDA_VISIBLE_DEVICES={gpu})" for gpu in (3, 5)]
    for slot, device in enumerate(expected):
        log = (tmp_path / "runs" / "gpus" / "logs" / f"worker-{slot}.log").read_text()
        assert f"training on {device}" in log, log
    trials = optuna.load_study(study_name="gpus", storage=open_storage(storage)).trials
    assert {TrialRecord.of(t).device for t in trials} <= set(expected)


def test_gpu_flags_that_contradict_each_other_exit_2(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(study_text("dir:shapes"))
    for flags, message in [
        (("--gpus", "0,1", "--workers", "2"), "give --workers or --gpus, not both"),
        (("--workers-per-gpu", "2"), "--workers-per-gpu needs --gpus"),
        (("--gpus", "0,0"), "give distinct GPU numbers"),
    ]:
        result = search_here("run", study, *flags, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()
