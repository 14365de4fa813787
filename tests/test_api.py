"""The Python API: a study defined, run and read back from code, in a script or a notebook."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import optuna
import pytest
from conftest import TESTS, cli_env, run_search
from nbclient import NotebookClient

import search
from search.api import create_study, load_study
from search.config import ConfigError
from search.settings import Settings, SettingsError
from search.study import StudyError
from spaces import Space, SpaceError

EXAMPLE = TESTS.parent / "examples" / "tune_arrays.py"


def _notebook(source: str) -> nbformat.NotebookNode:
    """The example as a notebook: one cell per top-level block (functions in cells)."""
    cells = [block for block in source.split("\n\n\n") if block.strip()]
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])


@pytest.mark.slow
def test_the_example_tunes_arrays_in_a_notebook_and_the_cli_resumes_it(tmp_path, monkeypatch):
    source = EXAMPLE.read_text()
    # The example stays what docs/api.md promises: at most 20 lines of code.
    assert len([line for line in source.splitlines() if line.strip()]) <= 20
    # Run in a real Jupyter kernel: its functions are defined in cells, which only travel
    # to the worker processes by value.
    for name, value in cli_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    notebook = _notebook(source)
    NotebookClient(notebook, timeout=420, kernel_name="python3").execute()
    outputs = [output for cell in notebook.cells for output in cell.outputs if output.get("text")]
    text = "".join(output["text"] for output in outputs)
    # Progress shows in the notebook: the live block (a display) and the trials' ends.
    displays = [
        output
        for cell in notebook.cells
        for output in cell.outputs
        if output["output_type"] in ("display_data", "update_display_data")
    ]
    assert any("trials done" in d["data"]["text/plain"] for d in displays), displays
    assert "started 2 workers" in text
    assert "best trial: {'learning_rate':" in text
    test_accuracy = float(text.split("test accuracy: ")[1].split()[0])
    assert 0.6 < test_accuracy < 1.0
    report = json.loads(next((tmp_path / "runs" / "mlp").glob("trial-*/report.json")).read_text())
    assert report["test"]["accuracy"] == test_accuracy
    # The kept model was read back (its weights counted) and retraining reproduced the
    # trial's validation accuracy (same seed, threads and epochs).
    assert report["validation"]["accuracy"] == pytest.approx(
        report["trial_validation"]["accuracy"], abs=0.01
    )

    # The same study, resumed by name from the command line: a fifth trial on the same
    # functions and arrays, which the study's definition names.
    result = run_search("run", "--study-name", "mlp", "--n-trials", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming study 'mlp'" in result.stdout
    study = load_study("mlp", settings=Settings(storage=f"sqlite:///{tmp_path}/runs/search.db"))
    finished = [t for t in study.trials() if t.state.is_finished()]
    assert len(finished) >= 5
    assert all(t.state != optuna.trial.TrialState.FAIL for t in finished)
    # Results read back as typed records: values, params, a history per epoch.
    best = study.best_trial
    assert best.value == max(t.value for t in finished if t.value is not None)
    assert best.value == max(best.history["val_accuracy"])
    assert best.best_epoch == best.history["val_accuracy"].index(best.value) + 1
    assert set(study.config_of(best.number)) >= {"units", "learning_rate", "batch_size"}
    assert study.config.study.space.startswith("pickle:")
    assert study.config.data.dataset.startswith("npz:")


def _suggest(trial):
    return {"units": trial.suggest_int("units", 8, 32)}


def _build(config, input_shape, num_classes):
    raise AssertionError("not built in these tests")


def _arrays(n=40):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(n, 8, 8), dtype=np.uint8)
    y = np.arange(n) % 2
    return x, y, x[:10], y[:10]


def test_bad_keywords_and_data_are_errors_that_write_nothing(tmp_path):
    settings = Settings(storage=f"sqlite:///{tmp_path / 's.db'}", runs_dir=tmp_path / "runs")
    space = Space(_suggest, _build)
    with pytest.raises(ConfigError, match="unknown keyword 'max_epoch'"):
        create_study("s", space=space, data=_arrays(), n_trials=2, max_epoch=3, settings=settings)
    with pytest.raises(ConfigError, match=r"\[trials\] n_trials is 0, but must be >= 1"):
        create_study("s", space=space, data=_arrays(), n_trials=0, max_epochs=3, settings=settings)
    with pytest.raises(ConfigError, match="data must be a dataset name"):
        create_study("s", space=space, data=[1, 2], n_trials=2, max_epochs=3, settings=settings)
    with pytest.raises(ConfigError, match="space is 3"):
        create_study("s", space=3, data=_arrays(), n_trials=2, max_epochs=3, settings=settings)
    with pytest.raises(SpaceError, match="needs two functions"):
        Space(_suggest, None)
    # An array the classifier cannot use: the .npz's rules, named.
    x, y, xt, yt = _arrays()
    with pytest.raises(search.api.DataError, match="y_train has one class"):
        create_study(
            "s", space=space, data=(x, y * 0, xt, yt), n_trials=2, max_epochs=3, settings=settings
        )
    assert not (tmp_path / "s.db").exists()
    assert not list((tmp_path / "runs").rglob("*.*")) if (tmp_path / "runs").exists() else True


def test_a_study_made_in_code_is_a_study_like_any_other(tmp_path):
    settings = Settings(storage=f"sqlite:///{tmp_path / 's.db'}", runs_dir=tmp_path / "runs")
    space = Space(_suggest, _build, name="tiny")
    study = create_study(
        "s", space=space, data=_arrays(), n_trials=3, max_epochs=2, settings=settings, quiet=True
    )
    again = load_study("s", settings=settings)
    assert again.config == study.config
    # The same arrays and space resume it; other arrays are another dataset: an error.
    create_study(
        "s", space=space, data=_arrays(), n_trials=3, max_epochs=2, settings=settings, quiet=True
    )
    x, y, xt, yt = _arrays()
    with pytest.raises(StudyError, match=r"exists with \[data\] dataset"):
        create_study(
            "s", space=space, data=(x[::-1], y, xt, yt), n_trials=3, max_epochs=2,
            settings=settings, quiet=True,
        )  # fmt: skip
    # A new budget is recorded; the study's best is asked of a study with none complete.
    assert load_study("s", settings=settings, n_trials=5, quiet=True).config.trials.n_trials == 5
    with pytest.raises(search.api.ExportError, match="no completed trial yet"):
        _ = study.best_trial
    with pytest.raises(StudyError, match=r"no study named 'nope'.*studies: \['s'\]"):
        load_study("nope", settings=settings)


def test_settings_come_from_arguments_then_the_environment_then_defaults():
    env = {"SEARCH_GRACE_PERIOD": "30", "SEARCH_KEEP_BEST": "1", "SEARCH_CACHE": "memory"}
    settings = Settings.from_env(env, keep_best=5)
    assert (settings.grace_period, settings.keep_best, settings.cache) == (30, 5, "memory")
    assert Settings.from_env({}) == Settings()
    with pytest.raises(SettingsError, match=r"SEARCH_KEEP_BEST='many': must be a whole number"):
        Settings.from_env({"SEARCH_KEEP_BEST": "many"})
    with pytest.raises(SettingsError, match=r"SEARCH_CACHE is 'ram', but must be one of"):
        Settings.from_env({"SEARCH_CACHE": "ram"})
    # The message names where each value came from: the flag or the variable.
    with pytest.raises(
        SettingsError, match=r"\(5 s, --grace-period\).*\(10 s, SEARCH_HEARTBEAT_INTERVAL\)"
    ):
        Settings.from_env({"SEARCH_HEARTBEAT_INTERVAL": "10"}, grace_period=5)
    # Processes outside Python (a batch script) get them back as variables.
    assert Settings.from_env(settings.environment()) == settings


def test_the_package_exports_the_api_without_starting_tensorflow():
    code = (
        "import sys, search; search.create_study; search.Space; search.Settings;"
        " print('tensorflow' in sys.modules)"
    )

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env()
    )
    assert out.stdout.strip() == "False", out.stderr
    assert Path(search.__file__).parent.name == "search"
