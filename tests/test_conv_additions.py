"""The conv space's additions through the CLI: two convs per block and label smoothing train,
export, retrain and reload."""

from __future__ import annotations

import json

import keras
import numpy as np
import optuna
import pytest
from conftest import run_search, search_here, study_toml
from optuna.trial import TrialState

from search.data import FASHION_MNIST_FILES, find_fashion_mnist, read_idx
from search.storage import open_storage
from spaces import conv

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)

# A small net with both additions on, as params.
EVERYTHING_ON = conv.BASELINES["model_a"] | {
    "n_blocks": 2,
    "filters_b0": 16,
    "dropout_b0": 0.1,
    "filters_b1": 32,
    "dropout_b1": 0.1,
    "convs_per_block": 2,
    "head_units": 32,
    "head_batch_norm": True,
    "head_dropout": 0.2,
    "label_smoothing": 0.1,
    "schedule": "cosine",
}


def test_a_config_with_both_additions_trains_exports_retrains_and_reloads(tmp_path, write_study):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    text = study_toml(
        name="plus",
        space="conv",
        sampler="random",
        pruner="none",
        prior=False,
        # The enqueued config only: a random second one can be a big net that takes minutes.
        n_trials=1,
        max_epochs=2,
        train_subset=600,
        validation_subset=300,
    )
    study_file = write_study(text=text)
    result = search_here("create", study_file, "--storage", storage, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="plus", storage=open_storage(storage))
    study.enqueue_trial(EVERYTHING_ON)
    # Its worker is a process; `run` itself, `create` and `export` run in this one. retrain
    # trains in this process, so it gets a new one.
    result = search_here("run", study_file, "--workers", "1", "--storage", storage, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE]
    # The enqueued trial trained the config with both additions and learned: chance is
    # 0.1, and 0.15 is about 3 standard errors above it on 300 validation images.
    assert trials[0].params == EVERYTHING_ON
    assert trials[0].value > 0.15

    export = tmp_path / "plus.json"
    result = search_here("export", "plus", "-o", export, "--storage", storage, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    bundle = json.loads(export.read_text())
    entry = next(e for e in bundle["trials"] if e["number"] == 0)
    assert entry["config"] == conv.suggest(optuna.trial.FixedTrial(EVERYTHING_ON))
    out = tmp_path / "retrained"
    result = run_search("retrain", export, "-o", out, "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    # The saved model (compiled with Keras' own cross-entropy: the smoothing was for
    # training) scores the reported test accuracy. Its loading in a Python without this
    # project: tests/test_checkpoints.py.
    model = keras.models.load_model(out / "model.keras")
    assert model.loss == "sparse_categorical_crossentropy"
    x, y = (read_idx(find_fashion_mnist() / name) for name in FASHION_MNIST_FILES["test"])
    accuracy = float(np.mean(model.predict(x[..., None], verbose=0).argmax(axis=1) == y))
    assert accuracy == report["test"]["accuracy"]
