"""Normalized regret and mean rank over simulated time, from the LCBench records.

Regret at a time is (best - incumbent) / (best - worst): the incumbent is the best
validation accuracy reported so far, best and worst the task's random sample's best and
worst after 52 epochs (`out.reference.json`). Before a run's first epoch ends its regret is
1; it can fall below 0 (a search beat the sample) or rise above 1 (an early epoch below the
sample's worst final value). Ranks are among the contestants on the same task, seed and
prior (1 = lowest regret, ties share the mean rank), then averaged.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.lcbench.bench import ANY_PRIOR, ROOT, Settings, read_runs, records_path

N_GRID = 50
LOWEST_BUDGET = 0.1  # full trials' worth: the plots start here


def summarize(settings: Settings, *, command: str, wall_seconds: float | None) -> dict[str, Any]:
    """The summary of the records the settings ask for (complete (task, seed) pairs only)."""
    from benchmarks.lcbench.contestants import CONTESTANTS, USES_PRIOR

    reference = json.loads(settings.out.with_suffix(".reference.json").read_text())["tasks"]
    # The runs these settings ask for (a file may hold more: other tasks, seeds, contestants).
    records = {
        (r["contestant"], r["prior"], r["task"], r["seed"]): r
        for r in read_runs(records_path(settings), settings)
        if r["task"] in settings.tasks
        and r["seed"] < settings.n_seeds
        and r["contestant"] in settings.contestants
    }
    top = max(settings.budgets)
    grid = np.unique(np.concatenate([np.geomspace(LOWEST_BUDGET, top, N_GRID), settings.budgets]))
    priors: dict[str, Any] = {}
    for prior in settings.priors:
        names = list(settings.contestants)
        cases = [
            (task, seed)
            for task in settings.tasks
            for seed in range(settings.n_seeds)
            if all(_record_key(n, prior, task, seed, USES_PRIOR) in records for n in names)
        ]
        if not cases:
            continue
        regret = np.array(
            [
                [
                    _regret(
                        records[_record_key(n, prior, task, seed, USES_PRIOR)],
                        reference[task],
                        grid,
                    )
                    for task, seed in cases
                ]
                for n in names
            ]
        )  # (contestant, case, grid)
        ranks = _ranks(regret)
        at = [int(np.searchsorted(grid, b)) for b in settings.budgets]
        priors[prior] = {
            "n_cases": len(cases),
            "n_tasks": len({task for task, _ in cases}),
            "contestants": {
                n: {
                    "mean_regret": regret[i].mean(axis=0).round(4).tolist(),
                    "mean_rank": ranks[i].mean(axis=0).round(3).tolist(),
                    "at_budgets": {
                        str(b): {
                            "mean_regret": round(float(regret[i, :, j].mean()), 4),
                            "median_regret": round(float(np.median(regret[i, :, j])), 4),
                            "mean_rank": round(float(ranks[i, :, j].mean()), 3),
                        }
                        for b, j in zip(settings.budgets, at, strict=True)
                    },
                    "mean_trials": round(
                        float(
                            np.mean(
                                [
                                    records[_record_key(n, prior, t, s, USES_PRIOR)]["n_trials"]
                                    for t, s in cases
                                ]
                            )
                        ),
                        1,
                    ),
                }
                for i, n in enumerate(names)
            },
        }
    return {
        "command": command,
        "commit": _commit(),
        "wall_seconds": wall_seconds,
        "compute_seconds": round(sum(r["wall_seconds"] for r in records.values()), 1),
        "n_runs": len(records),
        "settings": {
            "tasks": list(settings.tasks),
            "n_seeds": settings.n_seeds,
            "n_workers": settings.n_workers,
            "budgets": list(settings.budgets),
            "n_reference": settings.n_reference,
            "n_jobs": settings.n_jobs,
        },
        "contestants": {n: CONTESTANTS[n] for n in settings.contestants},
        "grid_full_trials": grid.round(4).tolist(),
        "priors": priors,
    }


def _record_key(
    name: str, prior: str, task: str, seed: int, uses_prior: tuple[str, ...]
) -> tuple[str, str, str, int]:
    return (name, prior if name in uses_prior else ANY_PRIOR, task, seed)


def _regret(record: dict[str, Any], task: dict[str, Any], grid: np.ndarray) -> np.ndarray:
    best = np.array(record["best"], dtype=float).reshape(-1, 2)
    when = best[:, 0] * record["n_workers"] / task["full_trial_seconds"]
    # The incumbent at each grid point: the last improvement at or before it.
    index = np.searchsorted(when, grid, side="right") - 1
    incumbent = np.where(index >= 0, best[np.maximum(index, 0), 1], np.nan)
    regret = (task["best"] - incumbent) / (task["best"] - task["worst"])
    return np.where(np.isnan(regret), 1.0, regret)


def _ranks(regret: np.ndarray) -> np.ndarray:
    """Each contestant's rank along axis 0, ties sharing the mean of their ranks."""
    lower = (regret[None, :] < regret[:, None]).sum(axis=1)
    equal = (regret[None, :] == regret[:, None]).sum(axis=1)
    return 1 + lower + (equal - 1) / 2


def _commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "benchmarks/lcbench", "search", "studies"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return result.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def write_report(summary: dict[str, Any], out: Path) -> None:
    """`out.json`, `out.md` and `out.png` (regret and rank over time, one column per prior)."""
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    _plot(summary, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(_markdown(summary, out.with_suffix(".png").name))


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    priors = summary["priors"]
    grid = summary["grid_full_trials"]
    fig, axes = plt.subplots(
        2, len(priors), figsize=(5 * len(priors), 8), squeeze=False, sharex=True
    )
    for column, (prior, result) in enumerate(priors.items()):
        for name, curves in result["contestants"].items():
            style = {"linewidth": 2.5, "color": "black"} if name == "service" else {}
            axes[0, column].plot(grid, curves["mean_regret"], label=name, **style)
            axes[1, column].plot(grid, curves["mean_rank"], label=name, **style)
        axes[0, column].set_title(f"prior: {prior} ({result['n_cases']} task-seed pairs)")
        # Logarithmic down to 0.01, linear below: regret can fall below 0.
        axes[0, column].set_yscale("symlog", linthresh=0.01)
        axes[0, column].set_ylabel("mean normalized regret")
        axes[1, column].set_ylabel("mean rank")
        axes[1, column].set_xlabel("simulated time (full trials' worth, 4 workers)")
        for row in (0, 1):
            axes[row, column].set_xscale("log")
            axes[row, column].grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(summary: dict[str, Any], plot: str) -> str:
    s = summary["settings"]
    budgets = [str(b) for b in s["budgets"]]
    lines = [
        "# LCBench by simulation: the search strategy at hundreds of trials",
        "",
        f"Command: `{summary['command']}`  ",
        f"Commit: {summary['commit']}  ",
        f"{summary['n_runs']} runs: {len(s['tasks'])} tasks x {s['n_seeds']} seeds"
        f" (0-{s['n_seeds'] - 1}),"
        f" {s['n_workers']} simulated workers, budgets of {', '.join(budgets)} full trials'"
        f" worth of time; the random sample that normalizes regret has {s['n_reference']}"
        " configs per task.  ",
        f"Compute: the runs' own wall-clock seconds, summed, {summary['compute_seconds']:.0f} s"
        + (
            f"; this command took {summary['wall_seconds']:.0f} s of wall clock"
            f" with {s['n_jobs']} processes."
            if summary["wall_seconds"] is not None
            else "."
        ),
        "",
        "| contestant | what it runs |",
        "|---|---|",
        *(f"| `{n}` | {what} |" for n, what in summary["contestants"].items()),
        "",
        "Each cell: mean normalized regret over task-seed pairs (lower is better), then the mean"
        " rank among the contestants (1 is best) in brackets. A budget is simulated wall-clock"
        " time: B full trials' worth is the time the workers take to train B full trials"
        " (52 epochs) of the task's median cost. Seed s seeds every contestant, so the Optuna"
        " contestants' random start-ups draw the same configs: at the smallest budget they"
        " often tie.",
    ]
    for prior, result in summary["priors"].items():
        lines += [
            "",
            f"## Prior: {prior} ({result['n_cases']} task-seed pairs, {result['n_tasks']} tasks)",
            "",
            "| contestant | "
            + " | ".join(f"{b} full trial{'s' * (b != '1')}" for b in budgets)
            + " | trials |",
            "|---|" + "---|" * (len(budgets) + 1),
        ]
        for name, c in result["contestants"].items():
            cells = [
                f"{c['at_budgets'][b]['mean_regret']:.4f} ({c['at_budgets'][b]['mean_rank']:.2f})"
                for b in budgets
            ]
            lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {c['mean_trials']} |")
        if "service" in result["contestants"]:
            places = []
            for b in budgets:
                ranks = [c["at_budgets"][b]["mean_rank"] for c in result["contestants"].values()]
                own = result["contestants"]["service"]["at_budgets"][b]["mean_rank"]
                # Its place: 1 + the contestants with a strictly better mean rank.
                place = 1 + sum(rank < own for rank in ranks)
                tied = " (tied)" if ranks.count(own) > 1 else ""
                places.append(f"{place}{tied} of {len(ranks)} at {b}")
            lines += ["", f"`service` by mean rank: {', '.join(places)}."]
    lines += ["", f"![regret and rank over time]({plot})", ""]
    return "\n".join(lines)
