"""Shared fixtures: the real Fashion-MNIST, study files on disk, the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Tests stop servers and workers with SIGINT, as a user's Ctrl-C does. A shell that starts
# this suite as a background job without job control (`(make test &)`) starts it with
# SIGINT ignored, and every child would inherit that: give this process a handler instead,
# so that children start with the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def small_data():
    """A stratified 1,000/500 slice of the real Fashion-MNIST train/validation split."""
    from search.data import load_dataset

    return load_dataset("fashion_mnist", train_subset=1000, validation_subset=500)


def study_toml(
    *,
    name: str = "t",
    space: str = "dense",
    seed: int = 0,
    metric: str = "val_accuracy",
    dataset: str = "fashion_mnist",
    train_subset: int = 2000,
    validation_subset: int = 1000,
    n_trials: int = 8,
    max_epochs: int = 4,
    sampler: str = "tpe",
    pruner: str = "median",
    prior: bool = True,
    enqueue_baselines: bool = False,
    heartbeat_interval: int = 1,
    grace_period: int = 4,
    prior_table: dict | None = None,
) -> str:
    """The text of a small study definition; keyword arguments set its keys."""
    table = "".join(f"{key} = {json.dumps(value)}\n" for key, value in (prior_table or {}).items())
    return textwrap.dedent(
        f"""\
        [study]
        name = "{name}"
        space = "{space}"
        seed = {seed}
        metric = "{metric}"

        [data]
        dataset = "{dataset}"
        validation_split = 0.2
        split_seed = 0
        train_subset = {train_subset}
        validation_subset = {validation_subset}

        [trials]
        n_trials = {n_trials}
        max_epochs = {max_epochs}
        sampler = "{sampler}"
        pruner = "{pruner}"
        prior = {str(prior).lower()}
        enqueue_baselines = {str(enqueue_baselines).lower()}
        heartbeat_interval = {heartbeat_interval}
        grace_period = {grace_period}
        """
    ) + (f"\n[prior]\n{table}" if table else "")


@pytest.fixture
def write_study(tmp_path):
    """Write a study file into tmp_path: write_study(**keys) -> Path."""

    def write(filename: str = "study.toml", text: str | None = None, **keys) -> Path:
        path = tmp_path / filename
        path.write_text(text if text is not None else study_toml(**keys))
        return path

    return write


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for `python -m search` subprocesses: test spaces importable."""
    env = {k: v for k, v in os.environ.items() if k != "SEARCH_STORAGE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env | extra


def search_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "search", *map(str, args)]


def start_search(*args: str, cwd: Path, **popen: Any) -> subprocess.Popen:
    """Start the `search` CLI in the background, its output (text) on a pipe."""
    return subprocess.Popen(
        search_cmd(*args),
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def run_search(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the `search` CLI to completion and capture its output."""
    return subprocess.run(
        search_cmd(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


@dataclass(frozen=True)
class FinishedStudy:
    """A study run to its budget; `cwd` is where the CLI ran (its runs/ directory is there)."""

    cwd: Path
    storage: str
    name: str = "t"


@pytest.fixture(scope="session")
def study_run(tmp_path_factory) -> FinishedStudy:
    """A small dense study run to its budget by 2 workers, with complete and pruned trials."""
    cwd = tmp_path_factory.mktemp("finished")
    study = cwd / "study.toml"
    # Successive halving keeps only the top third at each epoch: most trials are pruned.
    study.write_text(study_toml(n_trials=8, max_epochs=3, pruner="successive_halving"))
    storage = f"sqlite:///{cwd / 'search.db'}"
    result = run_search("run", study, "--workers", "2", "--storage", storage, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return FinishedStudy(cwd, storage)


@dataclass(frozen=True)
class Retrained:
    """An export of a finished study, and the retrain of its best trial."""

    export: Path
    out_dir: Path
    output: str


@pytest.fixture(scope="session")
def retrained_best(study_run) -> Retrained:
    """`search export --top 2`, then `search retrain` of the best at its best epoch and seed."""
    s = study_run
    result = run_search("export", s.name, "--top", "2", "--storage", s.storage, cwd=s.cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    export = s.cwd / "runs" / s.name / "best.json"
    best = json.loads(export.read_text())["trials"][0]
    result = run_search(
        "retrain", export, "--epochs", best["best_epoch"], "--seed", best["seed"], cwd=s.cwd
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return Retrained(export, export.parent / f"trial-{best['number']}", result.stdout)


CHROMIUM = Path("/usr/bin/chromium")
# Flags for a headless Chromium that never phones home or updates itself during a test.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium, driven by Playwright; never a downloaded browser."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium (make test-deps)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
