"""`make bench`: what does this service find, and how soon, against what a user gets without it?

Parts (--parts; the default is the first two, which need the machine alone):

- efficiency: part 1, `search` (the study as written) against `centre` (the prior's centre
  trained alone), `notebook` (the notebook's models), `tpe` (TPE + successive halving, no
  prior) and `random` (random search) on the conv study, paired by seed, a record per run
  (resumable);
- digits: part 1 again on scikit-learn's 8x8 digits, with a short budget;
- overhead: part 2, a trial against bare model.fit;
- storage: part 3, trials per second on SQLite and PostgreSQL, 1 to 8 workers;
- cores: part 4, 1 worker x all threads against one 1-thread worker per core.

Part 1's records go to <out>/efficiency/<dataset>/<contestant>-seed<N>.json and its report,
rebuilt from all records on disk, to <out>/efficiency.md; parts 2-4 to <out>/benchmark.md.
Scratch files (storages, logs, study files) go to --workdir. See benchmarks/README.md.

    python -m benchmarks.bench [--parts efficiency,digits] [--seeds 3] [--budget-minutes 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import sys
import tomllib
from pathlib import Path

import optuna

from benchmarks.cores import run_cores
from benchmarks.digits import NPZ_NAME, digits_sections, write_digits_npz
from benchmarks.efficiency import (
    CONTESTANTS,
    DEFAULT_CONTESTANTS,
    RecordConflict,
    load_records,
    plan_runs,
    run_all,
)
from benchmarks.harness import REPO, describe_machine, git_commit, package_versions
from benchmarks.overhead import run_overhead
from benchmarks.report import write_efficiency_report, write_report
from benchmarks.storage_throughput import run_storage
from search.config import load_config

# The conv study defines the search: its space, sampler, pruner, prior, split and epochs.
BASE_STUDY = Path("studies") / "conv.toml"
PARTS = ("efficiency", "digits", "overhead", "storage", "cores")
DEFAULT_PARTS = ("efficiency", "digits")


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


def dataset_label(dataset: str) -> str:
    """The records' folder name of a study's dataset: fashion_mnist, or an .npz's stem."""
    return Path(dataset.removeprefix("npz:")).stem if dataset.startswith("npz:") else dataset


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; see --help."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts",
        type=_choices(PARTS),
        default=DEFAULT_PARTS,
        help=f"comma-separated parts to run ({','.join(DEFAULT_PARTS)}; all: {','.join(PARTS)})",
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=20,
        help="wall clock per run of part 1 on Fashion-MNIST (%(default)s)",
    )
    parser.add_argument(
        "--digits-budget-minutes",
        type=float,
        default=3,
        help="wall clock per run of part 1 on the digits (%(default)s)",
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="runs of each contestant: seeds 0..N-1 (3)"
    )
    parser.add_argument(
        "--contestants",
        type=_choices(tuple(CONTESTANTS)),
        default=DEFAULT_CONTESTANTS,
        help=f"comma-separated contestants of part 1 ({','.join(DEFAULT_CONTESTANTS)};"
        f" all: {','.join(CONTESTANTS)})",
    )
    parser.add_argument(
        "--study",
        type=Path,
        default=BASE_STUDY,
        help="the study part 1 compares on (%(default)s)",
    )
    parser.add_argument(
        "--train-subset", type=int, help="Fashion-MNIST: stratified training subset (all)"
    )
    parser.add_argument(
        "--validation-subset", type=int, help="Fashion-MNIST: validation subset (all)"
    )
    parser.add_argument(
        "--max-epochs", type=int, help="Fashion-MNIST: epochs per trial (the study's)"
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=180,
        help="before each run of part 1, wait up to this long for the load average to fall"
        " below 0.5 (%(default)s; 0: don't wait)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="move part 1 records made with other settings to superseded/ and rerun them"
        " (without it, such records stop the benchmark before it starts)",
    )
    parser.add_argument(
        "--storage-seconds", type=float, default=20, help="per storage measurement (20)"
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the parts print their own progress
    command = shlex.join(["python", "-m", "benchmarks.bench", *(argv or sys.argv[1:])])
    out = args.out.resolve()
    # Absolute: the runs start in the workdir, and so must find their study files.
    workdir = args.workdir.resolve()
    study_file = args.study if args.study.is_absolute() else REPO / args.study
    load_config(study_file)  # a broken study fails here, before anything runs
    # The keys as written: those left out keep their defaults (min_epochs follows max_epochs).
    base = tomllib.loads(study_file.read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)

    runs = []
    if "efficiency" in args.parts:
        fashion = json.loads(json.dumps(base))
        for key in ("train_subset", "validation_subset"):
            if getattr(args, key) is not None:
                fashion["data"][key] = getattr(args, key)
        if args.max_epochs:
            fashion["trials"]["max_epochs"] = args.max_epochs
        runs += plan_runs(
            fashion,
            dataset=dataset_label(fashion["data"].get("dataset", "fashion_mnist")),
            contestants=args.contestants,
            seeds=args.seeds,
            budget_minutes=args.budget_minutes,
            out_dir=out,
        )
    if "digits" in args.parts:
        write_digits_npz(workdir / NPZ_NAME)
        runs += plan_runs(
            digits_sections(base),
            dataset="digits",
            contestants=args.contestants,
            seeds=args.seeds,
            budget_minutes=args.digits_budget_minutes,
            out_dir=out,
        )
    if runs:
        try:
            run_all(
                runs,
                workdir=workdir,
                command=command,
                settle_seconds=args.settle_seconds,
                replace=args.replace,
            )
        except RecordConflict as e:
            sys.exit(f"benchmarks.bench: {e}")
        finally:
            # Also after a stop: the report shows every record finished so far.
            if any(out.joinpath("efficiency").glob("*/*.json")):
                print(f"part 1 report: {write_efficiency_report(out)}")

    others = [p for p in args.parts if p not in DEFAULT_PARTS]
    if not others:
        return
    cores = os.cpu_count() or 1
    # Part 4 compares layouts, not searches: a sixth of the budget, a minute at least.
    cores_minutes = max(1.0, args.budget_minutes / 6)
    results = {
        "command": command,
        "date": dt.datetime.now().isoformat(timespec="minutes"),
        "commit": git_commit(),
        "machine": describe_machine(),
        "packages": package_versions(),
        "settings": {
            "study": load_config(study_file).to_dict(),
            "storage_seconds": args.storage_seconds,
            "cores_minutes": cores_minutes,
        },
        "part1_load_seconds": [
            {"workers": r["settings"]["workers"], "seconds": r["data_load_seconds"]}
            for r in load_records(out).get("fashion_mnist", [])
            if r["contestant"] == "search" and r.get("data_load_seconds")
        ],
    }
    # Parts 2 and 4 time a fixed model: a prior over the study's space has no place there.
    fixed = json.loads(json.dumps(base))
    fixed.pop("prior", None)
    fixed["trials"]["prior"] = False
    parts = {
        "overhead": lambda: run_overhead(fixed, threads=cores, workdir=workdir),
        "storage": lambda: run_storage(seconds=args.storage_seconds, workdir=workdir),
        "cores": lambda: run_cores(fixed, minutes=cores_minutes, workdir=workdir),
    }
    for name in others:
        results[name] = parts[name]()
        # Kept as it grows, so a part that fails later loses nothing measured before it.
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
    path = write_report(results, out)
    print(path.read_text())


if __name__ == "__main__":
    main()
