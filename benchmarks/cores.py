"""Part 4, workers on cores: one worker with all threads against one worker per core.

Both layouts run `search run` on the same fixed model (benchmarks.fixed_space, the
notebook's model_b) in short trials, on the quick study's data sizes so epochs are short
enough to count, for the same wall-clock time from launch (start-up and data loading
count). An epoch counts if it was trained in full before the time was up.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    UNBOUNDED_TRIALS,
    completed_epochs,
    run_search,
    study_trials,
    write_study,
)

# Short trials, so that each trial's fixed costs are paid as often as in a pruned search.
EPOCHS = 3
TRAIN_SUBSET = 6000
VALIDATION_SUBSET = 3000


def run_cores(base: dict[str, dict[str, Any]], *, minutes: float, workdir: Path) -> list[dict]:
    """Epochs per minute of 1 worker x all threads and of one 1-thread worker per core."""
    cores = os.cpu_count() or 1
    rows = []
    for workers, threads in ((1, cores), (cores, 1)):
        print(f"part 4: {workers} x {threads} (workers x threads), {minutes:g} min", flush=True)
        name = f"cores-{workers}x{threads}"
        sections = copy.deepcopy(base)
        sections["study"] |= {"name": name, "space": "benchmarks.fixed_space"}
        sections["data"] |= {
            "train_subset": TRAIN_SUBSET,
            "validation_subset": VALIDATION_SUBSET,
        }
        sections["trials"] |= {
            "n_trials": UNBOUNDED_TRIALS,
            "max_epochs": EPOCHS,
            "timeout_minutes": minutes,
            "sampler": "random",
            "pruner": "none",
            "enqueue_baselines": False,
        }
        study_file = write_study(workdir / f"{name}.toml", sections)
        storage = f"sqlite:///{workdir / (name + '.db')}"
        run_search(
            study_file,
            storage=storage,
            workers=workers,
            threads=threads,
            cwd=workdir,
            budget_seconds=minutes * 60,
        )
        epochs = sum(completed_epochs(t) for t in study_trials(name, storage))
        rows.append(
            {
                "workers": workers,
                "threads_per_worker": threads,
                "minutes": minutes,
                "epochs": epochs,
                "epochs_per_minute": epochs / minutes,
                "max_epochs": EPOCHS,
                "train_images_per_epoch": TRAIN_SUBSET,
            }
        )
    return rows
