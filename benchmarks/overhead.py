"""Part 2, overhead: what a trial costs beyond training its model.

One worker runs a few trials of a fixed model (benchmarks.fixed_space, the notebook's
model_b) on the search data; a separate process fits the same model on the same data with
bare `model.fit` and the same threads, once before the trials and once after them, so that
a machine whose speed changes during the part shows as drift instead of as overhead (a
shared or throttled CPU did exactly that once). Compared: training throughput (train images per
second of fit, validation included in both), the time a trial spends outside fit
(clearing the session, building, storage writes) and between trials (sampling, budget
checks), and the worker's data loading time.
"""

from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from benchmarks.harness import (
    bench_env,
    run_search,
    study_trials,
    worker_load_seconds,
    write_study,
)
from search.record import TrialRecord

N_TRIALS = 3
# Enough epochs that a trial's fixed costs and its per-epoch costs both show.
EPOCHS = 2


def run_overhead(
    base: dict[str, dict[str, Any]], *, threads: int, workdir: Path
) -> dict[str, Any]:
    """Time trials of model_b against bare fits of it; return the measures and the ratios."""
    print(
        f"part 2: {N_TRIALS} trials of model_b between {N_TRIALS} bare fits before and after",
        flush=True,
    )
    sections = copy.deepcopy(base)
    sections["study"] |= {"name": "overhead", "space": "benchmarks.fixed_space"}
    sections["trials"] |= {
        "n_trials": N_TRIALS,
        "max_epochs": EPOCHS,
        "timeout_minutes": None,
        "sampler": "random",
        "pruner": "none",
        "enqueue_baselines": False,
    }
    study_file = write_study(workdir / "overhead.toml", sections)
    storage = f"sqlite:///{workdir / 'overhead.db'}"
    before = _run_bare(study_file, threads=threads, repeats=N_TRIALS)
    run_search(study_file, storage=storage, workers=1, threads=threads, cwd=workdir)
    trials = [t for t in study_trials("overhead", storage) if t.state == TrialState.COMPLETE]
    if len(trials) != N_TRIALS:
        raise RuntimeError(f"{len(trials)} of {N_TRIALS} overhead trials completed; see {workdir}")
    after = _run_bare(study_file, threads=threads, repeats=N_TRIALS)
    n_train = before["n_train"]
    bare = before["fit_seconds"] + after["fit_seconds"]
    fit = [TrialRecord.of(t).seconds for t in trials]
    whole = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    between = [
        (b.datetime_start - a.datetime_complete).total_seconds()
        for a, b in zip(trials, trials[1:], strict=False)
    ]
    images = n_train * EPOCHS
    bare_rate = images / statistics.mean(bare)
    return {
        "threads": threads,
        "trials": N_TRIALS,
        "epochs": EPOCHS,
        "n_train": n_train,
        "bare_fit_seconds": bare,
        # Bare fits after the trials over those before: 1 on a machine of constant speed.
        "bare_drift": statistics.mean(after["fit_seconds"])
        / statistics.mean(before["fit_seconds"]),
        "trial_fit_seconds": fit,
        "trial_seconds": whole,
        "bare_images_per_second": bare_rate,
        "trial_fit_images_per_second": images / statistics.mean(fit),
        "fit_ratio": statistics.mean(bare) / statistics.mean(fit),
        "whole_trial_ratio": statistics.mean(bare) / statistics.mean(whole),
        "seconds_in_trial_outside_fit": [w - f for w, f in zip(whole, fit, strict=True)],
        "seconds_between_trials": between,
        "data_load_seconds": worker_load_seconds(workdir, "overhead"),
    }


def _run_bare(study_file: Path, *, threads: int, repeats: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bare_fit", str(study_file)]
    cmd += ["--threads", str(threads), "--repeats", str(repeats)]
    out = subprocess.run(cmd, env=bench_env(), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"bare fit failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])
