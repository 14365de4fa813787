"""Export: a finished study's best trials as a JSON bundle; empty and unknown studies exit 2."""

from __future__ import annotations

import json

import optuna
import pytest
from conftest import STUDY_RUN_TRAIN, search_here
from optuna.trial import TrialState

from search.export import FORMAT, read_export
from search.record import StudyRecord, TrialRecord
from search.storage import open_storage
from spaces import dense

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_export_holds_the_k_best_trials_with_all_it_takes_to_rebuild_them(study_run, tmp_path):
    s = study_run
    out = tmp_path / "top.json"
    result = search_here(
        "export", s.name, "-o", out, "--top", "3", "--storage", s.storage, cwd=s.cwd
    )
    assert result.returncode == 0, result.stderr
    bundle = json.loads(out.read_text())
    study = optuna.load_study(study_name=s.name, storage=open_storage(s.storage))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    ranked = sorted(complete, key=lambda t: t.value, reverse=True)[:3]
    # The K best COMPLETE trials, best first, named in the command's output.
    assert [e["number"] for e in bundle["trials"]] == [t.number for t in ranked]
    assert bundle["trials"][0]["number"] == study.best_trial.number
    assert f"exported trials {[t.number for t in ranked]}" in result.stdout
    assert bundle["format"] == FORMAT and bundle["study"] == s.name
    assert bundle["metric"] == "val_accuracy" and bundle["direction"] == "maximize"
    # The definition (space, data section, seeds, budget) as the study recorded it.
    assert bundle["definition"] == StudyRecord.of(study).definition
    assert bundle["definition"]["data"]["train_subset"] == STUDY_RUN_TRAIN
    assert set(bundle["versions"]) == {"python", "tensorflow", "keras", "optuna", "search"}
    for entry, trial in zip(bundle["trials"], ranked, strict=True):
        assert entry["value"] == trial.value and entry["params"] == trial.params
        # The structured config is what the space builds from the flat params.
        assert entry["config"] == dense.suggest(optuna.trial.FixedTrial(trial.params))
        distributions = {
            name: optuna.distributions.json_to_distribution(json.dumps(d))
            for name, d in entry["distributions"].items()
        }
        assert distributions == trial.distributions
        record = TrialRecord.of(trial)
        for key in ("best_epoch", "epochs", "seed", "threads", "n_params", "history"):
            assert entry[key] == getattr(record, key), key
    # What `search retrain` reads back passes its own checks.
    assert read_export(out).entry()["number"] == ranked[0].number


def test_empty_and_unknown_studies_exit_2_and_write_nothing(tmp_path, write_study):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    created = search_here("create", write_study(name="empty"), "--storage", storage, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    for name, message in [
        ("empty", "study 'empty' has no completed trial to export (0/8 trials done"),
        ("nope", "no study named 'nope' in this storage; studies: ['empty']"),
    ]:
        result = search_here("export", name, "--storage", storage, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in result.stderr and result.stderr.count("error:") == 1
    # Neither the default export file nor its directory exists.
    assert not (tmp_path / "runs").exists()
