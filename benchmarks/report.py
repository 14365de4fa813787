"""The benchmark's results as Markdown pages, JSON and plots in benchmarks/results/.

Part 1 (search efficiency, both datasets) is rebuilt from the records on disk into
efficiency.md and a plot per dataset; parts 2-4 go to benchmark.md and benchmark.json.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt

from benchmarks.efficiency import (
    CONTESTANTS,
    DISTURBED_LOAD,
    FOREIGN_CPU_SHARE,
    RECORDS_DIR,
    REFERENCE,
    SCALES,
    Scale,
    best_at,
    best_so_far,
    censored_median,
    load_records,
    median,
    scale_for,
    time_to,
)
from benchmarks.harness import UNBOUNDED_TRIALS

COLORS = {
    "search": "tab:blue",
    "centre": "tab:red",
    "notebook": "tab:purple",
    "tpe": "tab:brown",
    "random": "tab:orange",
    "kerastuner": "tab:green",
}
# Bare-fit speed change (after / before the trials) beyond which overhead ratios mean little.
DRIFT_TOLERANCE = 0.15
PLOT_NAME = "best_so_far.png"


def write_efficiency_report(out_dir: Path) -> Path:
    """Rebuild efficiency.md and each dataset's plot from every record under `out_dir`."""
    groups = load_records(out_dir)
    lines = [
        "# Search efficiency",
        "",
        "Part 1 of `make bench` (`python -m benchmarks.bench`, see benchmarks/README.md),"
        " rebuilt from its records: one JSON file per contestant and seed under"
        f" `{RECORDS_DIR}/<dataset>/`. Each run searches for the same wall-clock budget on"
        " the same machine, one run at a time, interleaved by seed. The clock starts at the"
        " launch of `search run` (start-up and data loading count). A validation accuracy"
        " counts from the end of the epoch that reached it, in every trial that started"
        " before the deadline, whether it completed, was pruned or was interrupted when the"
        " time was up.",
        "",
    ]
    if not groups:
        lines += ["No records yet.", ""]
    # The datasets of the default parts first, in their order; any other after them.
    order = [d for d in SCALES if d in groups] + [d for d in groups if d not in SCALES]
    for dataset in order:
        records = groups[dataset]
        image = Path(RECORDS_DIR) / dataset / PLOT_NAME
        lines += efficiency_section(dataset, records, image=image)
        kept = comparable(records)[0]
        plot_best_so_far(kept, scale_for(dataset), out_dir / image)
    path = out_dir / "efficiency.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def comparable(
    records: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split records into those made with the newest record's budget and data, and the rest.

    A rerun with --replace can leave seeds of an older budget beside new ones; they are
    listed, not mixed into the medians.
    """

    def key(r: dict[str, Any]) -> Any:
        study = r["settings"]["study"]
        return (
            r["settings"]["budget_minutes"],
            study["study"]["space"],
            study["data"],
            _base_epochs(r["settings"]),
        )

    target = key(max(records, key=lambda r: r["date"]))
    same = [r for r in records if key(r) == target]
    return same, [r for r in records if key(r) != target]


def efficiency_section(
    dataset: str, all_records: list[dict[str, Any]], *, image: Path
) -> list[str]:
    """One dataset's settings, table per seed with medians, comparison and plot."""
    scale = scale_for(dataset)
    records, other = comparable(all_records)
    budget_minutes = records[0]["settings"]["budget_minutes"]
    budget = budget_minutes * 60
    checkpoints = [m for m in scale.checkpoints if m < budget_minutes] + [budget_minutes]
    contestants = [c for c in CONTESTANTS if any(r["contestant"] == c for r in records)]
    header = (
        ["contestant", "seed"]
        + [f"best at {m:g} min" for m in checkpoints]
        + [f"time to {t:g}" for t in scale.thresholds]
        + ["trials started", "pruned", "load at start"]
    )
    lines = [
        f"## {scale.title}",
        "",
        _settings_text(records, budget_minutes),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in records:
        cells = [r["contestant"], str(r["seed"]) + (" (disturbed)" if r["disturbed"] else "")]
        cells += [_value(best_at(r["points"], m * 60)) for m in checkpoints]
        cells += [_minutes(time_to(r["points"], t)) for t in scale.thresholds]
        cells += [
            str(r["trials_started"]),
            str(r.get("trials_pruned", "—")),
            f"{r['load_average']['start'][0]:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for contestant in contestants:
        mine = [r for r in records if r["contestant"] == contestant]
        cells = [f"**{contestant}, median**", f"{len(mine)} seed{'s' * (len(mine) > 1)}"]
        cells += [_value(_median_best(mine, m * 60)) for m in checkpoints]
        cells += [
            _censored(*censored_median([time_to(r["points"], t) for r in mine], budget), budget)
            for t in scale.thresholds
        ]
        cells += [_number(median([r["trials_started"] for r in mine])), "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_comparison(records, scale, budget), f"![best so far over time]({image})", ""]
    lines += _notes(records, other)
    return lines


def _base_epochs(settings: dict[str, Any]) -> int:
    """The base study's epochs per trial (records made before a contestant could train its
    own epochs have only the study's)."""
    return settings.get("base_max_epochs", settings["study"]["trials"]["max_epochs"])


def _settings_text(records: list[dict[str, Any]], budget_minutes: float) -> str:
    by = {r["contestant"]: r["settings"] for r in records}
    any_settings = next(iter(by.values()))
    study = any_settings["study"]
    epochs = _base_epochs(any_settings)
    data = study["data"]
    subsets = ", ".join(
        f"{key} {data[key]}" for key in ("train_subset", "validation_subset") if data.get(key)
    )
    parts = [
        f"The {study['study']['space']} space on `{data['dataset']}` (validation_split"
        f" {data['validation_split']}, split_seed {data['split_seed']}"
        f"{', ' + subsets if subsets else ''}), at most {epochs} epochs"
        f" per trial, {budget_minutes:g} min of wall clock per run; the study's seed is the"
        " run's seed."
    ]
    for contestant, settings in by.items():
        trials = settings["study"]["trials"]
        layout = (
            f"{settings['workers']} worker{'s' * (settings['workers'] > 1)} x"
            f" {settings['threads_per_worker']} thread{'s' * (settings['threads_per_worker'] > 1)}"
        )
        if contestant == "kerastuner":
            how = layout
        else:
            how = (
                f"sampler {trials['sampler']}, pruner {trials['pruner']},"
                f" prior {str(trials.get('prior', True)).lower()}"
            )
            if trials.get("enqueue_baselines"):
                how += f", the space's {trials['n_trials']} baselines in order and nothing else"
            elif trials["n_trials"] < UNBOUNDED_TRIALS:
                how += f", {trials['n_trials']} trial{'s' * (trials['n_trials'] > 1)}"
            if trials["max_epochs"] != epochs:
                how += f", at most {trials['max_epochs']} epochs per trial"
            how += f"; {layout}"
        plan = CONTESTANTS.get(contestant)
        parts.append(f"`{contestant}` ({plan.description if plan else contestant}): {how}.")
    return " ".join(parts)


def _comparison(records: list[dict[str, Any]], scale: Scale, budget: float) -> list[str]:
    """The service's lift over `centre` (the headline), then `search` against each other."""
    by_seed = _by_seed(records)
    lines = [*_lift(by_seed, budget), ""]
    others = [c for c in CONTESTANTS if c != "search" and any(c in runs for runs in by_seed)]
    rows = [_against(by_seed, c, scale, budget) for c in others]
    rows = [row for row in rows if row is not None]
    if not rows:
        return lines
    header = ["against", "paired seeds", f"median best at {budget / 60:g} min: theirs, search"]
    header.append("search minus theirs, per seed (median)")
    if scale.ratio_threshold is not None:
        t = scale.ratio_threshold
        header.append(f"median time to {t:g}: theirs, search (search / theirs)")
    if scale.reach is not None:
        value, minutes = scale.reach
        header.append(f"seeds that reached {value:g} within {minutes:g} min: theirs, search")
    lines += [
        "`search` against each contestant, over the seeds both ran:",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *rows,
        "",
    ]
    return lines


def _by_seed(records: list[dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """Per seed, the records by contestant."""
    seeds = sorted({r["seed"] for r in records})
    return [{r["contestant"]: r for r in records if r["seed"] == seed} for seed in seeds]


def _lift(by_seed: list[dict[str, dict[str, Any]]], budget: float) -> list[str]:
    """The headline: per paired seed, search's best at the budget minus centre's."""
    pairs = [runs for runs in by_seed if "search" in runs and REFERENCE in runs]
    if not pairs:
        return [f"No seed has records of both `search` and `{REFERENCE}` yet: no lift to report."]
    lifts = [
        (runs["search"]["seed"], _difference(runs["search"], runs[REFERENCE], budget))
        for runs in pairs
    ]
    known = [lift for _, lift in lifts if lift is not None]
    per_seed = ", ".join(f"{_signed(lift)} (seed {seed})" for seed, lift in lifts)
    n = len(pairs)
    return [
        f"**The service's lift over `{REFERENCE}`** (the prior's centre trained alone: what a"
        f" user gets without a search), best at {budget / 60:g} min, `search` minus"
        f" `{REFERENCE}`, over the {n} seed{'s' * (n > 1)} both ran: {per_seed}; median"
        f" **{_signed(median(known))}**."
    ]


def _against(
    by_seed: list[dict[str, dict[str, Any]]], other: str, scale: Scale, budget: float
) -> str | None:
    """One row of the comparison: `search` against `other` over their paired seeds."""
    pairs = [(r["search"], r[other]) for r in by_seed if "search" in r and other in r]
    if not pairs:
        return None
    mine, theirs = [s for s, _ in pairs], [o for _, o in pairs]
    differences = [d for s, o in pairs if (d := _difference(s, o, budget)) is not None]
    best = f"{_value(_median_best(theirs, budget))}, {_value(_median_best(mine, budget))}"
    difference = (
        ", ".join(_signed(_difference(s, o, budget)) for s, o in pairs)
        + f" ({_signed(median(differences))})"
    )
    if other == "random" and scale.best_margin is not None and differences:
        ok = median(differences) >= scale.best_margin
        difference += f"; asked: >= {scale.best_margin:+.3f}: {'yes' if ok else 'no'}"
    cells = [f"`{other}`", str(len(pairs)), best, difference]
    if scale.ratio_threshold is not None:
        t = scale.ratio_threshold
        o, o_never = censored_median([time_to(r["points"], t) for r in theirs], budget)
        s, s_never = censored_median([time_to(r["points"], t) for r in mine], budget)
        cells.append(
            f"{_censored(o, o_never, budget)}, {_censored(s, s_never, budget)}"
            f" ({_ratio(s, s_never, o, o_never)})"
        )
    if scale.reach is not None:
        value, minutes = scale.reach
        counts = [
            sum((time_to(r["points"], value) or float("inf")) <= minutes * 60 for r in rs)
            for rs in (theirs, mine)
        ]
        cells.append(f"{counts[0]} of {len(pairs)}, {counts[1]} of {len(pairs)}")
    return "| " + " | ".join(cells) + " |"


def _difference(mine: dict[str, Any], theirs: dict[str, Any], budget: float) -> float | None:
    """Best at the budget, one run minus another (None: either has no value)."""
    a, b = best_at(mine["points"], budget), best_at(theirs["points"], budget)
    return None if a is None or b is None else a - b


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


def _notes(records: list[dict[str, Any]], other: list[dict[str, Any]]) -> list[str]:
    loads = [
        x for r in records for x in (r["load_average"]["start"][0], r["load_average"]["end"][0])
    ]
    disturbed = [f"{r['contestant']} seed {r['seed']}" for r in records if r["disturbed"]]
    commits = sorted({r["commit"] for r in records})
    commands = sorted({r["command"] for r in records})
    notes = [
        f"Machine load (1-minute average) at the starts and ends of the runs: {min(loads):.2f}"
        f" to {max(loads):.2f}. A run is marked disturbed (the machine was not alone) when the"
        f" load was above {DISTURBED_LOAD} at its start or, in records that measure it, other"
        f" programs took more than {FOREIGN_CPU_SHARE:.0%} of the CPU time during it"
        + (f": {', '.join(disturbed)}." if disturbed else "; none was."),
        f"Commit{'s' * (len(commits) > 1)}: {', '.join(commits)}. Made by: "
        + "; ".join(f"`{c}`" for c in commands)
        + ".",
    ]
    renamed = [r for r in records if r.get("renamed_from")]
    if renamed:
        notes.append(
            "Measured under an earlier name and renamed, not rerun: "
            + ", ".join(
                f"{r['contestant']} seed {r['seed']} (`{r['renamed_from']}`)" for r in renamed
            )
            + "."
        )
    if other:
        notes.append(
            "Left out, made with other settings (budget, data or epochs): "
            + ", ".join(f"{r['contestant']} seed {r['seed']}" for r in other)
            + "."
        )
    return [" ".join(notes), ""]


def plot_best_so_far(records: list[dict[str, Any]], scale: Scale, path: Path) -> None:
    """Every run's best value so far against minutes: thin per seed, thick the median."""
    if not records:
        return
    budget = records[0]["settings"]["budget_minutes"]
    grid = np.linspace(0, budget * 60, 600)
    fig, ax = plt.subplots(figsize=(8, 5))
    shown: list[float] = []
    for contestant in CONTESTANTS:
        mine = [r for r in records if r["contestant"] == contestant]
        if not mine:
            continue
        color = COLORS.get(contestant)
        curves = []
        for r in mine:
            steps = best_so_far(r["points"])
            curves.append(_on_grid(steps, grid))
            if not steps:
                continue
            times = [s / 60 for s, _ in steps] + [budget]
            values = [v for _, v in steps] + [steps[-1][1]]
            ax.step(times, values, where="post", color=color, linewidth=0.8, alpha=0.55)
        # A seed with no value yet is lowest, so the median shows once most seeds have one.
        middle = np.median(np.nan_to_num(np.array(curves), nan=-np.inf), axis=0)
        middle[~np.isfinite(middle)] = np.nan
        ax.plot(
            grid / 60,
            middle,
            color=color,
            linewidth=2.5,
            label=f"{contestant}: median of {len(mine)} seed{'s' * (len(mine) > 1)}",
        )
        # The race is at the top: the limits follow the medians' second half (all of
        # them if they start later), so the first, poor models don't squash it.
        finite = [float(v) for v in middle if np.isfinite(v)]
        later = [float(v) for v in middle[len(grid) // 2 :] if np.isfinite(v)]
        shown += later if len(later) > len(grid) // 4 else finite
    for threshold in scale.thresholds:
        ax.axhline(threshold, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlim(0, budget)
    if shown:
        low = min([*shown, *scale.thresholds]) - 0.01
        high = max([*shown, *scale.thresholds]) + 0.005
        top = max((v for r in records for _, v in r["points"]), default=high)
        ax.set_ylim(max(0.0, low), min(1.0, max(high, top + 0.003)))
    ax.set_xlabel("minutes since launch")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(f"{scale.title}: best value so far (thin: a seed; thick: the median)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _on_grid(steps: list[tuple[float, float]], grid: np.ndarray) -> np.ndarray:
    """A best-so-far step curve at the grid's times (NaN before its first value)."""
    if not steps:
        return np.full(len(grid), np.nan)
    times = np.array([s for s, _ in steps])
    values = np.array([v for _, v in steps])
    index = np.searchsorted(times, grid, side="right") - 1
    return np.where(index >= 0, values[np.maximum(index, 0)], np.nan)


def _median_best(records: list[dict[str, Any]], seconds: float) -> float | None:
    return median([b for r in records if (b := best_at(r["points"], seconds)) is not None])


def _value(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def _minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min"


def _censored(seconds: float, never: bool, budget: float) -> str:
    """A median time; one resting on runs that never reached is a bound."""
    if not never:
        return _minutes(seconds)
    if seconds >= budget:
        return f">{budget / 60:g} min (budget)"
    return f">= {seconds / 60:.1f} min"


def _ratio(s: float, s_never: bool, o: float, o_never: bool) -> str:
    """search's median time over another's; either may rest on the budget."""
    if s_never and o_never:
        return "— (neither median reached it)"
    # A median that rests on the budget is a lower bound of the true time.
    bound = "<= " if o_never else ">= " if s_never else ""
    return f"{bound}{s / o:.2f}"


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    """Write benchmark.json, benchmark.md and storage.png for parts 2-4; return the .md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    if "storage" in results:
        plot_storage(results["storage"], out_dir / "storage.png")
    path = out_dir / "benchmark.md"
    path.write_text(markdown(results))
    return path


def markdown(results: dict[str, Any]) -> str:
    """Parts 2-4 as a Markdown page, then the machine; part 1 has efficiency.md."""
    lines = [
        "# Benchmarks",
        "",
        f"`{results['command']}` on {results['date']}, commit {results['commit']}.",
        "Part 1, search efficiency, is in [efficiency.md](efficiency.md).",
        "",
        *(
            _overhead(results["overhead"], results.get("part1_load_seconds", []))
            if "overhead" in results
            else []
        ),
        *(_storage(results["storage"]) if "storage" in results else []),
        *(_cores(results["cores"]) if "cores" in results else []),
        *_machine(results),
    ]
    return "\n".join(lines) + "\n"


def _overhead(o: dict[str, Any], parallel: list[dict[str, Any]]) -> list[str]:
    """Part 2; `parallel`: data loading of part 1's `search` runs (seconds, workers)."""
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
        seconds = [x for p in parallel for x in p["seconds"]]
        rows.append(
            (
                f"data loading, seconds per worker ({parallel[0]['workers']} at once, part 1)",
                f"{_mean(seconds)} (max {max(seconds):.1f})",
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


def _mean(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f}"
