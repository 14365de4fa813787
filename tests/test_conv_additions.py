"""The conv space's additions through the CLI: two convs per block and label smoothing train,
export, retrain and reload."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
from conftest import cli_env, run_search, study_toml
from optuna.trial import TrialState

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
    result = run_search("create", study_file, "--storage", storage, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="plus", storage=open_storage(storage))
    study.enqueue_trial(EVERYTHING_ON)
    result = run_search("run", study_file, "--workers", "1", "--storage", storage, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE]
    # The enqueued trial trained the config with both additions and learned: chance is
    # 0.1, and 0.15 is about 3 standard errors above it on 300 validation images.
    assert trials[0].params == EVERYTHING_ON
    assert trials[0].value > 0.15

    export = tmp_path / "plus.json"
    result = run_search("export", "plus", "-o", export, "--storage", storage, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    bundle = json.loads(export.read_text())
    entry = next(e for e in bundle["trials"] if e["number"] == 0)
    assert entry["config"] == conv.suggest(optuna.trial.FixedTrial(EVERYTHING_ON))
    out = tmp_path / "retrained"
    result = run_search("retrain", export, "-o", out, "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    # The saved model loads in a new process without spaces.losses (compiled with Keras'
    # own cross-entropy: the smoothing was for training) and scores the reported accuracy.
    check = (
        "import sys, json, keras, numpy as np;"
        "from search.data import FASHION_MNIST_FILES, find_fashion_mnist, read_idx;"
        "m = keras.models.load_model(sys.argv[1]);"
        "d = find_fashion_mnist();"
        "x, y = (read_idx(d / name) for name in FASHION_MNIST_FILES['test']);"
        "acc = float(np.mean(m.predict(x[..., None], verbose=0).argmax(axis=1) == y));"
        "print(json.dumps({'loss': m.loss, 'test_accuracy': acc,"
        " 'custom': sorted(n for n in sys.modules if n.startswith('spaces'))}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", check, str(out / "model.keras")],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=tmp_path,
    )
    assert loaded.returncode == 0, loaded.stderr
    scored = json.loads(loaded.stdout.splitlines()[-1])
    assert scored["loss"] == "sparse_categorical_crossentropy" and scored["custom"] == []
    assert scored["test_accuracy"] == report["test"]["accuracy"]
