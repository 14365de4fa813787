"""The transfer space: the notebook's MobileNetV2, round trips, two rates, a real short study.

Every model here has random weights ("none"): no test downloads ImageNet weights. That the
baseline is a point of the space is checked with the other spaces' in test_spaces.py.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import optuna
import pytest
from conftest import search_here, study_toml
from optuna.trial import TrialState

from search.record import TrialRecord
from search.storage import open_storage
from spaces import transfer

optuna.logging.set_verbosity(optuna.logging.WARNING)

NO_DOWNLOAD = {"backbone": "mobilenet_v2", "weights": "none"}
# The notebook's model as a config: its params replayed through the space.
FROZEN = transfer.suggest(optuna.trial.FixedTrial(transfer.BASELINES["mobilenet_v2_frozen"]))


def test_notebook_baseline_is_the_notebooks_model():
    model = transfer.build(FROZEN | NO_DOWNLOAD, (28, 28, 1), 10)
    # The notebook's frozen MobileNetV2 with its head (shared/seed-models.md): only the head
    # trains (BN 1280 and Dense 512 and 10: 666,122 weights, 2,560 of them BN statistics).
    assert not model.get_layer("backbone").trainable_weights
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 666_122 - 2_560
    # Zero-padded from 28x28 to 32x32, grey repeated to 3 channels, inside the model.
    assert model.get_layer("backbone").input_shape == (None, 32, 32, 3)


def test_images_are_padded_and_preprocessed_the_backbones_way():
    model = transfer.build(FROZEN | NO_DOWNLOAD, (28, 28, 1), 10)
    x = np.random.default_rng(0).integers(0, 256, size=(2, 28, 28, 1), dtype=np.uint8)
    seen = keras.Model(model.input, model.get_layer("preprocessing").output)(x)
    # Black borders to 32x32, grey to RGB, then MobileNetV2's own scaling to -1..1.
    rgb = np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1).astype("float32")
    expected = keras.applications.mobilenet_v2.preprocess_input(rgb)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(seen), expected, atol=1e-6)


def test_efficientnet_b0_backbone_builds():
    config = FROZEN | NO_DOWNLOAD
    model = transfer.build(config | {"backbone": "efficientnet_b0"}, (28, 28, 1), 10)
    # Frozen like the others, its head on top, one output per class.
    assert not model.get_layer("backbone").trainable_weights
    assert model.output_shape == (None, 10)


def test_suggested_configs_replay_and_build():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(4):
        trial = study.ask()
        config = transfer.suggest(trial)
        # Plain data, and a stored trial's params give back its config.
        assert json.loads(json.dumps(config)) == config
        assert transfer.suggest(optuna.trial.FixedTrial(trial.params)) == config
        model = transfer.build(config | NO_DOWNLOAD, (28, 28, 1), 10)
        size = config["input_size"]
        assert model.get_layer("backbone").input_shape == (None, size, size, 3)
        assert model.output_shape == (None, 10)
        # Exactly the top `unfrozen_layers` layers of the backbone train.
        layers = model.get_layer("backbone").layers
        assert [layer.trainable for layer in layers].count(True) == config["unfrozen_layers"]
        assert all(layer.trainable for layer in layers[len(layers) - config["unfrozen_layers"] :])
        study.tell(trial, 0.5)
        keras.backend.clear_session()


def test_backbone_learns_at_its_scaled_rate():
    with keras.name_scope("head_dense"):
        head = keras.Variable(np.zeros(3), name="kernel")
    backbone = keras.Variable(np.zeros(3), name="kernel")
    optimizer = transfer.TwoRateAdam(learning_rate=0.1, head_prefix="head_", backbone_scale=0.01)
    optimizer.apply([np.ones(3), np.ones(3)], [head, backbone])
    # Adam's first step moves each weight by its rate: 0.1 for the head, 0.1 x 0.01 elsewhere.
    np.testing.assert_allclose(head.numpy(), -0.1, rtol=1e-4)
    np.testing.assert_allclose(backbone.numpy(), -0.001, rtol=1e-4)


# Keras' save_weights under NumPy 2 warns once per variable.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_weights_from_a_local_file(tmp_path):
    config = FROZEN | NO_DOWNLOAD
    saved = transfer.build(config, (28, 28, 1), 10).get_layer("backbone")
    path = tmp_path / "mobilenet_v2_no_top.weights.h5"
    saved.save_weights(path)
    loaded = transfer.build(config | {"weights": str(path)}, (28, 28, 1), 10)
    # A file stands in for the download on a machine without internet.
    for a, b in zip(saved.get_weights(), loaded.get_layer("backbone").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="existing weights file"):
        transfer.build(config | {"weights": str(tmp_path / "missing.h5")}, (28, 28, 1), 10)


def test_random_weights_are_warned_about():
    config = FROZEN | NO_DOWNLOAD
    assert "randomly initialized" in transfer.warning(config)
    assert transfer.warning(config | {"weights": "imagenet"}) is None


@pytest.mark.slow
def test_short_transfer_study_runs_through_the_cli(tmp_path, write_study):
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    text = study_toml(
        space="transfer",
        train_subset=200,
        validation_subset=100,
        # The baseline and one sampled config, one epoch each: what is tested is that the
        # space runs through the CLI, not how it learns (a sampled MobileNetV2 of up to 96x96
        # takes seconds per trial).
        n_trials=2,
        max_epochs=1,
        prior=False,
        enqueue_baselines=True,
    )
    study = write_study(text=text + '\n[space]\nweights = "none"\n')
    # Its worker is a process; `run` itself runs in this one.
    result = search_here("run", study, "--workers", "1", "--storage", storage, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = optuna.load_study(study_name="t", storage=open_storage(storage)).trials
    # The budget is spent by trials that trained, not failed ones.
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
    baseline = trials[0]
    assert TrialRecord.of(baseline).baseline == "mobilenet_v2_frozen"
    assert TrialRecord.of(baseline).n_params == 2_924_106
    # Every trial says its backbone was not pretrained.
    assert all("randomly initialized" in TrialRecord.of(t).warning for t in trials)
