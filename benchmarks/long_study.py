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
PLOT = RESULTS / "long_study.png"
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
    from search.device import configure_threads
    from search.export import Export, export_best
    from search.retrain import reevaluate
    from search.storage import open_storage
    from search.study import load_definition

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
        "timeline": timeline(storage),
    }


def timeline(storage: Any) -> list[dict[str, Any]]:
    """Every trial: state, origin, value, size, and its start and end in minutes."""
    import optuna

    from search.record import TrialRecord

    trials = optuna.load_study(study_name="conv", storage=storage).get_trials(deepcopy=False)
    t0 = min(t.datetime_start for t in trials if t.datetime_start)
    minutes = lambda d: None if d is None else round((d - t0).total_seconds() / 60, 2)  # noqa: E731
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "origin": TrialRecord.of(t).origin,
            "value": t.value,
            "epochs": len(t.intermediate_values),
            "n_params": TrialRecord.of(t).n_params,
            "start_min": minutes(t.datetime_start),
            "end_min": minutes(t.datetime_complete),
        }
        for t in trials
    ]


def plot_timeline(record: dict[str, Any], path: Path) -> None:
    """Each finished trial's value at its end (by origin), and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in record["result"]["timeline"] if t["value"] is not None and t["end_min"]]
    done.sort(key=lambda t: t["end_min"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for origin in sorted({t["origin"] or "?" for t in done}):
        pts = [t for t in done if (t["origin"] or "?") == origin and t["state"] == "COMPLETE"]
        ax.scatter([t["end_min"] for t in pts], [t["value"] for t in pts], label=origin, s=25)
    best, xs, ys = None, [], []
    for t in done:
        if t["state"] == "COMPLETE" and (best is None or t["value"] > best):
            best = t["value"]
            xs.append(t["end_min"])
            ys.append(best)
    if xs:
        ax.step(xs + [60], ys + [ys[-1]], where="post", color="k", label="best so far")
    ax.axhline(0.925, ls=":", color="grey")
    ax.set_xlabel("minutes since the first trial started")
    ax.set_ylabel("validation accuracy (completed trials)")
    ax.set_ylim(max(0.85, min([t["value"] for t in done] + [0.9]) - 0.01), None)
    ax.legend(fontsize=8)
    ax.set_title("One conv study, 2 workers x 1 thread")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    if "timeline" in result:
        plot_timeline(record, PLOT)
        # Trials stopped at the deadline end FAIL and come back as WAITING retries.
        states = [t["state"] for t in result["timeline"] if t["state"] != "WAITING"]
        lines += [
            "",
            f"Trials: {len(states)} started, {states.count('COMPLETE')} complete,"
            f" {states.count('PRUNED')} pruned, {states.count('FAIL')} failed or stopped at"
            " the deadline.",
            "",
            f"![completed trials and the best so far]({PLOT.name})",
        ]
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
