"""Spaces: define-by-run suggest, FixedTrial replays, the notebook's baselines, the priors."""

from __future__ import annotations

import json

import keras
import optuna
import pytest

from search.prior import BASELINE, resolve_prior
from search.record import queued_attrs
from spaces import SpaceError, conv, conv_plus, dense, load_space, transfer

optuna.logging.set_verbosity(optuna.logging.WARNING)


def config_of(space, params):
    """The config a space's params stand for: `suggest` replayed with them."""
    return space.suggest(optuna.trial.FixedTrial(params))


def baseline(space, name):
    return config_of(space, space.BASELINES[name])


# The notebook's parameter counts (shared/seed-models.md).
PARAM_COUNTS = {
    (dense, "model_0"): 101_770,
    (dense, "model_1"): 337_674,
    (dense, "model_2"): 535_818,
    (dense, "model_3"): 535_818,
    (dense, "model_4"): 1_462_538,
    (dense, "model_5"): 535_818,
    (dense, "model_6"): 535_818,
    (dense, "model_7"): 1_462_538,
    (conv, "model_a"): 693_962,
    (conv, "model_b"): 241_546,
    (conv, "model_c"): 422_026,
    (conv, "model_d"): 242_954,
}


@pytest.mark.parametrize(("space", "name"), list(PARAM_COUNTS), ids=[n for _, n in PARAM_COUNTS])
def test_baseline_has_the_notebooks_parameter_count(space, name):
    model = space.build(baseline(space, name), (28, 28, 1), 10)
    assert model.count_params() == PARAM_COUNTS[(space, name)]


def test_model_d_has_the_notebooks_non_trainable_parameters():
    model = conv.build(baseline(conv, "model_d"), (28, 28, 1), 10)
    # Batch-norm moving statistics: 2 x (32 + 64 + 128 + 128).
    assert sum(int(keras.ops.size(w)) for w in model.non_trainable_weights) == 704


@pytest.mark.parametrize("space", [dense, conv, transfer], ids=["dense", "conv", "transfer"])
def test_every_baseline_and_the_prior_centre_are_points_the_space_draws(space):
    _, centre = resolve_prior(space, {}, source="test")
    starting_points = {**space.BASELINES, "prior centre": centre}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for name, params in starting_points.items():
        study.enqueue_trial(params, user_attrs=queued_attrs(BASELINE, baseline=name))
    for name, params in starting_points.items():
        trial = study.ask()
        # An enqueued point is drawn exactly: every param used, none sampled instead...
        assert space.suggest(trial) == config_of(space, params), name
        assert trial.params == params, name
        # ...and every value lies inside the distribution suggest declared for it.
        for key, value in trial.params.items():
            dist = trial.distributions[key]
            assert dist._contains(dist.to_internal_repr(value)), (name, key, value)
        study.tell(trial, 0.5)


@pytest.mark.parametrize("space", [dense, conv], ids=["dense", "conv"])
def test_suggested_configs_replay_and_build(space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(16):
        trial = study.ask()
        config = space.suggest(trial)
        # Plain data: survives JSON unchanged (it is stored and exported as JSON).
        assert json.loads(json.dumps(config)) == config
        # A stored trial's params give back its config.
        assert config_of(space, trial.params) == config
        # Every point of the space builds on Fashion-MNIST's 28x28 images.
        model = space.build(config, (28, 28, 1), 10)
        assert model.output_shape == (None, 10)
        study.tell(trial, 0.5)
        keras.backend.clear_session()


def test_conv_plus_is_the_conv_space_under_its_former_name():
    # Studies and exports made under the old name replay in the space that absorbed it.
    params = conv.BASELINES["model_d"] | {"convs_per_block": 2, "label_smoothing": 0.1}
    assert config_of(conv_plus, params) == config_of(conv, params)
    assert conv_plus.build is conv.build


def test_conv_build_options_change_the_model_as_configured():
    # conv searches convs_per_block and label smoothing; conv.build also takes
    # augmentation, a pooling head and AdamW, for spaces of your own.
    config = baseline(conv, "model_b") | {
        "augment": {"shift": 0.1, "flip": True, "erase": 0.25},
        "convs_per_block": 2,
        "head": baseline(conv, "model_b")["head"] | {"pooling": "gap"},
        "optimizer": "adamw",
        "weight_decay": 0.01,
        "label_smoothing": 0.1,
    }
    model = conv.build(config, (28, 28, 1), 10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 6
    assert {"RandomTranslation", "RandomFlip", "RandomErasing", "GlobalAveragePooling2D"} <= set(
        kinds
    )
    assert "Flatten" not in kinds
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert model.optimizer.weight_decay == pytest.approx(0.01)
    # Augmentation acts in training only: inference is deterministic.
    images = keras.random.randint((8, 28, 28, 1), 0, 256, seed=0).numpy().astype("uint8")
    assert (model(images, training=False).numpy() == model(images, training=False).numpy()).all()
    assert not (
        model(images, training=True).numpy() == model(images, training=False).numpy()
    ).all()


def test_dense_additions_change_the_model_as_configured():
    config = baseline(dense, "model_3") | {
        "augment": {"shift": 0.1, "flip": True},
        "optimizer": "adamw",
        "weight_decay": 0.02,
        "label_smoothing": 0.1,
        "schedule": {"name": "cosine"},
    }
    model = dense.build(config, (28, 28, 1), 10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert {"RandomTranslation", "RandomFlip"} <= set(kinds)
    assert model.count_params() == PARAM_COUNTS[(dense, "model_3")]
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert model.optimizer.weight_decay == pytest.approx(0.02)
    assert model.loss.label_smoothing == pytest.approx(0.1)
    images = keras.random.randint((8, 28, 28, 1), 0, 256, seed=0).numpy().astype("uint8")
    assert (model(images, training=False).numpy() == model(images, training=False).numpy()).all()
    assert not (
        model(images, training=True).numpy() == model(images, training=False).numpy()
    ).all()


def test_dense_config_exported_before_the_additions_still_builds():
    # An export written before dense had augmentation, AdamW and label smoothing: its
    # config (what `search retrain` trains) lacks their keys and means them off.
    old = {
        "units": [512, 256],
        "dropout": [0.5, 0.5],
        "l1": 0.0,
        "batch_norm": False,
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "schedule": {"name": "constant"},
        "batch_size": 32,
    }
    assert dense.build(old, (28, 28, 1), 10).count_params() == PARAM_COUNTS[(dense, "model_3")]


def test_label_smoothing_of_integer_labels_matches_keras_on_one_hot_labels():
    from spaces.losses import SparseSmoothedCrossentropy

    labels = keras.ops.convert_to_tensor([0, 3, 9, 3])
    probs = keras.ops.softmax(keras.random.normal((4, 10), seed=1))
    expected = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(
        keras.ops.one_hot(labels, 10), probs
    )
    smoothed = SparseSmoothedCrossentropy(0.1)(labels, probs)
    assert float(smoothed) == pytest.approx(float(expected), rel=1e-5)
    plain = keras.losses.SparseCategoricalCrossentropy()(labels, probs)
    assert float(SparseSmoothedCrossentropy(0.0)(labels, probs)) == pytest.approx(
        float(plain), rel=1e-5
    )


def test_label_smoothed_model_saves_and_loads(tmp_path):
    config = baseline(conv, "model_a") | {"label_smoothing": 0.1}
    model = conv.build(config, (28, 28, 1), 10)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.loss.label_smoothing == pytest.approx(0.1)


def test_conv_config_too_deep_for_valid_padding_still_builds():
    config = baseline(conv, "model_c") | {"padding": "valid", "kernel_size": 5}
    model = conv.build(config, (28, 28, 1), 10)
    assert model.output_shape == (None, 10)


def test_build_takes_other_image_sizes_and_classes():
    model = conv.build(baseline(conv, "model_d"), (32, 32, 3), 4)
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 4)


def test_unknown_space_names_the_value_and_the_choices():
    with pytest.raises(SpaceError, match="space is 'resnet'.*dense, conv"):
        load_space("resnet")


def test_space_module_without_the_interface_is_rejected():
    with pytest.raises(SpaceError, match="lacks suggest, build, BASELINES"):
        load_space("json.decoder")
