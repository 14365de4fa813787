"""The CLI's habits, as Optuna users and scripts expect them: names, formats, log levels."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import run_search, search_here

from search import __version__


def test_version(tmp_path):
    result = run_search("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"search {__version__}"


def test_status_as_json_lists_the_studys_trials(study_run):
    result = run_search(
        "status",
        "--study-name",
        study_run.name,
        "-f",
        "json",
        "--storage",
        study_run.storage,
        cwd=study_run.cwd,
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["study_name"] == study_run.name and status["direction"] == "maximize"
    # Every finished trial, with its state, value and where its params came from.
    states = {t["state"] for t in status["trials"]}
    assert {"complete", "pruned"} <= states
    assert all("origin" in t for t in status["trials"] if t["state"] != "waiting")
    assert status["counts"]["complete"] == sum(t["state"] == "complete" for t in status["trials"])
    best = max((t for t in status["trials"] if t["state"] == "complete"), key=lambda t: t["value"])
    assert status["best_trial"] == best["number"]
    # What a script does with it (`make test` installs jq).
    jq = subprocess.run(
        ["jq", "-r", ".best_value"], input=result.stdout, capture_output=True, text=True
    )
    assert float(jq.stdout) == pytest.approx(best["value"])


def test_the_study_name_is_positional_or_an_option(study_run):
    def status(*args):
        return run_search("status", *args, "--storage", study_run.storage, cwd=study_run.cwd)

    assert status(study_run.name).stdout == status("--study-name", study_run.name).stdout
    # Two different names: which one was meant?
    result = status("other", "--study-name", study_run.name)
    assert result.returncode == 2 and "differ" in result.stderr
    result = run_search("export", "--storage", study_run.storage, cwd=study_run.cwd)
    assert result.returncode == 2 and "--study-name" in result.stderr


def test_quiet_and_verbose_change_what_is_logged(tmp_path, write_study):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    loud = search_here("create", write_study(name="a"), "--storage", storage, cwd=tmp_path)
    quiet = search_here("create", write_study(name="b"), "-q", "--storage", storage, cwd=tmp_path)
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    # Optuna's info messages go with -q; what the command itself reports stays.
    assert "A new study created" in loud.stderr
    assert "A new study created" not in quiet.stderr
    assert "created study 'b'" in quiet.stdout
