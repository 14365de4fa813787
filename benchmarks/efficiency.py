"""Part 1, search efficiency: how soon each contestant finds a good model, seed by seed.

The contestants search the base study (studies/conv.toml) for the same wall-clock budget
on the same machine, one run at a time, interleaved by seed (seed 0 search, seed 0 centre,
..., seed 1 search, ...) so that a benchmark stopped part-way still holds paired results.
Each is named for what it runs (`CONTESTANTS`):

- `search`, this service: the study as written (its sampler, pruner and prior);
- `centre`: the prior's centre alone, trained once: what a user gets without a search;
- `notebook`: the notebook's models (the space's `BASELINES`), in its order, no pruning;
- `tpe`: TPE with successive halving, no prior;
- `random`: random sampling, no pruning, no prior;
- `kerastuner` (optional): KerasTuner's Hyperband over the same space, one process.

The Optuna contestants run `search run` without the notebook's baselines (but `notebook`,
which runs nothing else); the study's seed is the run's seed. A search runs one
single-threaded worker per core; what trains one model at a time (`centre`, `notebook`)
runs one worker on all cores, as a training script would. The clock starts when `search
run` is launched, so starting up and loading data count. A value counts from the end of
the epoch that reached it (what a user watching the dashboard sees), in every trial that
started before the deadline, whatever its state: completed, pruned, or interrupted when
the time was up. KerasTuner logs trials, not epochs: its values count from the end of
their trial.

Each (contestant, seed) run is written to its own JSON record as soon as it finishes; a
rerun skips the records that exist with the same settings, and the report is rebuilt from
all records on disk.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from benchmarks.harness import (
    UNBOUNDED_TRIALS,
    ForeignCpu,
    bench_env,
    describe_machine,
    git_commit,
    load_average,
    run_search,
    study_trials,
    wait_for_quiet,
    worker_load_seconds,
    write_json_atomic,
    write_study,
)
from search.config import StudyConfig, from_dict, with_legacy_defaults
from search.prior import resolve_prior
from search.record import TrialRecord
from spaces import load_space


@dataclass(frozen=True)
class Contestant:
    """What a contestant runs.

    Args:
        description: what it is, in the report's words.
        trials: how its study's [trials] differ from the base study's (None: not an Optuna
            study). A study with `prior = false` drops the base study's [prior] centres.
        one_process: one worker on all cores (what trains one model at a time, as a
            script would); otherwise one single-threaded worker per core.
        baselines_only: its trials are the space's `BASELINES`, queued in their order, and
            nothing else.
    """

    description: str
    trials: dict[str, Any] | None
    one_process: bool = False
    baselines_only: bool = False


# The notebook trained model_b, c and d for 30 epochs (model_a for 20; a study has one
# epoch count, so here model_a trains up to 30 too).
NOTEBOOK_EPOCHS = 30
CONTESTANTS = {
    "search": Contestant("this service: the study's sampler, pruner and prior", trials={}),
    "centre": Contestant(
        "the prior's centre alone, trained once: what a user gets without a search",
        trials={"n_trials": 1, "pruner": "none", "prior": True},
        one_process=True,
    ),
    "notebook": Contestant(
        "the notebook's models, one after another in its order, as it trained them",
        trials={
            "sampler": "random",
            "pruner": "none",
            "prior": False,
            "enqueue_baselines": True,
            "max_epochs": NOTEBOOK_EPOCHS,
        },
        one_process=True,
        baselines_only=True,
    ),
    "tpe": Contestant(
        "Optuna's TPE with successive halving, no prior",
        trials={"sampler": "tpe", "pruner": "successive_halving", "prior": False},
    ),
    "random": Contestant(
        "random search: random sampling, no pruning, no prior",
        trials={"sampler": "random", "pruner": "none", "prior": False},
    ),
    "kerastuner": Contestant(
        "KerasTuner's Hyperband over the same space", trials=None, one_process=True
    ),
}
DEFAULT_CONTESTANTS = ("search", "centre", "notebook", "tpe", "random")
# The report's headline: the service's lift over this contestant.
REFERENCE = "centre"
METRIC = "val_accuracy"
# A run shared the machine when its 1-minute load average at its start was above this, or
# other programs took more than FOREIGN_CPU_SHARE of the machine's CPU time during it.
DISTURBED_LOAD = 0.5
FOREIGN_CPU_SHARE = 0.05
# Records live in <out>/efficiency/<dataset>/<contestant>-seed<N>.json.
RECORDS_DIR = "efficiency"
SUPERSEDED_DIR = "superseded"


@dataclass(frozen=True)
class Scale:
    """What a dataset's table shows and which comparisons it makes.

    Args:
        title: the dataset's name in the report.
        checkpoints: minutes at which the best value so far is shown (the budget is added).
        thresholds: values whose time to reach is shown.
        ratio_threshold: compare the median time to this value, search / each other.
        reach: (value, minutes): count the seeds that reached the value within the minutes.
        best_margin: asked of search minus random, the median best at the budget: >= this.
    """

    title: str
    checkpoints: tuple[float, ...] = ()
    thresholds: tuple[float, ...] = ()
    ratio_threshold: float | None = None
    reach: tuple[float, float] | None = None
    best_margin: float | None = None


SCALES = {
    "fashion_mnist": Scale(
        title="Fashion-MNIST",
        checkpoints=(5, 10, 20),
        thresholds=(0.915, 0.92, 0.925),
        ratio_threshold=0.92,
        reach=(0.925, 12),
    ),
    "digits": Scale(
        title="scikit-learn's 8x8 digits",
        checkpoints=(1, 2),
        thresholds=(0.97, 0.98, 0.99),
        ratio_threshold=0.98,
        best_margin=-0.005,
    ),
}


def scale_for(dataset: str) -> Scale:
    """The table settings of a dataset's records; a dataset not listed gets none."""
    return SCALES.get(dataset, Scale(title=dataset))


# --- the rules: which values count, and when ---------------------------------------------


def epoch_points(
    trials: Iterable[FrozenTrial],
    *,
    launched: float,
    budget_seconds: float,
    metric: str = METRIC,
) -> dict[str, Any]:
    """The values a run reached in time, each at the end of the epoch that reached it.

    Args:
        trials: the run's trials, in any state; each carries user attrs `history` (a list
            per metric, one value per epoch) and `epoch_end` (UNIX times of the epochs' ends).
        launched: UNIX time of the launch; the clock starts here.
        budget_seconds: the deadline is `launched` plus this.

    Returns:
        `points`: [seconds since launch, value] of every epoch that ended by the deadline in
        a trial that started by then, sorted by time; and counts of those trials by state.
    """
    deadline = launched + budget_seconds
    started = [
        t
        for t in trials
        if t.datetime_start is not None and t.datetime_start.timestamp() <= deadline
    ]
    points = []
    for trial in started:
        begun = trial.datetime_start.timestamp()
        record = TrialRecord.of(trial)
        values = record.history.get(metric, [])
        ends = record.epoch_end
        # Not strict: a reader may see an epoch's history a moment before its end time.
        for end, value in zip(ends, values, strict=False):
            # A retried trial starts with copies of the epochs of the trial it retries;
            # those ended before it began and count once, in the trial that trained them.
            if begun <= end <= deadline and math.isfinite(value):
                points.append([round(end - launched, 2), value])
    points.sort()
    return {
        "points": points,
        "trials_started": len(started),
        "trials_complete": sum(t.state == TrialState.COMPLETE for t in started),
        "trials_pruned": sum(t.state == TrialState.PRUNED for t in started),
        "trials_failed": sum(t.state == TrialState.FAIL for t in started),
        "epochs_in_time": len(points),
    }


def best_at(points: Sequence[Sequence[float]], seconds: float) -> float | None:
    """The best value reached by `seconds` after launch (None: no epoch ended by then)."""
    return max((v for s, v in points if s <= seconds), default=None)


def time_to(points: Sequence[Sequence[float]], threshold: float) -> float | None:
    """Seconds from launch until a value first reached `threshold` (None: never)."""
    return min((s for s, v in points if v >= threshold), default=None)


def best_so_far(points: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """The improvements of the best value: (seconds, new best), in time order."""
    steps: list[tuple[float, float]] = []
    for seconds, value in sorted(points):
        if not steps or value > steps[-1][1]:
            steps.append((seconds, value))
    return steps


def censored_median(times: Sequence[float | None], budget: float) -> tuple[float, bool]:
    """The median of times where None (never reached) counts as the budget.

    Returns the median and whether it depends on a run that never reached: then it is
    a lower bound, and the budget itself when most runs never reached.
    """
    if not times:
        return budget, True
    ordered = sorted((budget, True) if t is None else (t, False) for t in times)
    middle = ordered[(len(ordered) - 1) // 2 : len(ordered) // 2 + 1]
    return sum(t for t, _ in middle) / len(middle), any(never for _, never in middle)


def median(values: Sequence[float]) -> float | None:
    """The median (None of nothing)."""
    if not values:
        return None
    ordered = sorted(values)
    middle = ordered[(len(ordered) - 1) // 2 : len(ordered) // 2 + 1]
    return sum(middle) / len(middle)


# --- the runs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One planned (contestant, seed) run and where its record goes."""

    dataset: str
    contestant: str
    seed: int
    sections: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    path: Path

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.contestant}-seed{self.seed}"

    @property
    def budget_seconds(self) -> float:
        return self.settings["budget_minutes"] * 60


class RecordConflict(RuntimeError):
    """Records on disk were made with other settings than the runs asked for."""


def contestant_sections(
    base: dict[str, dict[str, Any]], contestant: str, *, seed: int, budget_minutes: float
) -> dict[str, dict[str, Any]]:
    """The study a contestant runs for one seed: the base study with its [trials] changes.

    Args:
        base: the base study's sections as its file has them (keys left out keep their
            defaults, e.g. successive halving's first rung follows max_epochs).
    """
    sections = copy.deepcopy(base)
    sections["study"]["seed"] = seed
    sections["trials"] |= {
        "n_trials": UNBOUNDED_TRIALS,
        # The harness stops the run at the budget; the study's own timeout is a backstop.
        "timeout_minutes": budget_minutes,
        "enqueue_baselines": False,
    }
    plan = CONTESTANTS[contestant]
    if plan.baselines_only:
        n_baselines = len(load_space(sections["study"]["space"]).BASELINES)
        sections["trials"]["n_trials"] = n_baselines
    sections["trials"] |= plan.trials or {}
    if not sections["trials"].get("prior", True):
        # A study without a prior may not name prior centres.
        sections.pop("prior", None)
    return sections


def record_path(out_dir: Path, dataset: str, contestant: str, seed: int) -> Path:
    """Where the record of one (contestant, seed) run of a dataset goes."""
    return out_dir / RECORDS_DIR / dataset / f"{contestant}-seed{seed}.json"


def plan_runs(
    base: dict[str, dict[str, Any]],
    *,
    dataset: str,
    contestants: Sequence[str],
    seeds: int,
    budget_minutes: float,
    out_dir: Path,
    workers: int | None = None,
) -> list[Run]:
    """The runs of one dataset, interleaved by seed, with the settings their records carry.

    Args:
        base: the base study's sections as its file has them; the contestants' studies
            are made from it.
        dataset: the records' folder name (e.g. "fashion_mnist", "digits").
        workers: worker processes of the Optuna contestants (default: one per core).
    """
    workers = workers or os.cpu_count() or 1
    runs = []
    for seed in range(seeds):
        for contestant in contestants:
            sections = contestant_sections(
                base, contestant, seed=seed, budget_minutes=budget_minutes
            )
            sections["study"]["name"] = f"{dataset}-{contestant}-seed{seed}"
            plan = CONTESTANTS[contestant]
            study = from_dict(sections, source=f"{dataset} {contestant}")
            prior = None if plan.trials is None else searched_prior(study)
            if contestant == "centre" and prior is None:
                raise ValueError(
                    f"contestant is centre, but space {study.study.space!r} has no PRIOR"
                    " and so no centre"
                )
            settings = {
                "dataset": dataset,
                "contestant": contestant,
                "seed": seed,
                "budget_minutes": budget_minutes,
                # The base study's epochs per trial (a contestant may train its own).
                "base_max_epochs": base["trials"]["max_epochs"],
                "workers": 1 if plan.one_process else workers,
                "threads_per_worker": workers if plan.one_process else 1,
                # The definition as the service resolves it, defaults included, so a
                # changed default also makes earlier records stale.
                "study": study.to_dict(),
                # The space's prior as searched (None without one): a prior changed in the
                # space's code also makes earlier records stale.
                "prior": prior,
                # Records made when a worker's sampler seed was the study's seed plus its
                # index (seeds s and s + 1 shared draws) lack this: stale.
                "sampler_seeds": "search.study.worker_seed(study seed, worker index)",
            }
            runs.append(
                Run(
                    dataset=dataset,
                    contestant=contestant,
                    seed=seed,
                    sections=sections,
                    # As JSON stores it, so a record read back compares equal.
                    settings=json.loads(json.dumps(settings)),
                    path=record_path(out_dir, dataset, contestant, seed),
                )
            )
    return runs


def searched_prior(study: StudyConfig) -> dict[str, list[Any]] | None:
    """A study's prior as [centre, spread] per param, its [prior] centres applied."""
    if not study.trials.prior:
        return None
    prior, _ = resolve_prior(load_space(study.study.space), study.prior, source=study.name)
    if prior is None:
        return None
    return {name: [p.centre, p.spread] for name, p in prior.items()}


def read_record(path: Path) -> dict[str, Any] | None:
    """A record from disk (None: missing or unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def conflicts(runs: Sequence[Run]) -> list[Run]:
    """The runs whose record exists with other settings (or cannot be read)."""
    found = []
    for run in runs:
        if not run.path.exists():
            continue
        record = read_record(run.path)
        if record is None or _comparable(record.get("settings")) != run.settings:
            found.append(run)
    return found


def _comparable(settings: Any) -> Any:
    """Recorded settings without the keys that moved out of study definitions since."""
    if not isinstance(settings, dict) or not isinstance(settings.get("study"), dict):
        return settings
    # Records from before the prior was recorded (random's had none), and from before a
    # contestant could train other epochs than the base study's.
    filled = {
        "prior": None,
        "base_max_epochs": settings["study"].get("trials", {}).get("max_epochs"),
        **settings,
    }
    return filled | {"study": with_legacy_defaults(settings["study"])}


def supersede(path: Path) -> Path:
    """Move a record aside into its folder's superseded/, stamped, so no result is lost."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.parent / SUPERSEDED_DIR / f"{path.stem}-{stamp}{path.suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    path.rename(target)
    return target


Runner = Callable[[Run, Path, Callable[[str], None]], dict[str, Any]]


def run_all(
    runs: Sequence[Run],
    *,
    workdir: Path,
    command: str,
    settle_seconds: float = 180,
    replace: bool = False,
    runner: Runner | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Run every run that has no record yet, writing each record as soon as it finishes.

    Args:
        workdir: scratch for study files, storages and logs.
        command: the command line that made the records, written into them.
        settle_seconds: wait up to this long before each run for the load average to fall.
        replace: move records made with other settings to superseded/ and run again;
            without it such records stop everything before the first run.
        runner: runs one study and returns its measures (default: by contestant).

    Returns:
        The paths of the records written now.

    Raises:
        RecordConflict: records exist with other settings and `replace` is false.
    """
    clashing = conflicts(runs)
    if clashing and not replace:
        raise RecordConflict(
            "records made with other settings (another budget, study or number of workers):\n"
            + "\n".join(f"  {run.path}" for run in clashing)
            + "\nrerun with --replace to move them to superseded/, or use another --out"
        )
    for run in clashing:
        log(f"superseded: {run.path} -> {supersede(run.path)}")
    written = []
    workdir.mkdir(parents=True, exist_ok=True)
    for i, run in enumerate(runs, 1):
        where = f"[{i}/{len(runs)}] {run.dataset}: {run.contestant}, seed {run.seed}"
        if run.path.exists():
            log(f"{where}: done before, record {run.path}")
            continue
        waited = wait_for_quiet(settle_seconds, threshold=DISTURBED_LOAD, log=log)
        log(f"{where}, {run.settings['budget_minutes']:g} min ({time.strftime('%H:%M:%S')})")
        study_file = write_study(workdir / f"{run.name}.toml", run.sections)
        _clear_scratch(workdir, run.name)
        load_start = load_average()
        date = dt.datetime.now().isoformat(timespec="seconds")
        with ForeignCpu() as foreign:
            measured = (runner or _default_runner)(run, study_file, log)
        load_end = load_average()
        record = {
            "dataset": run.dataset,
            "contestant": run.contestant,
            "seed": run.seed,
            "settings": run.settings,
            "command": command,
            "commit": git_commit(),
            "date": date,
            "machine": describe_machine(),
            "load_average": {"start": load_start, "end": load_end},
            "foreign_cpu": {"seconds": foreign.seconds, "share": foreign.share},
            "disturbed": load_start[0] > DISTURBED_LOAD or foreign.share > FOREIGN_CPU_SHARE,
            "settle_seconds": waited,
            **measured,
        }
        write_json_atomic(run.path, record)
        written.append(run.path)
        best = max((v for _, v in record["points"]), default=None)
        disturbed = (
            f" (disturbed: load {load_start[0]} at start, other programs took"
            f" {foreign.share:.0%} of the CPU)"
            if record["disturbed"]
            else ""
        )
        log(
            f"{where}: best {'none' if best is None else f'{best:.4f}'},"
            f" {record['trials_started']} trials started{disturbed}; record {run.path}"
        )
    return written


def _clear_scratch(workdir: Path, name: str) -> None:
    """Remove what an earlier, stopped run of the same study left in the workdir."""
    for suffix in (".db", ".db-wal", ".db-shm", ".log", ".jsonl"):
        (workdir / f"{name}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(workdir / "runs" / name, ignore_errors=True)
    shutil.rmtree(workdir / "kerastuner" / name, ignore_errors=True)


def _default_runner(run: Run, study_file: Path, log: Callable[[str], None]) -> dict[str, Any]:
    if run.contestant == "kerastuner":
        return _run_kerastuner(run, study_file)
    return _run_optuna(run, study_file, log)


def _run_optuna(run: Run, study_file: Path, log: Callable[[str], None]) -> dict[str, Any]:
    workdir = study_file.parent
    storage = f"sqlite:///{workdir / (run.name + '.db')}"

    def progress(elapsed: float) -> None:
        trials = _peek_trials(run.name, storage)
        if trials is None:
            return
        launched = time.time() - elapsed
        now = epoch_points(trials, launched=launched, budget_seconds=elapsed)
        best = best_at(now["points"], elapsed)
        log(
            f"  {elapsed / 60:4.1f} min: {now['trials_started']} trials started,"
            f" best {'none yet' if best is None else f'{best:.4f}'}"
        )

    started = run_search(
        study_file,
        storage=storage,
        workers=run.settings["workers"],
        threads=run.settings["threads_per_worker"],
        cwd=workdir,
        budget_seconds=run.budget_seconds,
        on_tick=progress,
        # About six lines a run: a minute apart at 20 minutes, half a minute at 3.
        tick_seconds=min(60.0, max(10.0, run.budget_seconds / 6)),
    )
    launched = started.timestamp()
    measured = epoch_points(
        study_trials(run.name, storage), launched=launched, budget_seconds=run.budget_seconds
    )
    return {
        "launched": launched,
        **measured,
        "data_load_seconds": worker_load_seconds(workdir, run.name),
    }


def _peek_trials(study_name: str, storage: str) -> list[FrozenTrial] | None:
    """The trials of a running study, or None while it has no tables or study yet."""
    try:
        # Never creates tables: the supervisor may be creating them at this moment.
        rdb = optuna.storages.RDBStorage(storage, skip_table_creation=True)
    except Exception:
        return None
    try:
        study = optuna.load_study(study_name=study_name, storage=rdb)
        return study.get_trials(deepcopy=False)
    except Exception:  # a study not created yet, or a database busy for a moment
        return None
    finally:
        rdb.engine.dispose()


def _run_kerastuner(run: Run, study_file: Path) -> dict[str, Any]:
    workdir = study_file.parent
    events = workdir / f"{run.name}.jsonl"
    cmd = [sys.executable, "-m", "benchmarks.kerastuner_conv", str(study_file)]
    cmd += ["--events", str(events), "--directory", str(workdir / "kerastuner")]
    cmd += ["--threads", str(run.settings["threads_per_worker"])]
    log_file = workdir / f"{run.name}.log"
    launched = time.time()
    with log_file.open("wb") as out:
        # In the workdir, where a study's relative dataset path (the digits) points.
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=bench_env(), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            proc.wait(timeout=run.budget_seconds)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode >= 0:
        raise RuntimeError(
            f"KerasTuner exited before its budget ({proc.returncode}); see {log_file}"
        )
    lines = events.read_text().splitlines() if events.exists() else []
    in_time = [e for e in map(json.loads, lines) if e["time"] - launched <= run.budget_seconds]
    ended = [e for e in in_time if e["event"] == "end" and e["status"] == "COMPLETED"]
    points = sorted(
        [round(e["time"] - launched, 2), e["score"]]
        for e in ended
        if e["score"] is not None and math.isfinite(e["score"])
    )
    return {
        "launched": launched,
        "points": points,
        # A model is a trial that continues no other; later rounds continue models.
        "trials_started": sum(e["event"] == "begin" and e["continues"] is None for e in in_time),
        "trials_continued": sum(
            e["event"] == "begin" and e["continues"] is not None for e in in_time
        ),
        "trials_failed": sum(e["event"] == "end" and e["status"] != "COMPLETED" for e in in_time),
        "epochs_in_time": sum(e["epochs"] - e["initial_epoch"] for e in ended),
    }


def load_records(out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every record on disk, by dataset folder (records in superseded/ are left out)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for folder in sorted(p for p in (out_dir / RECORDS_DIR).glob("*") if p.is_dir()):
        records = [read_record(path) for path in sorted(folder.glob("*.json"))]
        records = [r for r in records if r is not None and "points" in r]
        if records:
            groups[folder.name] = sorted(
                records, key=lambda r: (r["seed"], _contestant_order(r["contestant"]))
            )
    return groups


def _contestant_order(name: str) -> int:
    return list(CONTESTANTS).index(name) if name in CONTESTANTS else len(CONTESTANTS)
