"""Resident memory of a worker over many trials, with and without process recycling.

Runs the same 30-trial conv study twice with one worker: once in a single process, once
with `--max-trials-per-process K`. Each trial records its worker's RSS after training
(`worker_rss_mb`); this script tabulates them into benchmarks/results/worker_memory.{json,md}.

    .venv/bin/python benchmarks/worker_memory.py [--n-trials 30] [--recycle-every 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import optuna

from search.record import TrialRecord

RESULTS = Path(__file__).parent / "results"


def study_text(name: str, n_trials: int) -> str:
    return textwrap.dedent(
        f"""\
        [study]
        name = "{name}"
        space = "conv"
        seed = 0
        [data]
        dataset = "fashion_mnist"
        train_subset = 1000
        validation_subset = 500
        [trials]
        n_trials = {n_trials}
        max_epochs = 1
        sampler = "random"
        pruner = "none"
        """
    )


def measure(n_trials: int, recycle_every: int | None, workdir: Path) -> list[float]:
    name = f"memory-recycle-{recycle_every or 'off'}"
    study_file = workdir / f"{name}.toml"
    study_file.write_text(study_text(name, n_trials))
    storage = f"sqlite:///{workdir / 'memory.db'}"
    cmd = [
        sys.executable,
        "-m",
        "search",
        "run",
        str(study_file),
        "--workers",
        "1",
        "--threads",
        "1",
        "--storage",
        storage,
    ]
    if recycle_every:
        cmd += ["--max-trials-per-process", str(recycle_every)]
    subprocess.run(cmd, cwd=workdir, check=True)
    study = optuna.load_study(study_name=name, storage=storage)
    records = [TrialRecord.of(t) for t in study.get_trials()]
    return [r.worker_rss_mb for r in records if r.worker_rss_mb is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=30)
    parser.add_argument("--recycle-every", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        without = measure(args.n_trials, None, Path(tmp))
        with_recycling = measure(args.n_trials, args.recycle_every, Path(tmp))
    result = {
        "n_trials": args.n_trials,
        "recycle_every": args.recycle_every,
        "rss_mb_without_recycling": without,
        "rss_mb_with_recycling": with_recycling,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "worker_memory.json").write_text(json.dumps(result, indent=2))
    rows = [
        ("without recycling", without),
        (f"recycled every {args.recycle_every} trials", with_recycling),
    ]
    lines = [
        f"Worker RSS (MiB) after each of {args.n_trials} conv trials, 1 worker, 1 thread:",
        "",
        "| worker | after trial 1 | after trial 10 | after trial 20 | last | max |",
        "|---|---|---|---|---|---|",
    ]
    for label, rss in rows:
        pick = [rss[0], rss[min(9, len(rss) - 1)], rss[min(19, len(rss) - 1)], rss[-1], max(rss)]
        lines.append(f"| {label} | " + " | ".join(f"{v:.0f}" for v in pick) + " |")
    (RESULTS / "worker_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
