"""What checkpoints cost and what they save, on the conv prior's centre over Fashion-MNIST.

Three measurements, each written to benchmarks/results/checkpoints.json as it finishes (a rerun
skips those done; `--redo` starts again):

1. throughput: the centre trained for `--epochs` epochs on the full 48,000/12,000 split by one
   `search worker`, with checkpoints (the default, a folder) and without (`--checkpoints
   none`), alternating, `--pairs` pairs; compared by the trial's training seconds (its
   `seconds`: the fit, every checkpoint written in it included).
2. kill: the centre for the conv study's 12 epochs on the full split; the worker is SIGKILLed
   halfway through epoch `--kill-epoch`, a new worker resumes the retry; the epochs trained in
   all (the killed attempt's finished ones, the one it was in, the retry's) against the trial's.
3. disk: the size of one checkpoint and one kept model of the centre, and the peak of the
   checkpoint folder over a 20-trial conv study on a small subset with 2 workers (the files'
   sizes depend on the configs, not on the data), and what it holds at the end.

    python -m benchmarks.checkpoints [--pairs 3] [--epochs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    REPO,
    describe_machine,
    git_commit,
    load_average,
    write_json_atomic,
    write_study,
)
from search.record import TrialRecord

RESULTS = REPO / "benchmarks" / "results"
RECORD = RESULTS / "checkpoints.json"
REPORT = RESULTS / "checkpoints.md"
SEARCH = [sys.executable, "-m", "search"]


def sections(name: str, *, epochs: int, n_trials: int = 1, subset: bool = False) -> dict:
    data: dict[str, Any] = {"dataset": "fashion_mnist", "validation_split": 0.2, "split_seed": 0}
    if subset:
        data |= {"train_subset": 2000, "validation_subset": 1000}
    return {
        "study": {"name": name, "space": "conv", "seed": 0, "metric": "val_accuracy"},
        "data": data,
        "trials": {
            "n_trials": n_trials,
            "max_epochs": epochs,
            "sampler": "tpe",
            "pruner": "none" if n_trials == 1 else "successive_halving",
            "prior": True,
        },
    }


def _env(workdir: Path, checkpoints: str) -> dict[str, str]:
    return os.environ | {
        "SEARCH_STORAGE": f"sqlite:///{workdir / 'checkpoints.db'}",
        "SEARCH_CHECKPOINTS": checkpoints,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def _trials(workdir: Path, name: str) -> list[Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{workdir / 'checkpoints.db'}"
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def measure_throughput(workdir: Path, name: str, *, epochs: int, threads: int, on: bool) -> dict:
    study = write_study(workdir / f"{name}.toml", sections(name, epochs=epochs))
    env = _env(workdir, str(workdir / "store") if on else "none")
    start = time.monotonic()
    subprocess.run([*SEARCH, "worker", str(study), "--threads", str(threads)], env=env, check=True)
    (trial,) = _trials(workdir, name)
    return {
        "checkpoints": on,
        "seconds": TrialRecord.of(trial).seconds,
        "epoch_seconds": TrialRecord.of(trial).epoch_seconds,
        "wall_seconds": round(time.monotonic() - start, 1),
        "load_at_start": load_average()[0],
    }


def measure_kill(workdir: Path, *, kill_epoch: int, threads: int) -> dict:
    """Kill the worker halfway through `kill_epoch`; resume; count the epochs trained."""
    from search.checkpoints import FolderStore, checkpoint_key, kept_key, load_checkpoint

    name = f"kill-{time.time_ns()}"
    epochs = 12
    study = write_study(workdir / f"{name}.toml", sections(name, epochs=epochs))
    store_dir = workdir / "store"
    env = _env(workdir, str(store_dir)) | {"SEARCH_GRACE_PERIOD": "20"}
    store = FolderStore(store_dir)
    worker = subprocess.Popen([*SEARCH, "worker", str(study), "--threads", str(threads)], env=env)
    saved_at = None
    path = store.local_path(checkpoint_key(name, 0))
    seen = None
    while worker.poll() is None:
        # Read a checkpoint only when a new one was written (it is a few MiB).
        stamp = path.stat().st_mtime_ns if path.exists() else None
        if stamp is not None and stamp != seen and saved_at is None:
            seen = stamp
            checkpoint = load_checkpoint(store, name, 0)
            if checkpoint is not None and checkpoint.epoch == kill_epoch - 1:
                saved_at = time.monotonic()
                epoch_seconds = checkpoint.state["epoch_seconds"][-1]
                checkpoint_bytes = path.stat().st_size
        if saved_at is not None and time.monotonic() - saved_at >= epoch_seconds / 2:
            os.kill(worker.pid, signal.SIGKILL)
            break
        time.sleep(0.5)
    worker.wait()
    killed_at = time.monotonic()
    subprocess.run([*SEARCH, "worker", str(study), "--threads", str(threads)], env=env, check=True)
    trials = _trials(workdir, name)
    killed, retry = trials[0], trials[-1]
    finished = TrialRecord.of(killed).epochs_done
    retried = TrialRecord.of(retry)
    return {
        "epochs": epochs,
        "killed_after_epochs": finished,
        "resumed_from": None if retried.resumed_from is None else asdict(retried.resumed_from),
        "retry_epochs_trained": retried.epochs_trained,
        # The epoch the kill interrupted counts as trained (its work was lost).
        "epochs_trained_in_all": finished + 1 + retried.epochs_trained,
        "retry_state": retry.state.name,
        "retry_value": retry.value,
        "seconds_from_kill_to_end": round(time.monotonic() - killed_at, 1),
        # Disk per trial: its checkpoint while it runs, its kept model after.
        "checkpoint_bytes": checkpoint_bytes,
        "kept_bytes": store.local_path(kept_key(name, retry.number)).stat().st_size,
    }


def measure_disk(workdir: Path) -> dict:
    """A 20-trial study's checkpoint folder: its peak size while running, and at the end."""
    name = f"disk-{time.time_ns()}"
    study = write_study(
        workdir / f"{name}.toml", sections(name, epochs=4, n_trials=20, subset=True)
    )
    store_dir = workdir / f"store-{name}"
    peak = {"bytes": 0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak["bytes"] = max(peak["bytes"], _size(store_dir))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    subprocess.run(
        [*SEARCH, "run", str(study), "--workers", "2"],
        env=_env(workdir, str(store_dir)),
        cwd=workdir,
        check=True,
    )
    done.set()
    watcher.join()
    checkpoints = sorted((store_dir / name / "checkpoints").glob("*.npz"))
    kept = sorted((store_dir / name / "kept").glob("*.keras"))
    return {
        "trials": 20,
        "peak_bytes": peak["bytes"],
        "end_bytes": _size(store_dir),
        "end_checkpoints": len(checkpoints),
        "end_kept": [p.name for p in kept],
        "kept_bytes": [p.stat().st_size for p in kept],
        "artifacts_bytes": _size(store_dir / "artifacts"),
    }


def _size(folder: Path) -> int:
    try:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    except FileNotFoundError:  # a file removed while walking
        return 0


def summarize(record: dict) -> dict:
    pairs = [p for p in record.get("throughput", []) if "on" in p and "off" in p]
    ratios = [p["off"]["seconds"] / p["on"]["seconds"] for p in pairs]
    summary: dict[str, Any] = {"throughput_ratios": [round(r, 3) for r in ratios]}
    if ratios:
        summary["median_throughput_ratio"] = round(statistics.median(ratios), 3)
    return summary


def write_report(record: dict) -> None:
    summary = summarize(record)
    lines = [
        "# Checkpoints: what they cost and what they save",
        "",
        f"Made by `python -m benchmarks.checkpoints`, commit {record['commit']}, one worker of"
        f" {record['threads']} threads, the conv prior's centre on Fashion-MNIST's full"
        " 48,000/12,000 split (disk: a 2,000/1,000 subset; file sizes depend on the configs).",
        "",
        "## Throughput (with / without checkpoints: training seconds without / with)",
        "",
        "| pair | without: s | with: s | throughput ratio |",
        "|---|---|---|---|",
    ]
    for i, pair in enumerate(record.get("throughput", [])):
        if "on" in pair and "off" in pair:
            ratio = pair["off"]["seconds"] / pair["on"]["seconds"]
            lines.append(
                f"| {i + 1} | {pair['off']['seconds']:.1f} | {pair['on']['seconds']:.1f} |"
                f" {ratio:.3f} |"
            )
    if "median_throughput_ratio" in summary:
        lines += ["", f"Median ratio: {summary['median_throughput_ratio']}."]
    if "kill" in record:
        kill = record["kill"]
        lines += [
            "",
            "## A kill in the middle of a trial",
            "",
            f"Killed halfway through epoch {kill['killed_after_epochs'] + 1} of {kill['epochs']};"
            f" the retry went on from {kill['resumed_from']} and trained"
            f" {kill['retry_epochs_trained']} epochs: {kill['epochs_trained_in_all']} epochs"
            f" trained in all for a {kill['epochs']}-epoch trial (the interrupted one counted);"
            f" {kill['seconds_from_kill_to_end']:.0f} s from the kill to the trial's end. The"
            f" centre's checkpoint: {kill['checkpoint_bytes'] / 2**20:.1f} MiB; its kept model:"
            f" {kill['kept_bytes'] / 2**20:.1f} MiB.",
        ]
    if "disk" in record:
        disk = record["disk"]
        lines += [
            "",
            "## Disk",
            "",
            f"A 20-trial conv study, 2 workers: the checkpoint folder peaked at"
            f" {disk['peak_bytes'] / 2**20:.1f} MiB and ended at {disk['end_bytes'] / 2**20:.1f}"
            f" MiB ({disk['end_checkpoints']} checkpoints left, kept models"
            f" {', '.join(disk['end_kept'])},"
            f" artifacts {disk['artifacts_bytes'] / 2**20:.1f} MiB).",
        ]
    REPORT.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kill-epoch", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/checkpoints-bench"))
    parser.add_argument("--redo", action="store_true")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {}
    if RECORD.exists() and not args.redo:
        record = json.loads(RECORD.read_text())
    record |= {"commit": git_commit(), "machine": describe_machine(), "threads": args.threads}
    record.setdefault("throughput", [])

    def save() -> None:
        record["summary"] = summarize(record)
        write_json_atomic(RECORD, record)
        write_report(record)

    for i in range(args.pairs):
        if len(record["throughput"]) <= i:
            record["throughput"].append({})
        pair = record["throughput"][i]
        # Alternating which goes first, so a drift of the machine's speed favours neither.
        for label in ("off", "on") if i % 2 == 0 else ("on", "off"):
            if label not in pair:
                print(f"pair {i + 1}: checkpoints {label}", flush=True)
                pair[label] = measure_throughput(
                    args.workdir,
                    f"throughput-{i}-{label}-{time.time_ns()}",
                    epochs=args.epochs,
                    threads=args.threads,
                    on=label == "on",
                )
                save()
    if "kill" not in record:
        print("kill in the middle of a trial", flush=True)
        record["kill"] = measure_kill(
            args.workdir, kill_epoch=args.kill_epoch, threads=args.threads
        )
        save()
    if "disk" not in record:
        print("disk of a 20-trial study", flush=True)
        record["disk"] = measure_disk(args.workdir)
        save()
    print(json.dumps(record["summary"], indent=2))


if __name__ == "__main__":
    main()
