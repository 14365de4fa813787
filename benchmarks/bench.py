"""`make bench`: is the search better than searching by hand, and than KerasTuner?

Runs the four parts one after another (they need the machine alone; the default budget
takes about two hours on 2 cores) and writes benchmark.json, benchmark.md and the plots
to benchmarks/results/. Scratch files (storages, logs, study files) go to runs/bench/.

1. search efficiency: this service, the hand loop and KerasTuner on the conv space (or
   the space of --study, e.g. studies/conv_plus.toml, to compare spaces at equal budget);
2. overhead: a trial against bare model.fit;
3. storage: trials per second on SQLite and PostgreSQL, 1 to 8 workers;
4. workers on cores: 1 worker x all threads against one 1-thread worker per core.

    python -m benchmarks.bench [--budget-minutes 30] [--seeds 1] [--study FILE] [--train-subset N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import optuna

from benchmarks.cores import run_cores
from benchmarks.efficiency import CONTESTANTS, run_efficiency
from benchmarks.harness import REPO, describe_machine, git_commit, package_versions
from benchmarks.overhead import run_overhead
from benchmarks.report import write_report
from benchmarks.storage_throughput import run_storage
from search.config import load_config

# The conv study defines the search: its space, split and epochs (the data flags narrow it).
BASE_STUDY = Path("studies") / "conv.toml"


PARTS = ("efficiency", "overhead", "storage", "cores")


def _choices(allowed: tuple[str, ...]):
    """An argparse type: a comma-separated subset of `allowed`, in the given order."""

    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(v.strip() for v in text.split(",") if v.strip())
        unknown = [v for v in chosen if v not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(
                f"{text!r}: must be a comma-separated subset of {','.join(allowed)}"
            )
        return chosen

    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget-minutes", type=float, default=30, help="wall clock per contestant (30)"
    )
    parser.add_argument("--seeds", type=int, default=1, help="runs of each contestant (1)")
    parser.add_argument(
        "--study",
        type=Path,
        default=BASE_STUDY,
        help="the study whose space, split and epochs part 1 searches (%(default)s)",
    )
    parser.add_argument("--train-subset", type=int, help="stratified training subset (all)")
    parser.add_argument("--validation-subset", type=int, help="validation subset (all)")
    parser.add_argument("--max-epochs", type=int, help="epochs per trial (the study's)")
    parser.add_argument(
        "--storage-seconds", type=float, default=20, help="per storage measurement (20)"
    )
    parser.add_argument(
        "--parts",
        type=_choices(PARTS),
        default=PARTS,
        help=f"comma-separated parts to run (all: {','.join(PARTS)})",
    )
    parser.add_argument(
        "--contestants",
        type=_choices(tuple(CONTESTANTS)),
        default=tuple(CONTESTANTS),
        help=f"comma-separated contestants of part 1 (all: {','.join(CONTESTANTS)})",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results", help="results (%(default)s)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=REPO / "runs" / "bench",
        help="scratch, emptied first (%(default)s)",
    )
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the parts print their own progress

    study_file = args.study if args.study.is_absolute() else REPO / args.study
    base = load_config(study_file).to_dict()
    base["data"] |= {
        "train_subset": args.train_subset,
        "validation_subset": args.validation_subset,
    }
    if args.max_epochs:
        base["trials"]["max_epochs"] = args.max_epochs
    # Part 4 compares layouts, not searches: a sixth of the budget, a minute at least.
    cores_minutes = max(1.0, args.budget_minutes / 6)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    results = {
        "command": shlex.join(["python", "-m", "benchmarks.bench", *(argv or sys.argv[1:])]),
        "date": dt.datetime.now().isoformat(timespec="minutes"),
        "commit": git_commit(),
        "machine": describe_machine(),
        "packages": package_versions(),
        "settings": {
            "budget_minutes": args.budget_minutes,
            "seeds": args.seeds,
            "study": base,
            "storage_seconds": args.storage_seconds,
            "cores_minutes": cores_minutes,
        },
    }
    cores = os.cpu_count() or 1
    parts = (
        (
            "efficiency",
            lambda: run_efficiency(
                base,
                budget_minutes=args.budget_minutes,
                seeds=args.seeds,
                workdir=args.workdir,
                contestants=args.contestants,
            ),
        ),
        ("overhead", lambda: run_overhead(base, threads=cores, workdir=args.workdir)),
        ("storage", lambda: run_storage(seconds=args.storage_seconds, workdir=args.workdir)),
        ("cores", lambda: run_cores(base, minutes=cores_minutes, workdir=args.workdir)),
    )
    for name, run in parts:
        if name not in args.parts:
            continue
        results[name] = run()
        # Kept as it grows, so a part that fails later loses nothing measured before it.
        (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    path = write_report(results, args.out)
    print(path.read_text())


if __name__ == "__main__":
    main()
