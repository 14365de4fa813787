"""`search dashboard`: loopback by default, SQLite and PostgreSQL, a real browser, live workers.

The browser is Debian's Chromium (`make test` installs the `chromium` package) driven by
Playwright's Python package; no browser is ever downloaded. Screenshots go to
runs/test-artifacts/dashboard/ so a person can look at what the test saw.
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from conftest import REPO, cli_env, run_search, search_cmd, start_search, study_toml
from optuna.trial import TrialState
from pgserver import PostgresServer

from search.checkpoints import FolderStore, kept_numbers
from search.config import load_config
from search.dashboard import PROXY_SECTION
from search.prior import BASELINE
from search.record import TrialRecord, queued_attrs
from search.storage import open_storage
from search.study import create_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
SCREENSHOTS = REPO / "runs" / "test-artifacts" / "dashboard"
STORAGE_ERRORS = re.compile(r"database is locked|OperationalError|StorageInternalError")
# The finished study's trials: validation accuracy per epoch; trial 1 is pruned after epoch 1.
MAX_EPOCHS = 3
CURVES = [[0.71, 0.78, 0.8104], [0.52], [0.74, 0.83, 0.8612], [0.7, 0.76, 0.7931]]
BEST_NUMBER, BEST_VALUE = 2, 0.8612


class Dashboard:
    """A `search dashboard` process on a free port of this machine, its output in files."""

    def __init__(self, proc: subprocess.Popen, out: Path, err: Path) -> None:
        self.proc, self.out, self.err = proc, out, err
        self.url = self._wait_for_url()
        self.port = int(re.search(r":(\d+)/", self.url)[1])
        self.base = f"http://127.0.0.1:{self.port}"

    def _wait_for_url(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = re.search(r"^open (http://\S+)", self.out.read_text(), re.MULTILINE)
            if found:
                return found[1]
            time.sleep(0.1)
        raise AssertionError(f"no URL printed:\n{self.out.read_text()}{self.err.read_text()}")

    def get(self, path: str) -> bytes:
        """The body of GET `path`."""
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return response.read()

    def api(self, path: str) -> dict:
        """The JSON of GET `path`."""
        return json.loads(self.get(path))


@contextmanager
def serve(tmp_path: Path, *args: str, **env: str) -> Iterator[Dashboard]:
    """Run `search dashboard --port 0 ARGS` until the block ends; Ctrl-C must stop it cleanly."""
    out, err = tmp_path / "dashboard.out", tmp_path / "dashboard.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            search_cmd("dashboard", "--port", "0", *args),
            cwd=tmp_path,
            env=cli_env(**env),
            stdout=stdout,
            stderr=stderr,
        )
    try:
        yield Dashboard(proc, out, err)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 0, err.read_text()
    assert not re.search(f"Traceback|{STORAGE_ERRORS.pattern}", err.read_text()), err.read_text()


def new_study(url: str, tmp_path: Path, **keys) -> tuple[Path, optuna.Study]:
    """A study file (`study_toml(**keys)`) and its study, created as `search create` does."""
    path = tmp_path / "study.toml"
    path.write_text(study_toml(**keys))
    storage = open_storage(url, heartbeat_interval=1, grace_period=4)
    study, _ = create_study(load_config(path), storage, {})
    return path, study


def finished_study(url: str, tmp_path: Path) -> optuna.Study:
    """A study created as `search` creates it, whose trials record like real ones, instantly."""
    _, study = new_study(
        url, tmp_path, name="fashion-dense", n_trials=len(CURVES), max_epochs=MAX_EPOCHS
    )
    study.enqueue_trial({"n_layers": 2}, user_attrs=queued_attrs(BASELINE, baseline="model_0"))

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_int("n_layers", 1, 4)
        curve = CURVES[trial.number]
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, step=epoch)
        trial.set_user_attr("history", {"val_accuracy": curve})
        trial.set_user_attr("epochs", len(curve))
        trial.set_user_attr("n_params", 101_770)
        if len(curve) < MAX_EPOCHS:
            raise optuna.TrialPruned()
        return max(curve)

    study.optimize(objective, n_trials=len(CURVES))
    return study


def listening_addresses(port: int) -> set[str]:
    """The addresses of this machine's listening TCP sockets on `port` (Linux /proc)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word of the address in host (little-endian) order.
                packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(str(ipaddress.ip_address(packed)))
    return found


def test_serves_an_sqlite_study_on_loopback_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'search.db'}"
    study = finished_study(url, tmp_path)
    with serve(tmp_path, str(tmp_path / "study.toml"), "--storage", url) as dashboard:
        # Rule: by default it listens on 127.0.0.1 and nowhere else (no 0.0.0.0, no IPv6).
        assert listening_addresses(dashboard.port) == {"127.0.0.1"}
        # Given a study file, it prints that study's page.
        assert dashboard.url.endswith(f"/dashboard/studies/{study._study_id}")
        html = dashboard.get(f"/dashboard/studies/{study._study_id}")
        assert b"<title>Optuna Dashboard</title>" in html
        detail = dashboard.api(f"/api/studies/{study._study_id}?after=0")
        assert len(detail["trials"]) == len(CURVES)
        assert detail["best_trials"][0]["values"] == [BEST_VALUE]
    # Rule: no warning on loopback.
    assert "warning" not in dashboard.err.read_text()


def test_other_addresses_warn_and_point_to_the_proxy_section(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'search.db'}"
    with serve(tmp_path, "--storage", url, "--host", "0.0.0.0") as dashboard:
        assert listening_addresses(dashboard.port) == {"0.0.0.0"}
        # The URL to open is this machine's loopback, not the unspecified address.
        assert dashboard.url == f"http://127.0.0.1:{dashboard.port}/dashboard"
        warning = dashboard.err.read_text()
        # An empty storage (a mistyped SQLite path, say) is pointed out.
        assert "no studies in this storage yet" in dashboard.out.read_text()
    assert "no authentication" in warning and PROXY_SECTION in warning
    # The section the warning names exists.
    heading = re.escape(PROXY_SECTION.split('"')[1])
    assert re.search(rf"^#+ {heading}$", (REPO / "README.md").read_text(), re.MULTILINE)


def test_a_busy_port_is_a_user_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'search.db'}"
    with serve(tmp_path, "--storage", url) as dashboard:
        result = run_search(
            "dashboard", "--storage", url, "--port", str(dashboard.port), cwd=tmp_path
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{dashboard.port}" in result.stderr


def test_serves_a_postgresql_study(tmp_path: Path) -> None:
    with PostgresServer() as pg:
        study = finished_study(pg.url, tmp_path)
        # The URL comes from the environment, like compose's dashboard service gets it.
        with serve(tmp_path, SEARCH_STORAGE=pg.url) as dashboard:
            assert listening_addresses(dashboard.port) == {"127.0.0.1"}
            names = [s["study_name"] for s in dashboard.api("/api/studies")["study_summaries"]]
            assert names == ["fashion-dense"]
            detail = dashboard.api(f"/api/studies/{study._study_id}?after=0")
            assert len(detail["trials"]) == len(CURVES)
            assert b"<title>Optuna Dashboard</title>" in dashboard.get("/dashboard")
        # The printed storage hides the password.
        printed = dashboard.out.read_text()
        assert f"@127.0.0.1:{pg.port}/search" in printed and pg.password not in printed


@pytest.fixture
def page(browser):
    """A fresh browser tab the size of a laptop screen."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def test_browser_shows_a_finished_study(tmp_path: Path, page) -> None:
    from playwright.sync_api import expect

    url = f"sqlite:///{tmp_path / 'search.db'}"
    study = finished_study(url, tmp_path)
    with serve(tmp_path, "--storage", url) as dashboard:
        page.goto(dashboard.url)
        expect(page.get_by_text("fashion-dense", exact=False).first).to_be_visible()
        page.screenshot(path=SCREENSHOTS / "studies.png")

        page.goto(f"{dashboard.base}/dashboard/studies/{study._study_id}")
        # The best trial and its value, and the study's definition in its attributes.
        expect(page.get_by_text(f"Best Trial (number={BEST_NUMBER})")).to_be_visible()
        expect(page.get_by_text(str(BEST_VALUE), exact=True)).to_be_visible()
        expect(page.get_by_text("Study User Attributes")).to_be_visible()
        expect(page.get_by_role("cell", name="MedianPruner", exact=False)).to_be_visible()
        page.screenshot(path=SCREENSHOTS / "study.png", full_page=True)
        # The rest of the definition (split, max epochs) is on the table's next page.
        page.get_by_label("next page").click()
        expect(page.get_by_role("cell", name='"validation_split": 0.2')).to_be_visible()
        expect(page.get_by_role("cell", name='"max_epochs": 3')).to_be_visible()
        page.get_by_text("Study User Attributes").scroll_into_view_if_needed()
        page.screenshot(path=SCREENSHOTS / "study-definition.png")

        page.goto(f"{dashboard.base}/dashboard/studies/{study._study_id}/trials")
        # The number of trials, the pruned one among them, and trial 0's baseline name.
        expect(page.get_by_text(f"{len(CURVES)} Trials", exact=True)).to_be_visible()
        expect(page.get_by_text("Pruned", exact=True)).to_be_visible()
        expect(page.get_by_text("baseline model_0")).to_be_visible()
        page.screenshot(path=SCREENSHOTS / "trials.png", full_page=True)


@pytest.mark.slow
def test_browser_watches_a_real_run_whose_workers_never_lock(tmp_path: Path, page) -> None:
    from playwright.sync_api import expect

    url = f"sqlite:///{tmp_path / 'search.db'}"
    n_trials = 4
    # A grace period far above the heartbeat interval: on a busy machine (parallel tests) a new
    # worker's first heartbeat can come late, and its trial be reaped; this test is about locks.
    path, study = new_study(
        url,
        tmp_path,
        n_trials=n_trials,
        max_epochs=3,
        train_subset=1000,
        validation_subset=500,
    )
    with serve(tmp_path, str(path), "--storage", url) as dashboard:
        stop = threading.Event()
        polls = []

        def poll() -> None:
            # Beside the page's own polling: a reader of the SQLite file, 5 times a second.
            while not stop.is_set():
                polls.append(
                    len(dashboard.api(f"/api/studies/{study._study_id}?after=0")["trials"])
                )
                time.sleep(0.2)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        page.goto(f"{dashboard.url}/trials")
        counter = page.get_by_text(re.compile(r"^\d+ Trials$"))
        expect(counter).to_have_text("0 Trials")
        # A reload would wipe this; it must survive until the end.
        page.evaluate("window.loadedOnce = true")
        run = start_search(
            "run", path, "--workers", "2", "--storage", url, "--grace-period", "30", cwd=tmp_path
        )
        try:
            expect(counter).not_to_have_text("0 Trials", timeout=120_000)
            page.screenshot(path=SCREENSHOTS / "live-first-trials.png", full_page=True)
            output, _ = run.communicate(timeout=300)
        finally:
            run.kill()
        trials = study.get_trials()
        # Every trial of the run appears on the page, which was never reloaded.
        expect(counter).to_have_text(f"{len(trials)} Trials", timeout=30_000)
        assert page.evaluate("window.loadedOnce") is True
        page.screenshot(path=SCREENSHOTS / "live-all-trials.png", full_page=True)
        stop.set()
        poller.join()
        page.goto(dashboard.url)
        expect(page.get_by_text("Best Trial")).to_be_visible()
        # The best trials' kept models, attached when the run ended, as the study's artifacts.
        kept = kept_numbers(FolderStore(tmp_path / "runs"), "t")
        assert kept
        expect(page.get_by_text("Study Artifacts")).to_be_visible()
        for number in kept:
            expect(page.get_by_text(f"trial-{number}-model.keras")).to_be_visible()
        page.screenshot(path=SCREENSHOTS / "live-study.png", full_page=True)
    assert run.returncode == 0, output
    # The API answered throughout, up to the last trial.
    assert polls[-1] == len(trials)
    # Rule: no worker hit a storage error while the dashboard read the same SQLite file.
    logs = sorted((tmp_path / "runs" / "t" / "logs").glob("worker-*.log"))
    assert len(logs) == 2
    for text in [output, *(log.read_text() for log in logs)]:
        assert not STORAGE_ERRORS.search(text), text
    # All trials finished; the only failures allowed lost the race for the last budget slots.
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == n_trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert all("budget was claimed" in TrialRecord.of(t).fail_reason for t in failed)
