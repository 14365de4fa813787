"""Study definitions: the shipped files load; broken ones exit 2 and write nothing.

The CLI runs in this process (`search_here`): what is tested is its answer, not its process."""

from __future__ import annotations

import pytest
from conftest import REPO, search_here, study_toml

from search.config import ConfigError, load_config


@pytest.mark.parametrize("name", ["quick", "dense", "conv", "transfer"])
def test_shipped_studies_are_valid(name):
    config = load_config(REPO / "studies" / f"{name}.toml")
    assert config.name == name and config.direction == "maximize"


def test_defaults_and_budget_override(write_study):
    config = load_config(write_study(max_epochs=3))
    assert config.data.validation_split == 0.2 and config.trials.max_epochs == 3
    assert config.with_budget(n_trials=99).trials.n_trials == 99


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (("[trials]", "[trials]\nepochs = 3"), r"unknown key \[trials\] epochs"),
        (("[data]", "[extra]\n[data]"), r"unknown section \[extra\]"),
        (('space = "dense"', "space = 3"), r"\[study\] space is 3, but must be str"),
        (('sampler = "tpe"', 'sampler = "cmaes"'), r"\[trials\] sampler is 'cmaes', but must be"),
        (('pruner = "median"', 'pruner = "asha"'), r"\[trials\] pruner is 'asha'"),
        (("max_epochs = 4", "max_epochs = 0"), r"\[trials\] max_epochs is 0, but must be >= 1"),
        (("n_trials = 8", "n_trials = true"), r"\[trials\] n_trials is True, but must be int"),
        (("validation_split = 0.2", "validation_split = 1.5"), "must be between 0 and 1"),
        (('metric = "val_accuracy"', 'metric = "f1"'), r"\[study\] metric is 'f1'"),
        (("n_trials = 8\n", ""), r"\[trials\] n_trials is required"),
        (("[study]", "[study\n"), "not valid TOML"),
        (("prior = true", "prior = false\n[prior]\nn_blocks = 2"), r"\[prior\] table, but"),
        (("max_epochs = 4", "max_epochs = 4\nmin_epochs = 5"), "min_epochs is 5, but must be <="),
        (
            ("max_epochs = 4", "max_epochs = 4\ntrial_minutes = 0"),
            r"trial_minutes is 0.0, but must be > 0",
        ),
        (
            ("max_epochs = 4", "max_epochs = 4\nmax_epoch_ratio = 1"),
            r"max_epoch_ratio is 1.0, but must be > 1",
        ),
    ],
)
def test_broken_definitions_name_the_file_and_key(write_study, replace, message):
    path = write_study(text=study_toml().replace(*replace))
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_missing_study_file():
    with pytest.raises(ConfigError, match="no such study file"):
        load_config("nope.toml")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"space": "resnet"}, "space is 'resnet', but no module spaces.resnet exists"),
        ({"dataset": "npz:/nonexistent/data.npz"}, "dataset npz:/nonexistent/data.npz: no such"),
        ({"pruner": "asha"}, r"\[trials\] pruner is 'asha'"),
        ({"prior_table": {"learning_rate": 0.5}}, r"[prior] learning_rate is 0.5, but must lie"),
        ({"prior_table": {"lr": 0.5}}, r"unknown key [prior] lr"),
    ],
)
def test_cli_rejects_bad_study_with_exit_2_and_creates_nothing(
    tmp_path, write_study, keys, message
):
    db = tmp_path / "runs" / "s.db"
    result = search_here("run", write_study(**keys), "--storage", f"sqlite:///{db}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("error:") == 1
    assert message.replace("\\", "") in result.stderr or pytest.fail(result.stderr)
    # Nothing half-written: no storage file, so certainly no study in it.
    assert not db.exists()


def test_cli_rejects_a_changed_definition_of_an_existing_study(tmp_path, write_study):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    assert search_here("create", write_study(), "--storage", storage, cwd=tmp_path).returncode == 0
    changed = write_study("changed.toml", space="conv")
    result = search_here("create", changed, "--storage", storage, cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "exists with [study] space = 'dense', but the definition now says 'conv'" in result.stderr
    )
    # A new budget is not a new study: it is accepted and recorded.
    result = search_here("create", write_study(n_trials=20), "--storage", storage, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resuming study 't'" in result.stdout


def test_unknown_storage_scheme_is_a_clear_error(tmp_path, write_study):
    result = search_here("create", write_study(), "--storage", "mongodb://x/y", cwd=tmp_path)
    assert result.returncode == 2
    assert "uses 'mongodb'; supported: sqlite, postgresql" in result.stderr


def test_every_command_has_help(tmp_path):
    for command in ["run", "worker", "create", "status", "reap"]:
        result = search_here(command, "--help", cwd=tmp_path)
        assert result.returncode == 0 and "--storage" in result.stdout, command


def test_a_study_file_with_heartbeat_settings_still_loads_and_says_where_they_went(
    write_study, capsys
):
    text = study_toml().replace("[trials]", "[trials]\nheartbeat_interval = 10\ngrace_period = 60")
    config = load_config(write_study(text=text))
    assert config == load_config(write_study("plain.toml"))
    err = capsys.readouterr().err
    assert "grace_period is ignored" in err and "--grace-period" in err
    assert "heartbeat_interval is ignored" in err and "--heartbeat-interval" in err
