"""The LCBench benchmark: every contestant, prior, task and seed, simulated; records as they end.

A run's budget is simulated wall-clock time on `n_workers` workers: B full trials' worth is
the time the workers take to train B full trials (52 epochs) of the task's median cost
(`full_trial_seconds`, the median of a random sample), so B x that / n_workers. Every run
goes on to the largest budget; the smaller ones are points on its way (no contestant plans
with its total budget).

Files, from the prefix `out` (default benchmarks/results/lcbench):
- `out.reference.json`: per task, the random sample's best and worst 52-epoch validation
  accuracy (regret is normalized by them), its median full-trial seconds, its best and
  worst configs, and the good and misleading priors' centres (near those two configs).
- `out.runs.jsonl.gz`: one record per (contestant, prior, task, seed), appended as each run
  ends; a rerun skips the runs recorded there.
The report (`benchmarks.lcbench.report`) reads both.
"""

from __future__ import annotations

import gzip
import json
import math
import multiprocessing
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.lcbench.surrogate import (
    MAX_EPOCHS,
    Surrogate,
    hyperparameters,
    sample_configs,
    tasks,
)

ROOT = Path(__file__).parents[2]
PRIORS = ("none", "good", "misleading")
# The prior of a contestant that reads none: its runs serve every prior.
ANY_PRIOR = "any"
BUDGETS = (1, 10, 30, 100)
DEHB_PYTHON = ROOT / ".venv-dehb" / "bin" / "python"
# How far the good and misleading priors' centres lie from the sample's best and worst
# configs: a normal of this standard deviation in units of each range (of its logarithm
# where the range is logarithmic).
NEAR_STD = 0.1


@dataclass(frozen=True)
class Settings:
    """What to run. Records made with other `n_workers`, budgets or reference are refused."""

    out: Path = ROOT / "benchmarks" / "results" / "lcbench"
    tasks: tuple[str, ...] = tasks()
    n_seeds: int = 10
    contestants: tuple[str, ...] = (
        "service",
        "tpe-hyperband",
        "tpe-sh",
        "random-sh",
        "random",
        "dehb",
    )
    priors: tuple[str, ...] = PRIORS
    budgets: tuple[int, ...] = BUDGETS
    n_workers: int = 4
    # Configs per task in the random sample that normalizes regret and places the priors.
    n_reference: int = 10_000
    # Processes that run simulations at once (1: this process).
    n_jobs: int = 2
    dehb_python: Path = DEHB_PYTHON


@dataclass(frozen=True)
class Job:
    contestant: str
    prior: str
    task: str
    seed: int

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.contestant, self.prior, self.task, self.seed)


def run_benchmark(settings: Settings, *, log: Callable[[str], None] = print) -> Path:
    """Run what is not recorded yet; returns the runs file.

    Raises:
        ValueError: an unknown contestant, prior or task; records made with other settings;
            DEHB asked for without its environment.
    """
    from benchmarks.lcbench.contestants import CONTESTANTS, USES_PRIOR, service_config

    _check(settings, CONTESTANTS)
    reference = load_reference(settings, log=log)
    runs_path = records_path(settings)
    recorded = read_runs(runs_path, settings)
    done = {_key(r) for r in recorded}
    jobs = [
        Job(contestant, prior if contestant in USES_PRIOR else ANY_PRIOR, task, seed)
        for seed in range(settings.n_seeds)
        for task in settings.tasks
        for contestant in settings.contestants
        for prior in (settings.priors if contestant in USES_PRIOR else (ANY_PRIOR,))
    ]
    todo = _longest_first([job for job in jobs if job.key not in done], recorded)
    log(f"{len(jobs)} runs, {len(jobs) - len(todo)} recorded in {runs_path}, {len(todo)} to run")
    if not todo:
        return runs_path
    context = {
        "settings": settings,
        "reference": reference,
        "min_epochs": service_config(seed=0, prior=None).trials.min_epochs,
    }
    start = time.monotonic()
    runs_path.parent.mkdir(parents=True, exist_ok=True)
    # gzip appends a member per run of the benchmark; reading joins them.
    with gzip.open(runs_path, "at") as out:
        for i, record in enumerate(_results(todo, context, settings.n_jobs), start=1):
            out.write(json.dumps(record) + "\n")
            out.flush()
            elapsed = time.monotonic() - start
            log(
                f"[{i}/{len(todo)}] {record['contestant']} prior={record['prior']}"
                f" task {record['task']} seed {record['seed']}: {record['n_trials']} trials,"
                f" {record['wall_seconds']:.1f} s; {elapsed / 60:.1f} min in,"
                f" about {elapsed / i * (len(todo) - i) / 60:.1f} min to go"
            )
    return runs_path


def load_reference(settings: Settings, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Each task's reference (computed for the tasks not in `out.reference.json` yet)."""
    path = settings.out.with_suffix(".reference.json")
    reference = json.loads(path.read_text()) if path.exists() else {"tasks": {}}
    if reference.get("n_reference", settings.n_reference) != settings.n_reference:
        raise ValueError(
            f"{path} was made from {reference['n_reference']} configs per task, but"
            f" n_reference is {settings.n_reference}: use another --out"
        )
    missing = [t for t in settings.tasks if t not in reference["tasks"]]
    if missing:
        log(f"sampling {settings.n_reference} configs per task on {len(missing)} tasks")
        surrogate = Surrogate()
        for task in missing:
            reference["tasks"][task] = _task_reference(surrogate, task, settings.n_reference)
        reference["n_reference"] = settings.n_reference
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(reference, indent=1) + "\n")
    return reference


def _task_reference(surrogate: Surrogate, task: str, n: int) -> dict[str, Any]:
    # Seeded by the task alone: the same sample whatever else is run.
    rng = np.random.default_rng([0, int(task)])
    configs = sample_configs(rng, n)
    accuracy, seconds = surrogate.final(task, configs)
    best, worst = configs[int(accuracy.argmax())], configs[int(accuracy.argmin())]
    good, misleading = _near(best, rng), _near(worst, rng)
    good_value, misleading_value = surrogate.final(task, [good, misleading])[0]
    return {
        "best": float(accuracy.max()),
        "worst": float(accuracy.min()),
        "full_trial_seconds": float(np.median(seconds)),
        "best_config": best,
        "worst_config": worst,
        "good": good,
        "misleading": misleading,
        # What the priors' centres themselves reach after 52 epochs.
        "good_value": float(good_value),
        "misleading_value": float(misleading_value),
    }


def _near(config: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """`config` with every number moved by a normal of NEAR_STD of its (log) range.

    A prior centred near a config, not on it: the service runs its prior's centre first, and
    a centre exactly on the sample's best would hand it that config.
    """
    near = {}
    for name, h in hyperparameters().items():
        scale = np.log if h["log"] else (lambda x: x)
        low, high = scale(h["lower"]), scale(h["upper"])
        u = (scale(config[name]) - low) / (high - low) + rng.normal(0.0, NEAR_STD)
        # Reflected at the range's ends, so that a centre at an end is not piled onto it.
        u = float(np.clip(abs(u) if u < 0 else (2.0 - u if u > 1 else u), 0.0, 1.0))
        value = low + u * (high - low)
        value = float(np.exp(value)) if h["log"] else value
        if h["type"] == "uniform_int":
            value = int(np.clip(round(value), h["lower"], h["upper"]))
        else:
            value = float(np.clip(value, h["lower"], h["upper"]))
        near[name] = value
    return near


def records_path(settings: Settings) -> Path:
    """Where the runs' records go: gzipped JSON lines (thousands of curves, 6 MB as text)."""
    return settings.out.with_suffix(".runs.jsonl.gz")


def read_runs(path: Path, settings: Settings) -> list[dict[str, Any]]:
    """The records in `path` (none if it is missing).

    Raises:
        ValueError: a record made with other workers or a shorter budget than `settings`'.
    """
    if not path.exists():
        return []
    with gzip.open(path, "rt") as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    for r in records:
        if r["n_workers"] != settings.n_workers or r["budget"] < max(settings.budgets):
            raise ValueError(
                f"{path} holds runs of {r['n_workers']} workers to {r['budget']} full trials,"
                f" but these settings ask for {settings.n_workers} workers to"
                f" {max(settings.budgets)}: use another --out"
            )
    return records


def _key(record: dict[str, Any]) -> tuple[str, str, str, int]:
    return (record["contestant"], record["prior"], record["task"], record["seed"])


def _check(settings: Settings, contestants: dict[str, str]) -> None:
    for name in settings.contestants:
        if name not in contestants:
            raise ValueError(
                f"contestant is {name!r}, but must be one of {', '.join(contestants)}"
            )
    for prior in settings.priors:
        if prior not in PRIORS:
            raise ValueError(f"prior is {prior!r}, but must be one of {', '.join(PRIORS)}")
    known = tasks()
    for task in settings.tasks:
        if task not in known:
            raise ValueError(f"task is {task!r}, but must be one of {', '.join(known)}")
    if "dehb" in settings.contestants and not settings.dehb_python.exists():
        raise ValueError(
            f"contestant dehb needs its own environment, {settings.dehb_python}, which does not"
            " exist: make it with `make lcbench-deps`, or leave dehb out"
        )


def _longest_first(jobs: list[Job], recorded: list[dict[str, Any]]) -> list[Job]:
    """`jobs` seed by seed, within a seed those expected to take longest first.

    Seed by seed, so that a run stopped early leaves whole seeds; longest first, so that
    the last seed's short runs fill the processes at the end. A run's expected time is the
    mean of the recorded runs of its contestant, prior and task (any seed); runs with none
    recorded go first. TPE's cost grows with the square of the
    trials, so one task (167185, 5-10 times the others' trials) holds most of the work.
    """
    seconds: dict[tuple[str, str, str], list[float]] = {}
    for r in recorded:
        seconds.setdefault((r["contestant"], r["prior"], r["task"]), []).append(r["wall_seconds"])

    def expected(job: Job) -> float:
        times = seconds.get((job.contestant, job.prior, job.task))
        return sum(times) / len(times) if times else math.inf

    return sorted(jobs, key=lambda job: (job.seed, -expected(job)))


def _results(jobs: list[Job], context: dict[str, Any], n_jobs: int) -> Iterator[dict[str, Any]]:
    if n_jobs == 1:
        _start_process(context)
        yield from map(_run, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(
        n_jobs, initializer=_start_process, initargs=(context,)
    ) as pool:
        yield from pool.imap_unordered(_run, jobs)


# One process's state: the surrogate, the settings, and DEHB's environment when needed.
_PROCESS: dict[str, Any] = {}


def _start_process(context: dict[str, Any]) -> None:
    from benchmarks.lcbench import fastmath
    from benchmarks.lcbench.contestants import quiet

    quiet()
    # Optuna's TPE, the same numbers sooner (fastmath: most of a TPE run's time).
    fastmath.install()
    settings: Settings = context["settings"]
    _PROCESS.update(context, surrogate=Surrogate())
    if "dehb" in settings.contestants:
        _PROCESS["dehb"] = subprocess.Popen(
            [str(settings.dehb_python), "-m", "benchmarks.lcbench.dehb_run"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )


def _run(job: Job) -> dict[str, Any]:
    settings: Settings = _PROCESS["settings"]
    task = _PROCESS["reference"]["tasks"][job.task]
    seconds = max(settings.budgets) * task["full_trial_seconds"] / settings.n_workers
    start = time.monotonic()
    if job.contestant == "dehb":
        result = _run_dehb(job, seconds=seconds, n_workers=settings.n_workers)
    else:
        result = _run_optuna(job, task, seconds=seconds, n_workers=settings.n_workers)
    return {
        **asdict(job),
        "n_workers": settings.n_workers,
        "budget": max(settings.budgets),
        "seconds": seconds,
        **result,
        "best": [[round(t, 2), round(v, 4)] for t, v in result["best"]],
        "wall_seconds": round(time.monotonic() - start, 2),
    }


def _run_optuna(job: Job, task: dict[str, Any], *, seconds: float, n_workers: int) -> dict:
    from benchmarks.lcbench import space
    from benchmarks.lcbench.contestants import worker_studies
    from benchmarks.lcbench.simulate import Curve, simulate

    surrogate: Surrogate = _PROCESS["surrogate"]

    def curve(config: dict[str, Any]) -> Curve:
        curves = surrogate.curves(job.task, [config])
        return Curve(curves.val_accuracy[0], curves.epoch_seconds[0])

    prior = task[job.prior] if job.prior in ("good", "misleading") else None
    studies = worker_studies(job.contestant, seed=job.seed, prior=prior, n_workers=n_workers)
    run = simulate(studies, space.suggest, curve, max_epochs=MAX_EPOCHS, seconds=seconds)
    return asdict(run)


def _run_dehb(job: Job, *, seconds: float, n_workers: int) -> dict:
    process: subprocess.Popen = _PROCESS["dehb"]
    request = {
        "task": job.task,
        "seed": job.seed,
        "seconds": seconds,
        "n_workers": n_workers,
        "min_epochs": _PROCESS["min_epochs"],
    }
    process.stdin.write(json.dumps(request) + "\n")
    process.stdin.flush()
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"DEHB's process ({process.args}) ended; its errors are above")
    return json.loads(line)
