"""Does a study reach its target? Search for at most a budget, choose by validation, test once.

The path a user takes, timed: `search run` (one 1-thread worker per core) stopped once
`--minutes` have passed; `search export --top K --reevaluate S` (the K best configs
trained again with S other seeds on the training split, ranked by their mean of the
study's metric on the validation split: no test data); `search retrain` of the winner,
its test set evaluated once.
Writes `targets-<study>.json` and `.md` to benchmarks/results/; scratch in runs/bench/.

    python -m benchmarks.targets studies/conv.toml --minutes 55 --top 1 --reevaluate 2 \
        --target 0.935
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from benchmarks.harness import (
    REPO,
    UNBOUNDED_TRIALS,
    bench_env,
    describe_machine,
    git_commit,
    package_versions,
    run_search,
    study_trials,
    write_study,
)
from search.config import load_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, metavar="STUDY.toml")
    parser.add_argument("--minutes", type=float, default=120, help="search budget (120)")
    parser.add_argument("--top", type=int, default=3, help="configs re-evaluated (3)")
    parser.add_argument("--reevaluate", type=int, default=2, help="seeds per config (2)")
    parser.add_argument("--target", type=float, help="test accuracy to reach, for the table")
    parser.add_argument("--train-subset", type=int, help="stratified training subset (all)")
    parser.add_argument("--validation-subset", type=int, help="validation subset (all)")
    parser.add_argument("--max-epochs", type=int, help="epochs per trial (the study's)")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results", help="(%(default)s)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=REPO / "runs" / "bench", help="(%(default)s)"
    )
    args = parser.parse_args(argv)

    study = load_config(args.study).to_dict()
    name = study["study"]["name"]
    study["data"] |= {
        "train_subset": args.train_subset,
        "validation_subset": args.validation_subset,
    }
    study["trials"] |= {"n_trials": UNBOUNDED_TRIALS, "timeout_minutes": args.minutes}
    if args.max_epochs:
        study["trials"]["max_epochs"] = args.max_epochs
    work = args.workdir / f"targets-{name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    study_file = write_study(work / f"{name}.toml", study)
    storage = f"sqlite:///{work / 'search.db'}"
    cores = os.cpu_count() or 1
    result: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "benchmarks.targets", *(argv or sys.argv[1:])]),
        "date": dt.datetime.now().isoformat(timespec="minutes"),
        "commit": git_commit(),
        "machine": describe_machine(),
        "packages": package_versions(),
        "study": study,
        "budget_minutes": args.minutes,
        "target": args.target,
    }

    print(f"search: {name}, {args.minutes:g} min, {cores} workers x 1 thread", flush=True)
    # Anything else running shares the cores: the 1-minute load at each step's start and end.
    result["load"] = {"search": [os.getloadavg()[0]]}
    start = time.monotonic()
    run_search(
        study_file,
        storage=storage,
        workers=cores,
        threads=1,
        cwd=work,
        budget_seconds=args.minutes * 60,
    )
    result["load"]["search"].append(os.getloadavg()[0])
    trials = study_trials(name, storage)
    states = [t.state for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        sys.exit(f"no trial of {name} completed in {args.minutes:g} min; see {work}")
    best = max(complete, key=lambda t: t.value)
    result["search"] = {
        "minutes": (time.monotonic() - start) / 60,
        "trials": len(trials),
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
        "epochs": sum(len(t.intermediate_values) for t in trials),
        "best": {"number": best.number, "value": best.value, "params": best.params},
    }

    print(f"export: top {args.top}, re-evaluated with {args.reevaluate} seeds", flush=True)
    result["load"]["reevaluation"] = [os.getloadavg()[0]]
    start = time.monotonic()
    export = work / "best.json"
    _search(
        "export", name, "-o", export, "--top", args.top, "--reevaluate", args.reevaluate,
        "--storage", storage, cwd=work,
    )  # fmt: skip
    result["load"]["reevaluation"].append(os.getloadavg()[0])
    result["reevaluation"] = {
        "minutes": (time.monotonic() - start) / 60,
        "ranked": [
            {"number": e["number"], "trial_value": e["value"], **e["reevaluation"]}
            for e in json.loads(export.read_text())["trials"]
        ],
    }

    print("retrain: the winner, tested once", flush=True)
    result["load"]["retrain"] = [os.getloadavg()[0]]
    start = time.monotonic()
    _search("retrain", export, "-o", work / "retrained", cwd=work)
    result["load"]["retrain"].append(os.getloadavg()[0])
    report = json.loads((work / "retrained" / "report.json").read_text())
    result["retrain"] = {
        "minutes": (time.monotonic() - start) / 60,
        "trial": report["trial"],
        "epochs": report["epochs"],
        "validation_accuracy": report["validation"]["accuracy"],
        "test_accuracy": report["test"]["accuracy"],
        "test_loss": report["test"]["loss"],
        "config": report["export"]["trials"][0]["config"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"targets-{name}.json").write_text(json.dumps(result, indent=2))
    markdown = _markdown(result)
    (args.out / f"targets-{name}.md").write_text(markdown)
    print(markdown)


def _search(*args: Any, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "search", *map(str, args)]
    log = cwd / f"{args[0]}.log"
    with log.open("wb") as out:
        code = subprocess.run(cmd, cwd=cwd, env=bench_env(), stdout=out, stderr=out).returncode
    if code != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited with {code}; see {log}")


def _markdown(r: dict[str, Any]) -> str:
    s, retrain, reeval = r["search"], r["retrain"], r["reevaluation"]
    study, data, machine = r["study"], r["study"]["data"], r["machine"]
    subsets = ", ".join(
        f"{key} {data[key]}" for key in ("train_subset", "validation_subset") if data.get(key)
    )
    test = retrain["test_accuracy"]
    reached = ""
    if r["target"] is not None:
        reached = (
            f" (target {r['target']:g}: {'reached' if test >= r['target'] else 'not reached'})"
        )
    packages = ", ".join(f"{k} {v}" for k, v in r["packages"].items())
    lines = [
        f"# Targets: {study['study']['name']}",
        "",
        f"`{r['command']}` on {r['date']}, commit {r['commit']}.",
        "",
        f"The {study['study']['space']} space on {data['dataset']}"
        + (f" ({subsets})" if subsets else "")
        + f", at most {study['trials']['max_epochs']} epochs per trial,"
        f" {r['budget_minutes']:g} minutes of search with {machine['cores']} workers x 1"
        " thread; chosen by validation alone, the test set evaluated once.",
        "",
        f"**Test accuracy {test:.4f}**{reached}: trial {retrain['trial']}, retrained for"
        f" {retrain['epochs']} epochs on the training split (validation accuracy"
        f" {retrain['validation_accuracy']:.4f}).",
        "",
        "| step | minutes | what |",
        "|---|---|---|",
        f"| search | {s['minutes']:.1f} | {s['trials']} trials: {s['complete']} complete,"
        f" {s['pruned']} pruned, {s['failed']} failed; {s['epochs']} epochs; best trial"
        f" {s['best']['number']} at {s['best']['value']:.4f} |",
        f"| re-evaluation | {reeval['minutes']:.1f} | the top {len(reeval['ranked'])} with"
        " other seeds (below) |",
        f"| retrain + test | {retrain['minutes']:.1f} | the winner, test set once |",
        "",
        "| rank by mean | trial | trial's val. accuracy | mean ± std over seeds | per seed |",
        "|---|---|---|---|---|",
    ]
    for rank, e in enumerate(reeval["ranked"], start=1):
        seeds = ", ".join(f"{v:.4f}" for v in e["val_accuracy"])
        lines.append(
            f"| {rank} | {e['number']} | {e['trial_value']:.4f} |"
            f" {e['mean']:.4f} ± {e['std']:.4f} | {seeds} |"
        )
    load = "; ".join(f"{step} {a:.1f} to {b:.1f}" for step, (a, b) in r["load"].items())
    lines += [
        "",
        f"Machine load (1-minute average, {machine['cores']} cores) at the start and end of"
        f" each step: {load}.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; packages: {packages}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
