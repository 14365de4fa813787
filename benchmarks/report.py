"""The benchmark's results as JSON, a Markdown page and plots in benchmarks/results/."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt

from benchmarks.efficiency import CONTESTANTS, THRESHOLDS

COLORS = {"search": "tab:blue", "hand": "tab:orange", "kerastuner": "tab:green"}
SEED_STYLES = ("-", "--", ":", "-.")
# Bare-fit speed change (after / before the trials) beyond which overhead ratios mean little.
DRIFT_TOLERANCE = 0.15


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    """Write benchmark.json, benchmark.md, best_over_time.png and storage.png; return the .md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    if "efficiency" in results:
        plot_best_over_time(
            results["efficiency"], results["settings"], out_dir / "best_over_time.png"
        )
    if "storage" in results:
        plot_storage(results["storage"], out_dir / "storage.png")
    path = out_dir / "benchmark.md"
    path.write_text(markdown(results))
    return path


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown page: one section per part, then the machine."""
    settings = results["settings"]
    lines = [
        "# Benchmarks",
        "",
        f"`{results['command']}` on {results['date']}, commit {results['commit']}:"
        f" {settings['budget_minutes']:g} minutes per contestant, {settings['seeds']}"
        f" seed{'s' * (settings['seeds'] > 1)}.",
        "",
        *(_efficiency(results["efficiency"], settings) if "efficiency" in results else []),
        *(
            _overhead(results["overhead"], results.get("efficiency", []))
            if "overhead" in results
            else []
        ),
        *(_storage(results["storage"]) if "storage" in results else []),
        *(_cores(results["cores"]) if "cores" in results else []),
        *_machine(results),
    ]
    return "\n".join(lines) + "\n"


def _efficiency(records: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    data, trials = settings["study"]["data"], settings["study"]["trials"]
    subsets = ", ".join(
        f"{key} {data[key]}" for key in ("train_subset", "validation_subset") if data[key]
    )
    loads = [load for r in records for load in r["load_average"]]
    kt = [r for r in records if r["contestant"] == "kerastuner"]
    optuna_runs = [r for r in records if r["contestant"] != "kerastuner"]
    optuna_note = kt_note = ""
    if optuna_runs:
        optuna_note = (
            f"Optuna contestants: {optuna_runs[0]['workers']} worker processes x 1 TensorFlow"
            " thread."
        )
    if kt:
        kt_note = (
            f"KerasTuner: one process with {kt[0]['threads_per_worker']} threads, as a Keras"
            " user runs it. Its trials started are models: the trials that continue a model"
            f" in a later round ({', '.join(str(r['trials_continued']) for r in kt)}) are not"
            " counted; pruned are its models left below max_epochs (not promoted, or still"
            " waiting for promotion when the time was up)."
        )
    lines = [
        "## 1. Search efficiency",
        "",
        f"The {settings['study']['study']['space']} space on {data['dataset']}"
        f" (validation_split {data['validation_split']},"
        f" split_seed {data['split_seed']}{', ' + subsets if subsets else ''}), at most"
        f" {trials['max_epochs']} epochs per trial, {settings['budget_minutes']:g} minutes of"
        " wall clock per contestant from its launch. A model counts from the end of its trial,"
        " with the best validation accuracy of its epochs; trials running when the time was up"
        " do not count. No contestant starts from the notebook's models.",
        "",
        "| contestant | seed | best val. accuracy | "
        + " | ".join(f"time to {t:g}" for t in THRESHOLDS)
        + " | trials started | pruned | full length | failed | epochs in ended trials |",
        "|---|---|---|" + "---|" * len(THRESHOLDS) + "---|---|---|---|---|",
    ]
    for r in records:
        times = [_minutes(r["seconds_to"][f"{t:g}"]) for t in THRESHOLDS]
        best = "none" if r["best"] is None else f"{r['best']:.4f}"
        lines.append(
            f"| {CONTESTANTS[r['contestant']]} | {r['seed']} | {best} | "
            + " | ".join(times)
            + f" | {r['trials_started']} | {r['trials_pruned']} | {r['trials_full']}"
            f" | {r['trials_failed']} | {r['epochs_in_finished_trials']} |"
        )
    lines += [
        "",
        "![best validation accuracy over time](best_over_time.png)",
        "",
        " ".join(filter(None, [optuna_note, kt_note]))
        + " Machine load (1-minute average) at the starts and ends of the runs:"
        f" {min(loads):.1f} to {max(loads):.1f}.",
        "",
    ]
    return lines


def _overhead(o: dict[str, Any], efficiency: list[dict[str, Any]]) -> list[str]:
    parallel = [
        s for r in efficiency if r["contestant"] == "search" for s in r["data_load_seconds"]
    ]
    outside = o["seconds_in_trial_outside_fit"]
    between = o["seconds_between_trials"]
    rows = [
        ("bare model.fit, train images/s", f"{o['bare_images_per_second']:.0f}"),
        ("a trial's fit, train images/s", f"{o['trial_fit_images_per_second']:.0f}"),
        ("trial fit throughput / bare fit throughput", f"{o['fit_ratio']:.3f}"),
        ("whole trial (start to end) / bare fit", f"{o['whole_trial_ratio']:.3f}"),
        ("seconds per trial outside fit (session, build, storage)", _mean(outside)),
        ("seconds between trials (sampling, budget checks)", _mean(between)),
        ("data loading, seconds per worker (1 worker)", _mean(o["data_load_seconds"])),
    ]
    drift = o.get("bare_drift")
    if drift is not None:
        rows.insert(
            2,
            (
                "bare fits after the trials / before (speed drift; 1 = steady)",
                f"{drift:.3f}" + ("" if abs(drift - 1) <= DRIFT_TOLERANCE else " (unsteady)"),
            ),
        )
    if parallel:
        workers = next(r["workers"] for r in efficiency if r["contestant"] == "search")
        rows.append(
            (
                f"data loading, seconds per worker ({workers} at once, part 1)",
                f"{_mean(parallel)} (max {max(parallel):.1f})",
            )
        )
    return [
        "## 2. Overhead",
        "",
        f"{o['trials']} trials of the notebook's model_b ({o['epochs']} epochs on"
        f" {o['n_train']} training images, 1 worker x {o['threads']} threads) against"
        f" {len(o['bare_fit_seconds'])} bare `model.fit` calls of the same model on the same"
        " data and threads, in a process of their own"
        + (" (half before the trials, half after)." if drift is not None else ".")
        + " Means over the trials.",
        "",
        *_unsteady(drift),
        "| measure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]


def _unsteady(drift: float | None) -> list[str]:
    if drift is None or abs(drift - 1) <= DRIFT_TOLERANCE:
        return []
    return [
        f"**The machine's speed changed during this part** (bare fits after the trials took"
        f" {drift:.2f}x as long as those before): the throughput ratios below are not a"
        " measure of overhead; run the part again on an otherwise idle machine.",
        "",
    ]


def _storage(s: dict[str, Any]) -> list[str]:
    backends = [b for b in ("sqlite", "postgresql") if "rows" in s[b]]
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    lines = [
        "## 3. Storage",
        "",
        f"Trials per second with a trivial objective (one param, one report, one attribute),"
        f" {s['seconds']:g} s per measurement, worker processes opening the storage as search"
        " workers do. Errors: exceptions from the storage (the goal is none).",
        "",
        "| workers | "
        + " | ".join(f"{names[b]} trials/s | {names[b]} errors" for b in backends)
        + " |",
        "|---|" + "---|---|" * len(backends),
    ]
    for i, n_workers in enumerate(s["workers"]):
        cells = []
        for b in backends:
            row = s[b]["rows"][i]
            errors = sum(row["errors"].values())
            detail = "; ".join(f"{n} x {e}" for e, n in row["errors"].items())
            cells += [f"{row['trials_per_second']:.1f}", f"{errors} {detail}".strip()]
        lines.append(f"| {n_workers} | " + " | ".join(cells) + " |")
    lines.append("")
    if "server_version" in s["postgresql"]:
        lines.append(f"PostgreSQL {s['postgresql']['server_version']}, a throwaway local server.")
    else:
        lines.append(f"PostgreSQL skipped: {s['postgresql']['skipped']}")
    return [*lines, "", "![trials per second by workers](storage.png)", ""]


def _cores(rows: list[dict[str, Any]]) -> list[str]:
    return [
        "## 4. Workers on cores",
        "",
        f"The notebook's model_b in trials of up to {rows[0]['max_epochs']} epochs on"
        f" {rows[0]['train_images_per_epoch']} training images, {rows[0]['minutes']:g} min of"
        " wall clock per layout from launch; the epochs trained in full by then.",
        "",
        "| layout | epochs | epochs per minute |",
        "|---|---|---|",
        *(
            f"| {r['workers']} worker{'s' * (r['workers'] > 1)} x {r['threads_per_worker']}"
            f" thread{'s' * (r['threads_per_worker'] > 1)} | {r['epochs']}"
            f" | {r['epochs_per_minute']:.1f} |"
            for r in rows
        ),
        "",
    ]


def _machine(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in results["packages"].items())
    return [
        "## Machine",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; {m['os']}; Python"
        f" {m['python']}. Packages: {packages}.",
        "",
    ]


def plot_best_over_time(
    records: list[dict[str, Any]], settings: dict[str, Any], path: Path
) -> None:
    """Best validation accuracy so far against minutes, one line per contestant and seed."""
    fig, ax = plt.subplots(figsize=(8, 5))
    budget = settings["budget_minutes"]
    finals = []
    for r in records:
        minutes, best = [], []
        for seconds, value in r["finished"]:
            minutes.append(seconds / 60)
            best.append(max(value, best[-1]) if best else value)
        if not best:
            continue
        finals.append(best[-1])
        ax.step(
            [*minutes, budget],
            [*best, best[-1]],
            where="post",
            color=COLORS[r["contestant"]],
            linestyle=SEED_STYLES[r["seed"] % len(SEED_STYLES)],
            label=f"{CONTESTANTS[r['contestant']]} (seed {r['seed']})",
        )
    for threshold in THRESHOLDS:
        ax.axhline(threshold, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlim(0, budget)
    # The race is near the thresholds; the first, poor models would squash it.
    ax.set_ylim(min(0.85, *finals) - 0.02, max(THRESHOLDS[-1], *finals) + 0.005)
    ax.set_xlabel("minutes since launch")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title("Conv space: best model found over time")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_storage(storage: dict[str, Any], path: Path) -> None:
    """Trials per second against worker processes, one line per storage."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for backend, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        if "rows" not in storage[backend]:
            continue
        rows = storage[backend]["rows"]
        ax.plot(
            [r["workers"] for r in rows],
            [r["trials_per_second"] for r in rows],
            marker="o",
            label=label,
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(storage["workers"], [str(n) for n in storage["workers"]])
    ax.set_xlabel("worker processes")
    ax.set_ylabel("trials per second")
    ax.set_title("Storage throughput, trivial objective")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _minutes(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds / 60:.1f} min"


def _mean(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f}"
