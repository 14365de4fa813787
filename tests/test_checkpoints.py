"""Checkpoints with real kills: a SIGKILLed trial goes on from its last epoch, on SQLite and
PostgreSQL; kept models are bounded and load with plain Keras."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from conftest import (
    STUDY_RUN_TRAIN,
    STUDY_RUN_VALIDATION,
    cli_env,
    once_per_run,
    search_cmd,
    search_here,
    study_toml,
)
from optuna.trial import TrialState
from pgserver import PostgresServer

from search.checkpoints import (
    FolderStore,
    S3Store,
    Store,
    checkpoint_key,
    kept_key,
    kept_numbers,
    load_checkpoint,
    open_store,
)
from search.record import Resumed, TrialRecord
from search.storage import open_storage

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)
EPOCHS = 6
TRAIN, VALIDATION = 3000, 1000


@contextlib.contextmanager
def _storage_url(backend: str, tmp_path: Path):
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'search.db'}"
    else:
        with PostgresServer() as pg:
            yield pg.url


# The dense prior's centre (trial 0, with dropout) on a subset: about a second per epoch,
# long enough to kill it between two checkpoints.
STUDY = {
    "space": "dense",
    "n_trials": 1,
    "max_epochs": EPOCHS,
    "train_subset": TRAIN,
    "validation_subset": VALIDATION,
    "pruner": "none",
}


def _study(write_study, name: str = "t", **keys: Any) -> Path:
    return write_study(f"{name}.toml", **{"name": name, **STUDY} | keys)


def _worker(study: Path, storage: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        search_cmd("worker", study, "--storage", storage, "--threads", "1"),
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_after_checkpoint(proc: subprocess.Popen, store: Store, epoch: int) -> int:
    """SIGKILL the worker once trial 0's checkpoint holds `epoch` epochs or more.

    Returns the epochs its checkpoint holds once the worker is dead: under load a worker may
    save the next epoch between the poll and the kill (a bucket is slower to poll than a
    folder).
    """
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            checkpoint = load_checkpoint(store, "t", 0)
        except ValueError:  # never half-written: would fail the test below
            raise
        if checkpoint is not None and checkpoint.epoch >= epoch:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return load_checkpoint(store, "t", 0).epoch
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of epoch {epoch} within 300 s")


def _trials(storage_url: str, name: str = "t"):
    storage = open_storage(storage_url)
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def _finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    return output


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory) -> list[float]:
    """The validation accuracy per epoch of the same trial (params, seed, 1-thread worker)
    trained by a worker without interruption, whatever the storage, store or metric (they
    change no training). Trained once per test run, also under pytest-xdist."""

    def make() -> dict:
        cwd = tmp_path_factory.mktemp("uninterrupted")
        study = cwd / "u.toml"
        study.write_text(study_toml(name="u", **STUDY))
        storage = f"sqlite:///{cwd / 'search.db'}"
        _finish(_worker(study, storage, cwd))
        (whole,) = _trials(storage, "u")
        return {"val_accuracy": TrialRecord.of(whole).history["val_accuracy"]}

    return once_per_run(tmp_path_factory, "uninterrupted", make)["val_accuracy"]


@pytest.fixture
def s3_bucket(monkeypatch) -> Iterator[str]:
    """A bucket on a local S3-compatible server (moto's), reached as users reach theirs:
    boto3's usual environment (AWS_ENDPOINT_URL, keys, region)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3").create_bucket(Bucket="trials")
    try:
        yield "s3://trials/search"
    finally:
        server.stop()


# Each storage with one checkpoint store, and ranked by each metric: a trial's kept model is
# its best epoch's by the study's metric (the highest accuracy, or the lowest loss).
@pytest.mark.parametrize(
    "backend, where, metric",
    [("sqlite", "s3", "val_accuracy"), ("postgresql", "folder", "val_loss")],
)
def test_a_killed_trial_goes_on_from_its_last_epoch(
    backend, where, metric, tmp_path, write_study, monkeypatch, request, uninterrupted
):
    location = request.getfixturevalue("s3_bucket") if where == "s3" else str(tmp_path / "ckpt")
    # What the workers read (`cli_env` passes the environment on).
    monkeypatch.setenv("SEARCH_CHECKPOINTS", location)
    store = open_store(location)
    assert isinstance(store, S3Store if where == "s3" else FolderStore)
    with _storage_url(backend, tmp_path) as storage:
        study = _study(write_study, metric=metric)
        killed_at = _kill_after_checkpoint(_worker(study, storage, tmp_path), store, epoch=3)
        # A new worker finds the trial stale, queues its retry and runs it.
        _finish(_worker(study, storage, tmp_path))
        killed, retry = _trials(storage)
    assert killed.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    killed_record, record = TrialRecord.of(killed), TrialRecord.of(retry)
    assert record.retry_of == 0
    # Killed after epoch 3 (or a later one, see `_kill_after_checkpoint`), before the end.
    assert 3 <= killed_at < EPOCHS
    assert record.resumed_from == Resumed(trial=0, epoch=killed_at)
    assert record.restarted is None
    # The retry's curve has every epoch once; those before the kill are the killed trial's.
    assert sorted(retry.intermediate_values) == list(range(1, EPOCHS + 1))
    before = range(1, killed_at + 1)
    assert [retry.intermediate_values[e] for e in before] == [
        killed.intermediate_values[e] for e in before
    ]
    # Epochs trained in all: the killed trial's finished ones, the one it was in, the retry's.
    trained = killed_record.epochs_done + 1 + record.epochs_trained
    assert record.epochs_trained == EPOCHS - killed_at and trained <= EPOCHS + 1
    # It ends where an uninterrupted run of the same params and seed ends (accuracy within
    # half a point).
    last = record.history["val_accuracy"][-1]
    assert len(uninterrupted) == EPOCHS
    assert abs(last - uninterrupted[-1]) <= 0.005, (last, uninterrupted)
    # Both attempts' checkpoints are gone; the completed trial kept its best epoch's model,
    # which scores the validation split as that epoch did.
    assert store.keys("t/checkpoints/") == []
    assert kept_numbers(store, "t") == [retry.number]
    epoch = record.kept_epoch
    assert record.history[metric][epoch - 1] == pytest.approx(retry.value)
    kept = tmp_path / "kept.keras"
    assert store.get(kept_key("t", retry.number), kept)
    # Nothing went to the default folder.
    assert not (tmp_path / "runs").exists()
    accuracy = _validation_accuracy(kept, train_subset=TRAIN)
    assert abs(accuracy - record.history["val_accuracy"][epoch - 1]) <= 1e-4


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_damaged_checkpoint_starts_the_retry_again_with_the_reason(
    damage, tmp_path, write_study
):
    store = FolderStore(tmp_path / "runs")
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    study = _study(write_study, max_epochs=2)
    _kill_after_checkpoint(_worker(study, storage, tmp_path), store, epoch=1)
    path = store.local_path(checkpoint_key("t", 0))
    if damage == "corrupt":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        path.unlink()
    _finish(_worker(study, storage, tmp_path))
    _, retry = _trials(storage)
    assert retry.state == TrialState.COMPLETE
    record = TrialRecord.of(retry)
    assert record.resumed_from == Resumed(trial=None, epoch=0)
    expected = "trial 0's checkpoint is unusable" if damage == "corrupt" else "trial 0 left no"
    assert record.restarted.startswith(expected)
    assert record.restarted.endswith("started from epoch 1")
    assert record.epochs_trained == 2


def test_a_study_keeps_its_best_models_exports_them_and_shows_them(study_run, tmp_path):
    # `study_run`: `search run`, 2 workers, 12 trials, the default store (runs/) and keep-best (3).
    s = study_run
    store = FolderStore(s.cwd / "runs")
    trials = _trials(s.storage)
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value
    )
    assert len(complete) > 3
    # Only the three best completed trials' models remain, and no checkpoint.
    assert kept_numbers(store, "t") == sorted(t.number for t in complete[:3])
    assert store.keys("t/checkpoints/") == []
    # They are the study's artifacts, as the dashboard lists them.
    study_obj = optuna.load_study(study_name="t", storage=open_storage(s.storage))
    names = {m.filename for m in optuna.artifacts.get_all_artifact_meta(study_obj)}
    assert names == {f"trial-{t.number}-model.keras" for t in complete[:3]}
    # A trial without kept weights: exit 2, pointing at retrain, nothing written.
    out = tmp_path / "export" / "best.json"
    refused = search_here(
        "export", "t", "--top", "4", "--weights", "-o", out, "--storage", s.storage, cwd=s.cwd
    )
    assert refused.returncode == 2 and "search retrain" in refused.stderr
    assert not out.parent.exists()
    # The best two, with their models beside the bundle.
    exported = search_here(
        "export", "t", "--top", "2", "--weights", "-o", out, "--storage", s.storage, cwd=s.cwd
    )
    assert exported.returncode == 0, exported.stderr
    bundle = json.loads(out.read_text())
    for entry in bundle["trials"]:
        model_file = out.parent / entry["weights"]
        assert model_file.name == f"best-trial-{entry['number']}.keras"
        # The model scores the validation split as the trial's best epoch did.
        accuracy = _validation_accuracy(
            model_file, train_subset=STUDY_RUN_TRAIN, validation_subset=STUDY_RUN_VALIDATION
        )
        assert abs(accuracy - trials[entry["number"]].value) <= 1e-4
    # `make run`'s final step: the best trial's kept model tested once, as trained.
    from search.export import read_export
    from search.retrain import retrain

    best = bundle["trials"][0]
    report = retrain(read_export(out), tmp_path / "final", from_weights=True, log=lambda _: None)
    assert report["trial"] == best["number"] and report["epochs"] == best["best_epoch"]
    assert abs(report["validation"]["accuracy"] - best["value"]) <= 1e-4
    assert 0 < report["test"]["accuracy"] <= 1 and (tmp_path / "final" / "model.keras").is_file()


def _validation_accuracy(
    model_file: Path, *, train_subset: int, validation_subset: int = VALIDATION
) -> float:
    """The saved model's accuracy on the study's validation split (loaded as a user would;
    that it needs nothing of this project is `test_saved_models_load_with_plain_keras...`)."""
    import keras

    from search.data import load_dataset

    data = load_dataset(
        "fashion_mnist", train_subset=train_subset, validation_subset=validation_subset
    )
    model = keras.models.load_model(model_file)
    return model.evaluate(data.val.x, data.val.y, verbose=0, return_dict=True)["accuracy"]


# --- standalone models ---------------------------------------------------------------

PLAIN_KERAS = """
import sys
import keras
import numpy as np
images = np.load(sys.argv[1])
for name in sys.argv[2:]:
    model = keras.models.load_model(f"{name}.keras")
    np.save(f"{name}.npy", model.predict(images, verbose=0))
mine = sorted(m for m in sys.modules if m.split(".")[0] in ("search", "spaces"))
assert not mine, mine
"""
# Each space's model, a conv one trained with label smoothing.
SAVED = {"dense": {}, "conv": {"label_smoothing": 0.1}, "transfer": {}}


def test_saved_models_load_with_plain_keras_and_predict_the_same(tmp_path, small_data):
    import keras

    from search.prior import resolve_prior
    from search.training import save_model
    from spaces import load_space

    images = small_data.val.x[:64]
    np.save(tmp_path / "x.npy", images)
    expected = {}
    for space, changes in SAVED.items():
        module = load_space(space)
        _, centre = resolve_prior(module, {}, source="test")
        # The space's fixed settings; a transfer backbone without ImageNet weights (no
        # download).
        options = {**getattr(module, "OPTIONS", {})}
        options |= {"weights": "none"} if space == "transfer" else {}
        config = module.suggest(optuna.trial.FixedTrial(centre)) | options | changes
        keras.utils.set_random_seed(0)
        model = module.build(config, small_data.input_shape, small_data.num_classes)
        # Trained a little (its optimizer built, its loss used), on 128 images: it is the
        # file that is tested, not the model.
        model.fit(small_data.train.x[:128], small_data.train.y[:128], epochs=1, verbose=0)
        expected[space] = model.predict(images, verbose=0)
        save_model(model, tmp_path / f"{space}.keras")
    # A Python with Keras and NumPy, but not this project (-I: no PYTHONPATH, no cwd), loads
    # each (one process for the three: a start of TensorFlow is seconds).
    plain = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_KERAS, str(tmp_path / "x.npy"), *SAVED],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert plain.returncode == 0, plain.stderr
    for space, predicted in expected.items():
        np.testing.assert_allclose(
            np.load(tmp_path / f"{space}.npy"), predicted, rtol=1e-5, atol=1e-6, err_msg=space
        )


# --- which failed trials come back --------------------------------------------------


def _failed(study: optuna.Study, retry_history: list[int]) -> optuna.trial.FrozenTrial:
    attrs = (
        {"failed_trial": retry_history[0], "retry_history": retry_history} if retry_history else {}
    )
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.FAIL,
            params={"x": 1.0},
            distributions={"x": optuna.distributions.FloatDistribution(0, 2)},
            system_attrs=attrs,
        )
    )
    return study.get_trials(deepcopy=False)[-1]


def test_a_retry_comes_back_while_it_makes_progress_up_to_the_limit(tmp_path, monkeypatch):
    from search.checkpoints import Checkpoint, save_checkpoint
    from search.failures import RetryWithProgress

    store = FolderStore(tmp_path / "runs")
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")

    def retried(trial) -> bool:
        before = len(study.get_trials(states=(TrialState.WAITING,)))
        RetryWithProgress(str(tmp_path / "runs"), max_retries=2)(study, trial)
        return len(study.get_trials(states=(TrialState.WAITING,))) > before

    def progress(number: int) -> None:
        save_checkpoint(store, "s", Checkpoint(number, 1, {}, [], [], [], {}))

    # A first failure comes back, checkpoint or not.
    assert retried(_failed(study, []))
    # A retry that saved no checkpoint of its own made no progress: given up.
    assert not retried(_failed(study, [0]))
    # One that did comes back, up to the limit of retries in all.
    # (trials 0-2 so far, and the WAITING retry of 0 is trial 1.)
    progress(3)
    assert retried(_failed(study, [0]))
    progress(5)
    assert not retried(_failed(study, [0, 3]))
    # Given up on: every attempt's checkpoint is removed.
    assert store.keys("s/checkpoints/") == []
