"""Retrain: an exported trial reproduced in a new process, tested once; bad files exit 2."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from conftest import STUDY_RUN_TRAIN, STUDY_RUN_VALIDATION, run_search, search_here

from search.data import FASHION_MNIST_FILES, find_fashion_mnist, read_idx
from search.record import TrialRecord
from search.storage import open_storage

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_retrain_in_a_new_process_reproduces_the_trials_validation_accuracy(
    study_run, retrained_best
):
    s = study_run
    study = optuna.load_study(study_name=s.name, storage=open_storage(s.storage))
    best = study.best_trial
    report = json.loads((retrained_best.out_dir / "report.json").read_text())
    record = TrialRecord.of(best)
    assert report["trial"] == best.number and report["epochs"] == record.best_epoch
    assert report["seed"] == record.seed
    # The acceptance rule: within 0.5 percentage points of the trial's validation accuracy.
    assert abs(report["validation"]["accuracy"] - best.value) <= 0.005
    assert report["trial_validation"]["accuracy"] == best.value
    # It learned from the training split only, and says so.
    assert report["data"] == {
        "train_images": STUDY_RUN_TRAIN,
        "validation_images": STUDY_RUN_VALIDATION,
        "test_images": 10_000,
        "learns_from_validation": False,
    }
    # What the user reads at the end: the same numbers as the report.
    assert (
        f"validation accuracy {report['validation']['accuracy']:.4f}"
        f" (the trial's: {best.value:.4f}), test accuracy {report['test']['accuracy']:.4f}"
    ) in retrained_best.output
    assert len(report["history"]["val_accuracy"]) == report["epochs"]
    # Everything from the export it came from travels with it.
    exported = json.loads(retrained_best.export.read_text())
    assert report["export"]["definition"] == exported["definition"]
    assert report["export"]["trials"] == [exported["trials"][0]]
    for name in ("model.keras", "history.png", "confusion.png"):
        assert (retrained_best.out_dir / name).stat().st_size > 0, name
    # Progress while training, one line per epoch when not on a terminal.
    assert f"Epoch {report['epochs']}/{report['epochs']}" in retrained_best.output


def test_reported_test_accuracy_is_that_of_the_saved_model(retrained_best):
    import keras

    # Registers the label-smoothed loss that the best trial may have trained with (README):
    # without it, loading depends on whether an earlier test in this process imported it.
    import spaces.losses  # noqa: F401

    report = json.loads((retrained_best.out_dir / "report.json").read_text())
    # Recomputed from the saved file and the raw test files, not from search's evaluation.
    directory = find_fashion_mnist()
    images, labels = (read_idx(directory / name) for name in FASHION_MNIST_FILES["test"])
    model = keras.models.load_model(retrained_best.out_dir / "model.keras")
    predicted = model.predict(images[..., None], verbose=0).argmax(axis=1)
    assert report["test"]["accuracy"] == np.mean(predicted == labels)
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    assert report["confusion_matrix"] == confusion.tolist()
    recall = [c["recall"] for c in report["classes"]]
    assert recall == pytest.approx(np.diag(confusion) / confusion.sum(axis=1))


def _break(bundle: dict, what: str) -> dict:
    """A copy of a real bundle broken in one way."""
    bundle = json.loads(json.dumps(bundle))
    if what == "space":
        bundle["definition"]["study"]["space"] = "resnet"
    elif what == "config":
        bundle["trials"][0]["config"]["units"] = [-5]
    elif what == "key":
        del bundle["trials"][0]["config"]["batch_size"]
    elif what == "entry":
        bundle["trials"][0]["best_epoch"] = "4"
    return bundle


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, (), "no such export file"),
        ("{not json", (), "not valid JSON"),
        ("[]", (), "not a search export (format is 'list'"),
        ("space", (), "space is 'resnet', but no module spaces.resnet exists"),
        ("config", (), "space cannot build its config"),
        ("key", (), "its config has no key 'batch_size'"),
        ("entry", (), "trials[0] best_epoch is '4', but must be int"),
        ("", ("--trial", "999"), "has no trial 999; it exports trials ["),
    ],
    ids=["missing", "malformed", "not-export", "space", "config", "key", "entry", "trial"],
)
def test_bad_export_files_exit_2_and_write_nothing(
    tmp_path, retrained_best, content, args, message
):
    path = tmp_path / "best.json"
    if content is not None:
        bundle = json.loads(retrained_best.export.read_text())
        text = content if content in ("{not json", "[]") else json.dumps(_break(bundle, content))
        path.write_text(text)
    # A space or config that cannot build is found after retrain has set TensorFlow's
    # threads, which only a new process may do; the others are refused before, in this one.
    search = run_search if content in ("space", "config", "key") else search_here
    result = search("retrain", path, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and result.stderr.count("error:") == 1, result.stderr
    assert str(path) in result.stderr
    # Nothing beside the file: no trial-N directory, no model, no report.
    assert [p.name for p in tmp_path.iterdir()] == (["best.json"] if content is not None else [])
