"""Shared fixtures: the real Fashion-MNIST, study files on disk, the CLI in a subprocess or
in this process."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
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
# The storage's heartbeat settings in the tests' `search` processes (cli_env).
TEST_HEARTBEAT_INTERVAL, TEST_GRACE_PERIOD = 1, 4


@pytest.fixture(autouse=True)
def _environment_restored():
    """The environment as it was before each test: `search.cli.main`, called in-process,
    writes its storage flags into it (a --checkpoints s3://... left there once sent a later
    test's reaper to AWS)."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[], dict]):
    """`make()`, a JSON object, once per test run, shared by the pytest-xdist workers.

    The first worker that asks makes it, while the others wait for it; they all get the
    same object back. An error in making it fails the others at once rather than making
    them repeat the failing work. Without pytest-xdist it is simply `make()`.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make()
    root = tmp_path_factory.getbasetemp().parent
    done, failed = root / f"{name}.json", root / f"{name}.error"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return json.loads(done.read_text())
        if failed.exists():
            pytest.fail(f"{name} failed in another pytest-xdist worker:\n{failed.read_text()}")
        try:
            value = make()
        except BaseException as e:
            failed.write_text(f"{os.environ['PYTEST_XDIST_WORKER']}: {type(e).__name__}: {e}")
            raise
        done.write_text(json.dumps(value))
        return value


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
    # Fast heartbeats, so a killed worker's trial is retried within seconds.
    env["SEARCH_HEARTBEAT_INTERVAL"] = str(TEST_HEARTBEAT_INTERVAL)
    env["SEARCH_GRACE_PERIOD"] = str(TEST_GRACE_PERIOD)
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
    """Run the `search` CLI to completion in a new process and capture its output.

    For what only a process shows: its exit status, signals, workers, its own start-up.
    Elsewhere `search_here` runs the same command without a new TensorFlow start-up.
    """
    return subprocess.run(
        search_cmd(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


@dataclass(frozen=True)
class Ran:
    """What `search_here` gives back: the fields of `run_search`'s CompletedProcess."""

    returncode: int
    stdout: str
    stderr: str


def search_here(*args: str, cwd: Path) -> Ran:
    """Run the `search` CLI to completion in this process, as `run_search` runs it in another.

    `search.cli.main(ARGS)` in `cwd`, with `cli_env()`'s environment, its stdout and stderr
    (Optuna's log lines included) captured; argparse's exits (--help, usage errors) give
    their status. The environment, the working directory and Optuna's log level are put
    back afterwards. `run` starts its workers as processes, as ever; not for commands that
    train in their own process (retrain, worker, export --reevaluate: they set TensorFlow's
    threads, which only a process where TensorFlow has not started yet may), nor where the
    process is what is tested (its signals, its exit when killed).
    """
    import optuna

    from search.cli import main

    out, err = io.StringIO(), io.StringIO()
    # Optuna's own handler holds the stderr of the time it was made: send its lines here.
    handler = logging.StreamHandler(err)
    handler.setFormatter(optuna.logging.create_default_formatter())
    saved_env, saved_verbosity = dict(os.environ), optuna.logging.get_verbosity()
    os.environ.clear()
    os.environ.update(cli_env())
    optuna.logging.disable_default_handler()
    logging.getLogger("optuna").addHandler(handler)
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out):
            with contextlib.redirect_stderr(err):
                try:
                    code = main([str(a) for a in args])
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        logging.getLogger("optuna").removeHandler(handler)
        optuna.logging.enable_default_handler()
        optuna.logging.set_verbosity(saved_verbosity)
        os.environ.clear()
        os.environ.update(saved_env)
    return Ran(code, out.getvalue(), err.getvalue())


@dataclass(frozen=True)
class FinishedStudy:
    """A study run to its budget; `cwd` is where the CLI ran (its runs/ directory is there)."""

    cwd: Path
    storage: str
    name: str = "t"
    output: str = ""  # what `search run` printed


# The data of `study_run`: small, as its tests check the commands, not the models.
STUDY_RUN_TRAIN, STUDY_RUN_VALIDATION = 1000, 500


@pytest.fixture(scope="session")
def study_run(tmp_path_factory) -> FinishedStudy:
    """A small dense study run to its budget by 2 workers, with complete and pruned trials.

    Run once per test run, also under pytest-xdist: its tests only read it.
    """

    def make() -> dict:
        cwd = tmp_path_factory.mktemp("finished")
        study = cwd / "study.toml"
        # The median pruner never prunes before 5 trials are COMPLETE, so the tests that
        # export, queue or re-evaluate the best 2 always have them (under successive halving
        # the prior's centre sometimes outran every other trial: 1 COMPLETE of 12). Of the 7
        # after, each trial below the median at any epoch is pruned: 5 were in a run here.
        text = study_toml(
            n_trials=12,
            max_epochs=3,
            pruner="median",
            train_subset=STUDY_RUN_TRAIN,
            validation_subset=STUDY_RUN_VALIDATION,
        )
        study.write_text(text)
        storage = f"sqlite:///{cwd / 'search.db'}"
        # The workers are processes; `run` itself runs in this one.
        result = search_here("run", study, "--workers", "2", "--storage", storage, cwd=cwd)
        assert result.returncode == 0, result.stdout + result.stderr
        return {"cwd": str(cwd), "storage": storage, "output": result.stdout}

    made = once_per_run(tmp_path_factory, "study_run", make)
    return FinishedStudy(Path(made["cwd"]), made["storage"], output=made["output"])


@dataclass(frozen=True)
class Retrained:
    """An export of a finished study, and the retrain of its best trial."""

    export: Path
    out_dir: Path
    output: str


@pytest.fixture(scope="session")
def retrained_best(study_run, tmp_path_factory) -> Retrained:
    """`search export --top 2`, then `search retrain` of the best at its best epoch and seed.

    Done once per test run, also under pytest-xdist: its tests only read what it wrote.
    """
    s = study_run

    def make() -> dict:
        result = search_here("export", s.name, "--top", "2", "--storage", s.storage, cwd=s.cwd)
        assert result.returncode == 0, result.stdout + result.stderr
        export = s.cwd / "runs" / s.name / "best.json"
        best = json.loads(export.read_text())["trials"][0]
        result = run_search(
            "retrain", export, "--epochs", best["best_epoch"], "--seed", best["seed"], cwd=s.cwd
        )
        assert result.returncode == 0, result.stdout + result.stderr
        out_dir = export.parent / f"trial-{best['number']}"
        return {"export": str(export), "out_dir": str(out_dir), "output": result.stdout}

    made = once_per_run(tmp_path_factory, "retrained_best", make)
    return Retrained(Path(made["export"]), Path(made["out_dir"]), made["output"])


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
