"""Image folders against the in-memory path, on Fashion-MNIST written out as PNG files.

Three measurements, each written to benchmarks/results/folders.json as it finishes (a rerun
skips those done; `--redo` starts again):

1. throughput: the conv prior's centre trained for 2 epochs by one `search worker` on
   Fashion-MNIST in memory (`fashion_mnist`) and as PNG folders (`dir:`, `cache = "none"`),
   alternating, `--pairs` pairs; an epoch's images per second from the trial's own
   `epoch_seconds`, the second epoch compared (the first includes start-up). Same split
   sizes: 48,000 training / 12,000 validation images.
2. memory: a worker's peak resident memory (the process's maxrss) training 1 epoch on the
   70,000 files and on 7,000 of them (the same layout, a tenth of each class), cache none.
3. check: what scanning the folder and decoding every image once (what `search create` and
   `search run` do before writing anything) costs on 70,000 files.

    python -m benchmarks.folders [--pairs 3] [--threads 2] [--workdir /tmp/folders-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import (
    REPO,
    describe_machine,
    git_commit,
    load_average,
    write_json_atomic,
    write_study,
)
from search.data import FASHION_MNIST_CLASSES, load_dataset, load_test
from search.record import TrialRecord

RESULTS = REPO / "benchmarks" / "results"
RECORD = RESULTS / "folders.json"
REPORT = RESULTS / "folders.md"
EPOCHS = 2


def folder_safe(name: str) -> str:
    """A class name as a folder name: "T-shirt/top" -> "T-shirt_top"."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def write_png_folders(root: Path, *, per_class_fraction: float = 1.0) -> Path:
    """Fashion-MNIST's 60,000 + 10,000 images as root/{train,test}/<class>/<n>.png.

    With a fraction below 1, the first that fraction of each class's images only. Written
    once: a folder with its `done` marker is kept.
    """
    from PIL import Image

    if (root / "done").exists():
        return root
    data = load_dataset("fashion_mnist", validation_split=0.2, split_seed=0)
    # The 60,000 training images in their file order (the split's two halves put together).
    x = np.concatenate([data.train.x, data.val.x])
    y = np.concatenate([data.train.y, data.val.y])
    test = load_test("fashion_mnist")
    for part, (images, labels) in {"train": (x, y), "test": (test.x, test.y)}.items():
        for label, name in enumerate(FASHION_MNIST_CLASSES):
            folder = root / part / folder_safe(name)
            folder.mkdir(parents=True, exist_ok=True)
            idx = np.flatnonzero(labels == label)
            idx = idx[: round(len(idx) * per_class_fraction)]
            for i in idx:
                Image.fromarray(images[i].reshape(28, 28)).save(folder / f"{i:05d}.png")
    (root / "done").write_text("")
    return root


def study_sections(name: str, dataset: str, *, epochs: int) -> dict[str, dict[str, Any]]:
    """One trial, the conv prior's centre (the first trial of a study with its prior)."""
    data: dict[str, Any] = {"dataset": dataset, "validation_split": 0.2, "split_seed": 0}
    if dataset.startswith("dir:"):
        data |= {"image_size": [28, 28], "color_mode": "grayscale"}
    return {
        "study": {"name": name, "space": "conv", "seed": 0, "metric": "val_accuracy"},
        "data": data,
        "trials": {
            "n_trials": 1,
            "max_epochs": epochs,
            "sampler": "random",
            "pruner": "none",
            "prior": True,
        },
    }


def run_worker(
    workdir: Path, name: str, dataset: str, *, epochs: int, threads: int
) -> dict[str, Any]:
    """Create the study and run its one trial in one `search worker` process.

    Returns:
        The trial's epoch seconds, the worker's peak resident memory (MiB) and its wall time.
    """
    import optuna

    storage = f"sqlite:///{workdir / 'folders.db'}"
    study_file = write_study(
        workdir / f"{name}.toml", study_sections(name, dataset, epochs=epochs)
    )
    env = os.environ | {"SEARCH_CACHE": "none", "SEARCH_STORAGE": storage}
    search = [sys.executable, "-m", "search"]
    subprocess.run([*search, "create", str(study_file)], cwd=workdir, env=env, check=True)
    start = time.monotonic()
    worker = subprocess.Popen(
        [*search, "worker", str(study_file), "--threads", str(threads), "--cache", "none"],
        cwd=workdir,
        env=env,
    )
    _, status, usage = os.wait4(worker.pid, 0)
    wall = time.monotonic() - start
    if status != 0:
        raise RuntimeError(f"the worker of {name} ended with status {status}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (trial,) = optuna.load_study(study_name=name, storage=storage).get_trials()
    return {
        "dataset": dataset,
        "state": trial.state.name,
        "epoch_seconds": TrialRecord.of(trial).epoch_seconds,
        "val_accuracy": TrialRecord.of(trial).history["val_accuracy"],
        # Linux reports maxrss in KiB.
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "wall_seconds": round(wall, 1),
        "load_at_start": load_average()[0],
    }


def measure_check(root: Path) -> dict[str, Any]:
    """Seconds to scan the folder, and to scan it and decode every image once."""
    code = (
        "import json, sys, time\n"
        "from search.folders import load_folder\n"
        "kw = dict(validation_split=0.2, split_seed=0, train_subset=None,"
        " validation_subset=None, data_dir=None, image_size=(28, 28), color_mode='grayscale')\n"
        "t = time.monotonic(); load_folder(sys.argv[1], **kw); scan = time.monotonic() - t\n"
        "t = time.monotonic(); load_folder(sys.argv[1], check=True, **kw)\n"
        "print(json.dumps({'scan_seconds': round(scan, 2),"
        " 'scan_and_decode_seconds': round(time.monotonic() - t, 2)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, f"dir:{root}"], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def images_per_second(run: dict[str, Any], epoch: int, n_train: int = 48_000) -> float:
    return n_train / run["epoch_seconds"][epoch - 1]


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """Per pair the second epoch's throughput ratio (folders / memory), and their median."""
    pairs = record.get("throughput", [])
    ratios = [
        images_per_second(p["dir"], EPOCHS) / images_per_second(p["memory"], EPOCHS)
        for p in pairs
        if "dir" in p and "memory" in p
    ]
    summary: dict[str, Any] = {"ratios": [round(r, 3) for r in ratios]}
    if ratios:
        summary["median_ratio"] = round(statistics.median(ratios), 3)
    memory = record.get("memory", {})
    if "70000" in memory and "7000" in memory:
        summary["peak_rss_ratio_70k_to_7k"] = round(
            memory["70000"]["peak_rss_mib"] / memory["7000"]["peak_rss_mib"], 3
        )
    return summary


def write_report(record: dict[str, Any]) -> None:
    summary = summarize(record)
    lines = [
        "# Image folders against the in-memory path",
        "",
        "Made by `python -m benchmarks.folders` (see its docstring), commit"
        f" {record['commit']}, {record['machine'].get('cpu', '')}, one worker of"
        f" {record['threads']} threads, cache none. Fashion-MNIST written out as 70,000 PNG"
        " files (`train/` and `test/`, one folder per class); the trial is the conv prior's"
        " centre, 48,000 training / 12,000 validation images either way.",
        "",
        "## Throughput (second epoch)",
        "",
        "| pair | in memory: s per epoch (1st, 2nd) | folders: s per epoch (1st, 2nd) |"
        " folders / memory (2nd epoch) |",
        "|---|---|---|---|",
    ]
    for i, pair in enumerate(record.get("throughput", [])):
        if "memory" not in pair or "dir" not in pair:
            continue
        mem, folder = pair["memory"], pair["dir"]
        ratio = images_per_second(folder, EPOCHS) / images_per_second(mem, EPOCHS)
        lines.append(
            f"| {i + 1} | {', '.join(f'{s:.1f}' for s in mem['epoch_seconds'])} |"
            f" {', '.join(f'{s:.1f}' for s in folder['epoch_seconds'])} | {ratio:.3f} |"
        )
    if "median_ratio" in summary:
        lines += [
            "",
            f"Median ratio over {len(summary['ratios'])} pairs: {summary['median_ratio']}.",
        ]
    memory = record.get("memory", {})
    if memory:
        lines += [
            "",
            "## A worker's peak memory, cache none (1 epoch)",
            "",
            "| files | peak resident memory |",
            "|---|---|",
        ]
        for files, run in sorted(memory.items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {int(files):,} | {run['peak_rss_mib']:.0f} MiB |")
        if "peak_rss_ratio_70k_to_7k" in summary:
            lines += ["", f"70,000 against 7,000: {summary['peak_rss_ratio_70k_to_7k']}x."]
    if "check" in record:
        check = record["check"]
        lines += [
            "",
            "## The check before anything is written (70,000 files)",
            "",
            f"Scanning the folder: {check['scan_seconds']} s; scanning and decoding every image"
            f" once: {check['scan_and_decode_seconds']} s.",
        ]
    REPORT.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/folders-bench"))
    parser.add_argument("--redo", action="store_true", help="discard the record and start again")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    full = write_png_folders(args.workdir / "fashion-png")
    tenth = write_png_folders(args.workdir / "fashion-png-7k", per_class_fraction=0.1)
    record: dict[str, Any] = (
        {} if args.redo or not RECORD.exists() else json.loads(RECORD.read_text())
    )
    record |= {"commit": git_commit(), "machine": describe_machine(), "threads": args.threads}
    record.setdefault("throughput", [])
    record.setdefault("memory", {})

    def save() -> None:
        record["summary"] = summarize(record)
        write_json_atomic(RECORD, record)
        write_report(record)

    for i in range(args.pairs):
        if len(record["throughput"]) <= i:
            record["throughput"].append({})
        pair = record["throughput"][i]
        for label, dataset in (("memory", "fashion_mnist"), ("dir", f"dir:{full}")):
            if label in pair:
                continue
            print(f"pair {i + 1}: {label}", flush=True)
            pair[label] = run_worker(
                args.workdir,
                f"throughput-{i}-{label}-{time.time_ns()}",
                dataset,
                epochs=EPOCHS,
                threads=args.threads,
            )
            save()
    for files, root in (("70000", full), ("7000", tenth)):
        if files in record["memory"]:
            continue
        print(f"memory: {files} files", flush=True)
        record["memory"][files] = run_worker(
            args.workdir,
            f"memory-{files}-{time.time_ns()}",
            f"dir:{root}",
            epochs=1,
            threads=args.threads,
        )
        save()
    if "check" not in record:
        print("check: 70,000 files", flush=True)
        record["check"] = measure_check(full)
        save()
    print(json.dumps(record["summary"], indent=2))


if __name__ == "__main__":
    main()
