"""Shared fixtures: the real Fashion-MNIST, study files on disk, the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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
    dataset: str = "fashion_mnist",
    train_subset: int = 2000,
    validation_subset: int = 1000,
    n_trials: int = 8,
    max_epochs: int = 4,
    sampler: str = "tpe",
    pruner: str = "median",
    enqueue_baselines: bool = False,
    heartbeat_interval: int = 1,
    grace_period: int = 4,
) -> str:
    """The text of a small study definition; keyword arguments set its keys."""
    return textwrap.dedent(
        f"""\
        [study]
        name = "{name}"
        space = "{space}"
        seed = {seed}
        metric = "val_accuracy"

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
        enqueue_baselines = {str(enqueue_baselines).lower()}
        heartbeat_interval = {heartbeat_interval}
        grace_period = {grace_period}
        """
    )


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


def run_search(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the `search` CLI to completion and capture its output."""
    return subprocess.run(
        search_cmd(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )
