"""Time budgets on any machine: `make run` on this machine slowed down, and 2-minute studies.

    python -m benchmarks.deadlines [--parts make_run,two_minutes] [--conditions ...] [--redo]

- `make_run`: `make run` as shipped, in a fresh clone of this commit, once per condition:
  this machine (`2 cores`), one core (`taskset -c 0`), one core at half speed (`taskset -c
  0` in a cgroup with a quota of half a CPU; about 4x slower per epoch). Set-up (the
  clone's venv, pip install) is timed apart; nothing in the study files changes between the
  conditions. Recorded: exit code, wall seconds, the best trial's validation accuracy,
  epochs and plan, the test accuracy of its model, the trials' counts, the prior's centre's
  seconds per epoch.
- `two_minutes`: two `search run` studies of 2 minutes with 2 workers on the full data:
  `long_trials` (the conv prior's centre and prior samples, up to 20 epochs each) and
  `costly_second` (the centre, then a config of about 1.9 M parameters whose epoch costs many
  times the centre's). Recorded: seconds from the deadline to the end, trial states, whether
  a trial is RUNNING afterwards and whether `search export` finds a best trial.

Each (part, condition) is written to its own JSON record as it finishes
(`benchmarks/results/deadlines/`); a rerun skips those that exist (`--redo` runs them again),
and `benchmarks/results/deadlines.md` is rebuilt from all records. Run it with the machine
alone: each record says the load average at its start and the CPU time other programs took.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from benchmarks.harness import ForeignCpu, git_commit, load_average, write_json_atomic
from search.record import TrialRecord, queued_attrs

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RECORDS = RESULTS / "deadlines"
CONDITIONS = {
    "2 cores": "make run",
    "1 core": "taskset -c 0 make run",
    # A CPU quota of half a core for the command and every process it starts (a cgroup):
    # Debian's cpulimit 2.8 (`cpulimit -l 50 -m -f --`) left `search worker`, a grandchild
    # of make, at 76% of the core, so it could not slow make run down 4x.
    "1 core at half speed": "taskset -c 0 make run, in a cgroup of cpu quota 50000/100000 us",
}
# Like the conv config that held a worker for a whole study: two 5x5 convs per block, up to
# 180 filters; with the centre's other params just under 2 M parameters on 28x28 images
# (under max_params; the record has the count), about 60 times the centre's multiply-adds.
COSTLY_PARAMS = {
    "n_blocks": 3,
    "filters_b0": 96,
    "filters_b1": 180,
    "filters_b2": 64,
    "convs_per_block": 2,
    "kernel_size": 5,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="make_run,two_minutes")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/deadlines"))
    parser.add_argument("--redo", action="store_true")
    args = parser.parse_args(argv)
    RECORDS.mkdir(parents=True, exist_ok=True)
    conditions = [c.strip() for c in args.conditions.split(",")]
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        parser.error(f"condition {unknown[0]!r} is not one of {', '.join(CONDITIONS)}")
    runs = []
    if "make_run" in args.parts:
        runs += [(f"make_run-{_slug(c)}", lambda w, c=c: make_run(w, c)) for c in conditions]
    if "two_minutes" in args.parts:
        runs += [(f"two_minutes-{n}", lambda w, n=n: two_minutes(w, n)) for n in STUDIES]
    for name, run in runs:
        path = RECORDS / f"{name}.json"
        if path.exists() and not args.redo:
            print(f"{name}: recorded, skipped ({path})", flush=True)
            continue
        print(f"{name}: running", flush=True)
        workdir = args.workdir / name
        shutil.rmtree(workdir, ignore_errors=True)
        load = load_average()
        with ForeignCpu() as foreign:
            record = run(workdir)
        record |= {
            "name": name,
            "commit": git_commit(),
            "load_average_at_start": load,
            "foreign_cpu_seconds": foreign.seconds,
            "foreign_cpu_share": foreign.share,
        }
        write_json_atomic(path, record)
        print(f"{name}: {json.dumps(record)[:400]}", flush=True)
    write_summary()
    return 0


def _slug(condition: str) -> str:
    return condition.replace(" ", "_")


def make_run(workdir: Path, condition: str) -> dict[str, Any]:
    """`make run` in a fresh clone under a condition; set-up timed apart."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(workdir)], check=True)
    start = time.monotonic()
    subprocess.run(["make", "setup", "data"], cwd=workdir, check=True, capture_output=True)
    setup_seconds = time.monotonic() - start
    log = workdir / "make-run.log"
    command = ["make", "run"] if condition == "2 cores" else ["taskset", "-c", "0", "make", "run"]
    if condition == "1 core at half speed":
        # The shell joins the cgroup, then becomes the command; its children stay in it.
        command = ["sh", "-c", f'echo $$ > {_half_core_cgroup()}; exec "$@"', "sh", *command]
    start = time.monotonic()
    with log.open("wb") as out:
        code = subprocess.run(command, cwd=workdir, stdout=out, stderr=out).returncode
    seconds = time.monotonic() - start
    record: dict[str, Any] = {
        "part": "make_run",
        "condition": condition,
        "command": CONDITIONS[condition],
        "exit_code": code,
        "setup_seconds": round(setup_seconds, 1),
        "seconds": round(seconds, 1),
        "log_tail": log.read_text(errors="replace").splitlines()[-12:],
    }
    storage = f"sqlite:///{workdir / 'runs' / 'search.db'}"
    trials = _trials(storage, "quick")
    record |= _counts(trials)
    centre = trials[0] if trials else None
    if centre is not None:
        centre_record = TrialRecord.of(centre)
        record["centre_epoch_seconds"] = centre_record.epoch_seconds or None
        record["centre_planned_epochs"] = centre_record.planned_epochs
    reports = sorted((workdir / "runs" / "quick").glob("trial-*/report.json"))
    if reports:
        report = json.loads(reports[0].read_text())
        entry = report["export"]["trials"][0]
        record |= {
            "best_trial": report["trial"],
            "best_validation": report["validation"]["accuracy"],
            "test": report["test"]["accuracy"],
            "best_epoch": entry["best_epoch"],
            "epochs": entry["epochs"],
            "planned_epochs": entry.get("planned_epochs"),
            "stopped_at_deadline": entry.get("stopped_at_deadline"),
        }
    return record


def _half_core_cgroup() -> Path:
    """The tasks file of a cgroup whose processes share half a CPU (root; v1 or v2)."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    group = Path("/sys/fs/cgroup" if v2.exists() else "/sys/fs/cgroup/cpu") / "search-half-core"
    group.mkdir(exist_ok=True)
    if v2.exists():
        (group / "cpu.max").write_text("50000 100000")
        return group / "cgroup.procs"
    (group / "cpu.cfs_period_us").write_text("100000")
    (group / "cpu.cfs_quota_us").write_text("50000")
    return group / "tasks"


STUDIES = ("long_trials", "costly_second")


def two_minutes(workdir: Path, name: str) -> dict[str, Any]:
    """A 2-minute conv study with 2 workers; `costly_second` queues the costly config second."""
    workdir.mkdir(parents=True)
    study_file = workdir / f"{name}.toml"
    study_file.write_text(
        "\n".join(
            [
                "[study]",
                f'name = "{name}"',
                'space = "conv"',
                "[data]",
                'dataset = "fashion_mnist"',
                "[trials]",
                "n_trials = 40",
                "max_epochs = 20",
                "timeout_minutes = 2",
                'pruner = "successive_halving"',
                "max_params = 2_000_000",
                "",
            ]
        )
    )
    storage = f"sqlite:///{workdir / 'search.db'}"
    search = [sys.executable, "-m", "search"]
    subprocess.run(
        [*search, "create", str(study_file), "--storage", storage],
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    if name == "costly_second":
        study = optuna.load_study(study_name=name, storage=storage)
        centre = study.get_trials(deepcopy=False)[0].params
        study.enqueue_trial({**centre, **COSTLY_PARAMS}, user_attrs=queued_attrs("costly"))
    log = workdir / "run.log"
    start = time.time()
    with log.open("wb") as out:
        code = subprocess.run(
            [*search, "run", str(study_file), "--workers", "2", "--storage", storage],
            cwd=workdir,
            stdout=out,
            stderr=out,
        ).returncode
    ended = time.time()
    trials = _trials(storage, name)
    exported = subprocess.run(
        [*search, "export", name, "--storage", storage],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    deadline = _deadline(log)
    return {
        "part": "two_minutes",
        "study": name,
        "exit_code": code,
        "seconds": round(ended - start, 1),
        "seconds_after_deadline": None if deadline is None else round(ended - deadline, 1),
        **_counts(trials),
        "trials": [_trial_row(t) for t in trials],
        "export_exit_code": exported.returncode,
        "export_output": (exported.stdout.strip() or exported.stderr.strip()).splitlines()[-1:],
        "log_tail": log.read_text(errors="replace").splitlines()[-10:],
    }


def _deadline(log: Path) -> float | None:
    """The run's deadline: its "started N workers" line's time plus 2 minutes (a Unix time)."""
    for line in log.read_text(errors="replace").splitlines():
        if "started 2 workers" in line and line.startswith("["):
            clock = time.strptime(line[1:9], "%H:%M:%S")
            now = time.localtime(log.stat().st_mtime)
            started = time.mktime(
                (*now[:3], clock.tm_hour, clock.tm_min, clock.tm_sec, 0, 0, now.tm_isdst)
            )
            return started + 120
    return None


def _trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    record = TrialRecord.of(t)
    stopped = record.stopped_at_deadline
    return {
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        "origin": record.origin,
        "n_params": record.n_params,
        "epochs": record.epochs_done,
        "planned_epochs": record.planned_epochs,
        "epoch_seconds": record.epoch_seconds or None,
        "seconds": record.seconds,
        "note": record.pruned_reason
        or record.fail_reason
        or (None if stopped is None else {"epochs": stopped.epochs, "planned": stopped.planned}),
    }


def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        return []
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


def _counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, Any]:
    return {
        "counts": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        "running_after": sum(t.state == TrialState.RUNNING for t in trials),
    }


def write_summary() -> Path:
    """benchmarks/results/deadlines.md from every record on disk."""
    records = [json.loads(p.read_text()) for p in sorted(RECORDS.glob("*.json"))]
    lines = [
        "# Time budgets on any machine",
        "",
        "Made by `python -m benchmarks.deadlines` (benchmarks/deadlines.py); each row is one",
        "record in `benchmarks/results/deadlines/`, with its commit. A run is marked",
        "disturbed when other programs took more than 5% of the machine's CPU during it; what",
        "they were is in benchmarks/README.md.",
        "",
        "## `make run` as shipped, this machine slowed down",
        "",
        "| condition | exit | set-up s | make run s | centre s/epoch (median) | best trial:"
        " epochs (planned) | validation | test | trials complete / pruned | disturbed | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in records if r["part"] == "make_run"):
        seconds = sorted(r.get("centre_epoch_seconds") or [float("nan")])
        median = seconds[len(seconds) // 2]
        stopped = " stopped at the deadline" if r.get("stopped_at_deadline") else ""
        lines.append(
            f"| {r['condition']} ({r['command']}) | {r['exit_code']} | {r['setup_seconds']:.0f}"
            f" | {r['seconds']:.0f} | {median:.1f}"
            f" | #{r.get('best_trial', '-')}: {r.get('epochs', '-')} ({r.get('planned_epochs')})"
            f"{stopped} | {r.get('best_validation', float('nan')):.4f}"
            f" | {r.get('test', float('nan')):.4f}"
            f" | {r['counts']['complete']} / {r['counts']['pruned']}"
            f" | {_disturbed(r)} | {r['commit'][:7]} |"
        )
    lines += [
        "",
        "## 2-minute studies, 2 workers, full data",
        "",
        "| study | exit | ended after the deadline (s) | RUNNING after | export | trials |"
        " disturbed | commit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in records if r["part"] == "two_minutes"):
        trials = "; ".join(
            f"#{t['number']} {t['origin']} {t['state'].lower()} after {t['epochs']} epochs"
            + (f" ({t['note']})" if t["note"] else "")
            for t in r["trials"]
        )
        lines.append(
            f"| {r['study']} | {r['exit_code']} | {r['seconds_after_deadline']}"
            f" | {r['running_after']} | exit {r['export_exit_code']} | {trials}"
            f" | {_disturbed(r)} | {r['commit'][:7]} |"
        )
    path = RESULTS / "deadlines.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _disturbed(record: dict[str, Any]) -> str:
    share = record.get("foreign_cpu_share", 0)
    return f"yes ({share:.0%} of the CPU)" if share > 0.05 else f"no ({share:.0%})"


if __name__ == "__main__":
    sys.exit(main())
