"""What the benchmark parts share: study files, timed `search run`s, trial records, the machine."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from search.record import TrialRecord

REPO = Path(__file__).resolve().parent.parent
# The distributions whose versions a result depends on (tensorflow or tensorflow-cpu).
PACKAGES = (
    "search",
    "optuna",
    "keras",
    "tensorflow",
    "tensorflow-cpu",
    "keras-tuner",
    "tensorboard",
    "sqlalchemy",
    "psycopg",
    "numpy",
    "matplotlib",
)
LOADED = re.compile(r"loaded in ([0-9.]+)s")
# A study budget never reached: the wall clock ends these runs.
UNBOUNDED_TRIALS = 1_000_000


def write_study(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a study definition as a TOML file of flat tables; None values are left out."""
    lines = []
    for section, table in sections.items():
        if not table:
            continue
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml(value)}" for key, value in table.items() if value is not None]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _toml(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    # A JSON string is a TOML basic string for the names and paths written here.
    return json.dumps(value)


def bench_env() -> dict[str, str]:
    """The environment of benchmark subprocesses: the repository importable, TF quiet."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_search(
    study_file: Path,
    *,
    storage: str,
    workers: int,
    threads: int,
    cwd: Path,
    budget_seconds: float | None = None,
    on_tick: Callable[[float], None] | None = None,
    tick_seconds: float = 60,
) -> dt.datetime:
    """Run `search run` on a study, stopped by SIGTERM once `budget_seconds` have passed.

    Args:
        on_tick: called with the seconds since launch every `tick_seconds` while it runs
            (progress lines); its errors are the caller's to catch.

    Returns the wall-clock time of the launch, on the clock Optuna stamps trials with.
    Stopped workers fail their running trials ("Interrupted") and queue them again;
    every epoch that ended in time counts toward the run's result. Interrupted here
    (Ctrl-C), it stops the run before raising.
    """
    cmd = [sys.executable, "-m", "search", "run", str(study_file), "--storage", storage]
    cmd += ["--workers", str(workers), "--threads", str(threads)]
    log = cwd / f"{study_file.stem}.log"
    started = dt.datetime.now()
    launched = time.monotonic()
    end = None if budget_seconds is None else launched + budget_seconds
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=bench_env(), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if end is not None and now >= end:
                    # The supervisor stops its workers at their next batch (60 s at most).
                    # SIGTERM, not SIGINT: a process started in the background by a shell
                    # ignores SIGINT.
                    proc.send_signal(signal.SIGTERM)
                    proc.wait()
                    break
                wait = tick_seconds if on_tick else math.inf
                if end is not None:
                    wait = min(wait, end - now)
                try:
                    proc.wait(timeout=None if math.isinf(wait) else wait)
                except subprocess.TimeoutExpired:
                    if on_tick and (end is None or time.monotonic() < end):
                        on_tick(time.monotonic() - launched)
        except BaseException:
            # Never leave a search running behind a stopped benchmark.
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            raise
    if proc.returncode not in (0, 128 + signal.SIGTERM):
        raise RuntimeError(f"search run {study_file} exited with {proc.returncode}; see {log}")
    return started


def study_trials(study_name: str, storage: str) -> list[optuna.trial.FrozenTrial]:
    """A study's trials, in the order of their numbers."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def completed_epochs(trial: optuna.trial.FrozenTrial) -> int:
    """Epochs a trial trained in full (a stopped trial stops between batches and records
    no part of the epoch it was in)."""
    return TrialRecord.of(trial).epochs_done


def best_epoch_value(trial: optuna.trial.FrozenTrial, metric: str = "val_accuracy") -> float:
    """The best value of a metric over a trial's epochs (NaN if it has none)."""
    values = [v for v in TrialRecord.of(trial).history.get(metric, []) if math.isfinite(v)]
    return max(values, default=math.nan)


def worker_load_seconds(cwd: Path, study_name: str) -> list[float]:
    """Seconds each worker of a study took to load its data, read from the worker logs."""
    logs = sorted((cwd / "runs" / study_name / "logs").glob("worker-*.log"))
    seconds = [float(m) for log in logs for m in LOADED.findall(log.read_text())]
    if not seconds:
        raise RuntimeError(f"no 'loaded in Ns' line in the worker logs {logs}")
    return seconds


def load_average() -> list[float]:
    """The machine's 1-, 5- and 15-minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


class ForeignCpu:
    """CPU seconds the machine spent outside this process and its children during a run.

    The machine's busy time (/proc/stat) minus this process tree's own CPU time (itself and
    every child it waited for, which includes the workers a `search run` waited for). What
    is left is what other programs took: a test suite or a build beside a benchmark shows
    here even when the load average at the run's start was low.
    """

    def __enter__(self) -> ForeignCpu:
        self._start = (_machine_busy_seconds(), _own_cpu_seconds(), time.monotonic())
        return self

    def __exit__(self, *exc: object) -> None:
        busy, own, start = self._start
        wall = time.monotonic() - start
        foreign = (_machine_busy_seconds() - busy) - (_own_cpu_seconds() - own)
        self.seconds = round(max(0.0, foreign), 1)
        capacity = wall * (os.cpu_count() or 1)
        # The share of the machine's capacity over the run that went to other programs.
        self.share = round(self.seconds / capacity, 4) if capacity > 0 else 0.0


def _machine_busy_seconds() -> float:
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    return own


def wait_for_quiet(
    limit_seconds: float, *, threshold: float, log: Callable[[str], None] = print
) -> float:
    """Wait until the 1-minute load average is at most `threshold`, or `limit_seconds` pass.

    The previous run's own load takes a minute or two to leave the average (it decays
    with a one-minute time constant), so a run started at once would look disturbed.
    Returns the seconds waited.
    """
    start = time.monotonic()
    if os.getloadavg()[0] <= threshold or limit_seconds <= 0:
        return 0.0
    log(f"  waiting up to {limit_seconds:.0f} s for the load average to fall below {threshold}")
    while os.getloadavg()[0] > threshold and time.monotonic() - start < limit_seconds:
        time.sleep(min(5.0, max(0.0, limit_seconds - (time.monotonic() - start))))
    return round(time.monotonic() - start, 1)


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON to `path` through a temporary file, so no reader sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as f:
        f.write(json.dumps(data, indent=2) + "\n")
    os.replace(f.name, path)
    return path


def describe_machine() -> dict[str, Any]:
    """CPU model, cores, RAM, OS and Python of this machine."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "?")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def package_versions() -> dict[str, str]:
    """Versions of the installed packages a result depends on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str:
    """The repository's commit, with '+changes' when the work tree differs from it."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode != 0
    return head + ("+changes" if dirty else "")
