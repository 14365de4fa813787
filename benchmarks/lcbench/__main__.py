"""python -m benchmarks.lcbench: run what is not recorded yet, then write the report."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from benchmarks.lcbench.bench import BUDGETS, DEHB_PYTHON, PRIORS, Settings, run_benchmark
from benchmarks.lcbench.report import summarize, write_report
from benchmarks.lcbench.surrogate import tasks


def main(argv: list[str] | None = None) -> int:
    defaults = Settings()
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.lcbench",
        description="The search strategy on LCBench's surrogate, in simulated time"
        " (benchmarks/README.md).",
    )
    p.add_argument("--out", type=Path, default=defaults.out, help="prefix of the files written")
    p.add_argument(
        "--tasks", default="all", help=f"comma-separated OpenML task ids, or all ({len(tasks())})"
    )
    p.add_argument("--seeds", type=int, default=defaults.n_seeds, help="seeds 0 to N-1")
    p.add_argument("--contestants", default=",".join(defaults.contestants))
    p.add_argument("--priors", default=",".join(PRIORS))
    p.add_argument(
        "--budgets",
        default=",".join(map(str, BUDGETS)),
        help="full trials' worth of simulated time; every run goes to the largest",
    )
    p.add_argument("--workers", type=int, default=defaults.n_workers, help="simulated workers")
    p.add_argument("--reference", type=int, default=defaults.n_reference, help="configs per task")
    p.add_argument("--jobs", type=int, default=defaults.n_jobs, help="processes (1: this one)")
    p.add_argument("--dehb-python", type=Path, default=DEHB_PYTHON)
    args = p.parse_args(argv)
    settings = Settings(
        out=args.out,
        tasks=tasks() if args.tasks == "all" else tuple(args.tasks.split(",")),
        n_seeds=args.seeds,
        contestants=tuple(args.contestants.split(",")),
        priors=tuple(args.priors.split(",")),
        budgets=tuple(int(b) for b in args.budgets.split(",")),
        n_workers=args.workers,
        n_reference=args.reference,
        n_jobs=args.jobs,
        dehb_python=args.dehb_python,
    )
    start = time.monotonic()
    try:
        run_benchmark(settings)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every finished run is recorded; the report covers the task-seed pairs complete.
        print("stopped: the report covers the runs recorded so far", file=sys.stderr)
    command = shlex.join(["python", "-m", "benchmarks.lcbench", *(argv or sys.argv[1:])])
    summary = summarize(settings, command=command, wall_seconds=time.monotonic() - start)
    write_report(summary, settings.out)
    print(f"wrote {settings.out.with_suffix('.md')}, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
