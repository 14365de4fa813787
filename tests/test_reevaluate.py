"""Noise-aware selection: `search export --reevaluate` ranks configs by their mean over seeds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from conftest import once_per_run, run_search, search_here
from optuna.trial import TrialState

from search.data import FASHION_MNIST_FILES, find_fashion_mnist
from search.storage import open_storage

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Reevaluated:
    """`search export --top 2 --reevaluate 2 --jobs 2` of the finished study."""

    export: Path
    stdout: str


@pytest.fixture(scope="session")
def reevaluated(study_run, tmp_path_factory) -> Reevaluated:
    """The re-evaluation both tests look at, made once per test run (also under
    pytest-xdist: they only read it)."""
    s = study_run

    def make() -> dict:
        directory = tmp_path_factory.mktemp("reevaluated")
        # The real training files beside test files that cannot be read: an export that
        # touched the test set would fail.
        data_dir = directory / "data"
        data_dir.mkdir()
        for name in FASHION_MNIST_FILES["train"]:
            (data_dir / name).symlink_to(find_fashion_mnist() / name)
        for name in FASHION_MNIST_FILES["test"]:
            (data_dir / name).write_bytes(b"not an IDX file")
        out = directory / "best.json"
        result = run_search(
            "export", s.name, "-o", out, "--top", "2", "--reevaluate", "2", "--jobs", "2",
            "--data-dir", data_dir, "--storage", s.storage, cwd=s.cwd,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return {"export": str(out), "stdout": result.stdout}

    made = once_per_run(tmp_path_factory, "reevaluated", make)
    return Reevaluated(Path(made["export"]), made["stdout"])


def test_reevaluated_export_ranks_by_mean_and_retrain_reports_it(study_run, reevaluated, tmp_path):
    s = study_run
    out = reevaluated.export
    entries = json.loads(out.read_text())["trials"]
    study = optuna.load_study(study_name=s.name, storage=open_storage(s.storage))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    top = sorted(complete, key=lambda t: t.value, reverse=True)[:2]
    # The two best trials, each trained again with two seeds other than its own.
    assert sorted(e["number"] for e in entries) == sorted(t.number for t in top)
    for entry in entries:
        r = entry["reevaluation"]
        assert r["seeds"] == [entry["seed"] + 1, entry["seed"] + 2]
        assert r["epochs"] == entry["best_epoch"] and len(r["val_accuracy"]) == 2
        # The seeds' results, summarized: the ranking below goes by this mean.
        assert min(r["val_accuracy"]) <= r["mean"] <= max(r["val_accuracy"])
        assert r["std"] >= 0 and (r["std"] > 0) == (len(set(r["val_accuracy"])) > 1)
        # Validation numbers only: nothing in the bundle came from a test set.
        assert "test" not in json.dumps(entry)
    # Best mean first, ranked by it; the trial's own rank is kept beside.
    means = [e["reevaluation"]["mean"] for e in entries]
    assert means == sorted(means, reverse=True)
    assert [e["rank"] for e in entries] == [1, 2]
    assert {e["reevaluation"]["trial_rank"] for e in entries} == {1, 2}
    # Progress: one line per seed as it finishes.
    assert reevaluated.stdout.count("re-evaluating trial") == 4, reevaluated.stdout

    # retrain takes the first entry, the winner, and carries its mean and spread. The
    # export is shared with another test: the retrained model goes to this test's directory.
    winner = entries[0]
    retrained = tmp_path / f"trial-{winner['number']}"
    result = run_search("retrain", out, "-o", retrained, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((retrained / "report.json").read_text())
    assert report["trial"] == winner["number"]
    assert report["reevaluation"] == winner["reevaluation"]
    assert f"mean over 2 other seeds: {winner['reevaluation']['mean']:.4f}" in result.stdout

    # The study's report shows the spread beside the winner's test accuracy.
    result = search_here(
        "report",
        s.name,
        "-o",
        tmp_path / "report",
        "--retrained",
        tmp_path,
        "--storage",
        s.storage,
        cwd=s.cwd,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    page = (tmp_path / "report" / "report.html").read_text()
    r = winner["reevaluation"]
    assert f"{r['mean']:.4f} ± {r['std']:.4f} (2 seeds)" in page
    assert f"seed {r['seeds'][0]}: {r['val_accuracy'][0]:.4f}" in page


def test_parallel_reevaluation_gives_each_seed_the_result_it_gets_alone(
    study_run, reevaluated, tmp_path
):
    s = study_run
    # Two at once: the module's re-evaluation; one at a time: this one, of the best trial's
    # two seeds (the other trial's would only repeat the comparison, at seconds a training).
    out = tmp_path / "jobs-1.json"
    result = run_search(
        "export", s.name, "-o", out, "--top", "1", "--reevaluate", "2", "--jobs", "1",
        "--storage", s.storage, cwd=s.cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = {1: result.stdout, 2: reevaluated.stdout}
    accuracies = {
        jobs: {
            e["number"]: e["reevaluation"]["val_accuracy"]
            for e in json.loads(path.read_text())["trials"]
        }
        for jobs, path in ((1, out), (2, reevaluated.export))
    }
    # Two trainings at once, each in its own 1-thread process: the same numbers, seed by seed.
    assert "re-evaluating 4 trainings, 2 at once" in outputs[2], outputs[2]
    assert "at once" not in outputs[1]
    ((number, alone),) = accuracies[1].items()
    assert len(alone) == 2 and accuracies[2][number] == alone
    assert outputs[2].count("re-evaluating trial") == 4
