"""Warm start: `--enqueue` seeds a study with an export's trials, once; bad bundles exit 2."""

from __future__ import annotations

import json

import optuna
import pytest
from conftest import search_here
from optuna.trial import TrialState

from search.record import TrialRecord
from search.storage import open_storage

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _warm_study(write_study):
    # A dense study like the exported one, on less data: the enqueued trials run fast.
    return write_study(
        name="warm",
        n_trials=3,
        max_epochs=1,
        pruner="none",
        prior=False,
        train_subset=500,
        validation_subset=250,
    )


def test_enqueued_trials_run_first_and_once(retrained_best, tmp_path, write_study):
    export = retrained_best.export
    exported = json.loads(export.read_text())["trials"]
    study_file = _warm_study(write_study)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    outputs = []
    # (`run` starts its worker as a process; the command itself runs in this one.)
    for command in ("create", "run", "create"):
        result = search_here(
            command, study_file, "--enqueue", export, "--storage", storage, cwd=tmp_path
        )
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout)
    assert f"queued 2 of the 2 exported trials from {export}\n" in outputs[0]
    # Running a command again queues nothing: the params are already in the study.
    for output in outputs[1:]:
        assert "queued 0 of the 2 exported trials" in output
        assert "(2 with params already in the study)" in output
    trials = optuna.load_study(study_name="warm", storage=open_storage(storage)).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # The export's trials, best first, are the study's first trials; the sampler goes on.
    assert [t.params for t in trials[:2]] == [e["params"] for e in exported]
    records = [TrialRecord.of(t) for t in trials]
    assert [r.enqueued_from for r in records[:2]] == [f"{export}#{e['number']}" for e in exported]
    assert records[2].enqueued_from is None


def _break(bundle: dict, what: str) -> dict:
    """A copy of a real bundle broken in one way."""
    bundle = json.loads(json.dumps(bundle))
    if what == "space":
        bundle["definition"]["study"]["space"] = "conv"
    elif what == "range":
        bundle["trials"][1]["params"]["n_layers"] = 9
    elif what == "extra":
        bundle["trials"][1]["params"]["kernel_size"] = 3
    return bundle


@pytest.mark.parametrize(
    ("what", "message"),
    [
        (None, "no such export file"),
        ("space", "exports trials of the 'conv' space, but study 'warm' searches the 'dense'"),
        ("range", "the 'dense' space does not accept its params (The value 9 of the parameter"),
        ("extra", "the 'dense' space does not suggest its params ['kernel_size']"),
    ],
    ids=["missing", "space", "range", "extra"],
)
def test_bad_bundles_exit_2_and_create_nothing(
    retrained_best, tmp_path, write_study, what, message
):
    study_file = _warm_study(write_study)
    path = tmp_path / "other.json"
    if what is not None:
        bundle = json.loads(retrained_best.export.read_text())
        path.write_text(json.dumps(_break(bundle, what)))
    db = tmp_path / "s.db"
    result = search_here(
        "run", study_file, "--enqueue", path, "--storage", f"sqlite:///{db}", cwd=tmp_path
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and result.stderr.count("error:") == 1, result.stderr
    assert str(path) in result.stderr
    # Checked before the storage is opened: no database, no study, no runs/ directory.
    assert not db.exists() and not (tmp_path / "runs").exists()
