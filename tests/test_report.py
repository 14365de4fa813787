"""Report: one HTML page with every section, checked in Chromium; empty studies exit 2."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from pathlib import Path

import optuna
import pytest
from conftest import STUDY_RUN_TRAIN, STUDY_RUN_VALIDATION, once_per_run, search_here
from optuna.trial import TrialState

from search.record import FailureKind, TrialWriter

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)
SECTIONS = (
    "summary",
    "data",
    "trials",
    "history",
    "curves",
    "pruned",
    "importances",
    "retrained",
)
FAIL_REASON = "loss or val_accuracy is not finite at epoch 1"


@pytest.fixture(scope="session")
def report(study_run, retrained_best, tmp_path_factory) -> tuple[Path, list, dict]:
    """The report of a copy of the finished study with a failed trial added, made once per
    test run (also under pytest-xdist: its tests only read it).

    Returns the page, the study's trials and the retrain's report.json.
    """

    def make() -> dict:
        cwd = tmp_path_factory.mktemp("report")
        db = cwd / "search.db"
        with sqlite3.connect(study_run.storage.removeprefix("sqlite:///")) as src:
            with sqlite3.connect(db) as dst:
                src.backup(dst)
        storage = f"sqlite:///{db}"
        # A plain storage: heartbeats are for trials that `optimize` runs.
        study = optuna.load_study(study_name=study_run.name, storage=storage)
        trial = study.ask()
        TrialWriter(trial).set_failure(FailureKind.DIVERGED, FAIL_REASON)
        study.tell(trial, state=TrialState.FAIL)
        result = search_here(
            "report",
            study_run.name,
            "--storage",
            storage,
            "-o",
            cwd / "out",
            "--retrained",
            retrained_best.out_dir.parent,
            cwd=cwd,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        page = cwd / "out" / "report.html"
        assert f"report: {page.as_uri()}" in result.stdout
        return {"page": str(page), "storage": storage}

    made = once_per_run(tmp_path_factory, "report", make)
    study = optuna.load_study(study_name=study_run.name, storage=made["storage"])
    retrain = json.loads((retrained_best.out_dir / "report.json").read_text())
    return Path(made["page"]), study.get_trials(), retrain


def test_report_embeds_every_plot_as_a_png(report):
    page, _, _ = report
    text = page.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in text, section
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    # Examples, history, curves, pruned, importances, val/test bars, retrain's two plots.
    assert len(images) == 8
    assert all(base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n") for png in images)
    # Self-contained: nothing is fetched from elsewhere.
    assert not re.search(r'(src|href)="(?!data:)', text)


def test_report_opens_in_chromium_with_every_section(report, browser):
    from playwright.sync_api import expect

    page_path, trials, retrain = report
    states = {t.number: t.state.name for t in trials}
    assert set(states.values()) == {"COMPLETE", "PRUNED", "FAIL"}
    page = browser.new_page()
    page.goto(page_path.as_uri())
    for section in SECTIONS:
        expect(page.locator(f"section#{section} h1, section#{section} h2")).to_be_visible()
    # Every plot decodes to a real image.
    sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(sizes) == 8 and min(sizes) > 100
    # One example per class, and the class counts of train, validation and test.
    for name in ("T-shirt/top", "Ankle boot"):
        expect(page.locator("section#data")).to_contain_text(name)
    totals = page.locator("section#data tr").last.inner_text().split()
    assert totals == ["total", f"{STUDY_RUN_TRAIN:,}", f"{STUDY_RUN_VALIDATION:,}", "10,000"]
    # The trials table: every trial with its state, the failure's reason, the test result.
    rows = page.locator("section#trials tbody tr")
    expect(rows).to_have_count(len(trials))
    shown = {int(r.split("\t")[1]): r.split("\t")[2] for r in rows.all_inner_texts()}
    assert shown == states
    expect(page.locator("section#trials")).to_contain_text(FAIL_REASON)
    best_row = page.locator("section#trials tbody tr").first
    expect(best_row).to_contain_text(f"{retrain['test']['accuracy']:.4f}")
    expect(page.locator("section#retrained")).to_contain_text(
        f"{retrain['validation']['accuracy']:.4f}"
    )
    # Sorted by rank; a click on a header sorts by that column.
    page.locator("section#trials th", has_text="seconds").click()
    cells = _column(page, 11)
    seconds = [float(t) for t in cells if t != "-"]
    # Missing values (the failed trial never trained) sort last.
    assert seconds == sorted(seconds) and cells[len(seconds) :] == ["-"]


def test_report_of_an_empty_or_unknown_study_exits_2_and_writes_nothing(tmp_path, write_study):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    created = search_here("create", write_study(name="empty"), "--storage", storage, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    for args, message in [
        (("empty",), "study 'empty' has no trials yet; nothing to report"),
        (("nope",), "no study named 'nope' in this storage"),
        (("empty", "--retrained", "missing"), "--retrained: missing: no such file or directory"),
    ]:
        result = search_here("report", *args, "--storage", storage, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


def _column(page, index: int) -> list[str]:
    """The texts of a 1-based column of the trials table, top to bottom."""
    return page.locator(f"section#trials tbody td:nth-child({index})").all_inner_texts()
