"""One conv study for its full 60 minutes: does the search improve on the prior's centre?

Runs `search run studies/conv.toml --workers 2` (2 workers x 1 thread, the study's own
60-minute limit) in a scratch folder, then re-evaluates the best trial and the prior's
centre (trial 0) with 2 other seeds each on the validation split (`search.retrain.reevaluate`;
the test set is not read). Writes benchmarks/results/long_study.{json,md}. Resumable: a rerun
resumes the study where it stopped (its storage is kept in --workdir) and skips the
re-evaluation once recorded.

    python -m benchmarks.long_study [--workdir /tmp/long-study]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, describe_machine, git_commit, load_average, write_json_atomic

RESULTS = REPO / "benchmarks" / "results"
RECORD = RESULTS / "long_study.json"
REPORT = RESULTS / "long_study.md"
STUDY = REPO / "studies" / "conv.toml"
SEEDS = 2


def run_study(workdir: Path) -> None:
    env = os.environ | {"SEARCH_STORAGE": f"sqlite:///{workdir / 'search.db'}"}
    subprocess.run(
        [sys.executable, "-m", "search", "run", str(STUDY), "--workers", "2"],
        cwd=workdir,
        env=env,
        check=True,
    )


def reevaluate_best_and_centre(workdir: Path) -> dict[str, Any]:
    from search.export import Export, export_best
    from search.retrain import reevaluate
    from search.storage import open_storage
    from search.study import load_definition
    from search.worker import configure_threads

    configure_threads(1)
    storage = open_storage(f"sqlite:///{workdir / 'search.db'}")
    definition = load_definition("conv", storage, wait_seconds=0)
    bundle = export_best("conv", storage, top=1000)
    ranked = bundle["trials"]
    chosen = [ranked[0]] + [e for e in ranked[1:] if e["number"] == 0]
    bundle = bundle | {"trials": chosen}
    export = Export(workdir / "best-and-centre.json", bundle, definition)
    done = reevaluate(export, n_seeds=SEEDS, jobs=2, threads=1)
    return {
        "best_trial": ranked[0]["number"],
        "best_is_centre": ranked[0]["number"] == 0,
        "trials": [
            {
                "number": e["number"],
                "origin": e.get("origin"),
                "value": e["value"],
                "best_epoch": e["best_epoch"],
                "n_params": e.get("n_params"),
                "reevaluation": e["reevaluation"],
            }
            for e in done["trials"]
        ],
        "completed_trials": len(ranked),
    }


def write_report(record: dict[str, Any]) -> None:
    result = record["result"]
    lines = [
        "# One conv study for 60 minutes",
        "",
        f"`python -m benchmarks.long_study`, commit {record['commit']}: `search run"
        " studies/conv.toml --workers 2` (2 workers x 1 thread, its own 60-minute limit),"
        f" load average {record['load_at_start']:.2f} at the start; {result['completed_trials']}"
        " trials completed. The best trial and the prior's centre (trial 0), each retrained"
        f" with {SEEDS} other seeds for its best epoch, scored on the validation split:",
        "",
        "| trial | origin | params | its value (best epoch) | other seeds | mean |",
        "|---|---|---|---|---|---|",
    ]
    for t in result["trials"]:
        r = t["reevaluation"]
        lines.append(
            f"| {t['number']} | {t['origin']} | {t['n_params']:,} | {t['value']:.4f}"
            f" ({t['best_epoch']}) | {', '.join(f'{v:.4f}' for v in r[r['metric']])} |"
            f" {r['mean']:.4f} |"
        )
    verdict = (
        "The best trial is the prior's centre."
        if result["best_is_centre"]
        else f"The best trial is #{result['best_trial']}, not the prior's centre."
    )
    lines += ["", verdict]
    REPORT.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/long-study"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    if "result" not in record:
        record = {
            "commit": git_commit(),
            "machine": describe_machine(),
            "load_at_start": load_average()[0],
        }
        run_study(args.workdir)
        record["result"] = reevaluate_best_and_centre(args.workdir)
        write_json_atomic(RECORD, record)
    write_report(record)
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
