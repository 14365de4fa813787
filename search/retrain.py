"""Retraining: an exported trial's config trained again, then evaluated once on the test set.

The final model learns from the train split only, as the trial did: for the trial's best
epoch, with its seed, its thread count and its learning-rate path, so its validation
accuracy reproduces the trial's and the gap between validation and test is honest. Only
then is the test set read, once, by the saved model. Re-evaluation trains the same way with
other seeds and scores the validation split only, to pick the config to retrain.

A model trained on image folders (dir:PATH) is saved behind a Resizing layer: it takes
decoded images of any size with the study's channels, and its class names are written
beside it (classes.json).
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from search.config import DataSection
from search.data import Dataset, Split, load_study_data, load_study_test
from search.export import Export, ExportError, versions
from search.folders import FileSplit
from search.ranking import best_first
from search.training import (
    describe_device,
    fit,
    for_raw_images,
    learning_rate_callbacks,
    save_model,
)

# Images per batch when evaluating: large batches are faster and change no result.
EVAL_BATCH = 1024


def retrain(
    export: Export,
    out_dir: Path,
    *,
    number: int | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    data_dir: str | None = None,
    cache: str = "none",
    from_weights: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Retrain an exported trial, evaluate it on the test set and write its artifacts.

    Writes `report.json`, `model.keras`, `classes.json`, `history.png` and `confusion.png`
    into `out_dir`, and nothing at all if the config cannot be built.

    Args:
        number: the exported trial to retrain; default: the best.
        epochs: default: the trial's best epoch.
        seed: default: the trial's seed.
        cache: where a dir:PATH dataset's decoded images are kept (none, memory, disk).
        from_weights: test the trial's kept best-epoch model (`search export --weights`)
            instead of training it again: the same model, as retraining reproduces the
            trial, in seconds rather than the trial's time.

    Returns:
        The report (what `report.json` holds).
    """
    entry = export.entry(number)
    definition = export.definition
    epochs = epochs or entry["best_epoch"]
    seed = entry["seed"] if seed is None else seed
    if from_weights:
        weights = _kept_model_path(export, entry)
        if (epochs, seed) != (entry["best_epoch"], entry["seed"]):
            raise ExportError(
                f"{export.path}: --from-weights tests trial {entry['number']}'s kept model as"
                " trained; --epochs and --seed ask for a new training"
            )
    # The trials' very split and subsets.
    data = load_study_data(definition.data, data_dir=data_dir, cache=cache)
    if entry.get("warning"):
        log(f"warning: {entry['warning']}")
    start = time.monotonic()
    if from_weights:
        log(
            f"testing trial {entry['number']} of study {export.bundle['study']!r} as trained:"
            f" its kept model of epoch {epochs} ({weights}), which retraining would reproduce;"
            f" validating on {len(data.val)} images"
        )
        # Kept as trained, behind its Resizing for image folders already.
        model = keras.models.load_model(weights)
        history = {key: values[:epochs] for key, values in entry["history"].items()}
    else:
        log(
            f"retraining trial {entry['number']} of study {export.bundle['study']!r}"
            f" for {epochs} epoch{'s' * (epochs != 1)}, seed {seed}, on {len(data.train)}"
            f" training images; validating on {len(data.val)}"
        )
        model, history = train_on_split(
            export, entry, data, epochs=epochs, seed=seed, verbose=1 if sys.stdout.isatty() else 2
        )
        if isinstance(data.train, FileSplit):
            model = for_raw_images(model, data.input_shape)
    seconds = time.monotonic() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.keras"
    # Loads with plain Keras anywhere (`save_model`): what a user's serving code does.
    save_model(model, model_path)
    (out_dir / "classes.json").write_text(json.dumps(list(data.class_names), indent=2) + "\n")
    # The test numbers are those of the saved file: what anyone who loads it will get.
    test_split = load_study_test(definition.data, data_dir=data_dir)
    saved = keras.models.load_model(model_path)
    # Both scored by the saved file, with its plain cross-entropy (no label smoothing), so
    # their losses compare; the accuracy is the last epoch's.
    validation = _evaluate(saved, data.val)
    test = _evaluate(saved, test_split)
    trained = len(history["loss"])
    report = {
        "study": export.bundle["study"],
        "trial": entry["number"],
        "baseline": entry.get("baseline"),
        "metric": export.bundle["metric"],
        "epochs": trained,
        "seed": seed,
        "threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "device": describe_device(),
        "seconds": round(seconds, 2),
        "n_params": model.count_params(),
        # What the saved model takes (None: any size) and what its outputs mean.
        "input_shape": list(model.input_shape[1:]),
        "class_names": list(data.class_names),
        "data": {
            "train_images": len(data.train),
            "validation_images": len(data.val),
            "test_images": int(test["confusion"].sum()),
            "learns_from_validation": False,
        },
        "validation": {"accuracy": validation["accuracy"], "loss": validation["loss"]},
        "trial_validation": _trial_validation(entry, trained),
        # Other seeds' validation accuracy (`search export --reevaluate`): the spread the
        # one number above hides.
        "reevaluation": entry.get("reevaluation"),
        "test": {"accuracy": test["accuracy"], "loss": test["loss"]},
        "gap": validation["accuracy"] - test["accuracy"],
        "classes": _per_class(test["confusion"], data.class_names),
        "confusion_matrix": test["confusion"].tolist(),
        "history": history,
        "versions": versions(),
        "export": {"file": str(export.path), **export.bundle, "trials": [entry]},
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot_history(history, entry).savefig(out_dir / "history.png", dpi=100)
    _plot_confusion(test["confusion"], data.class_names).savefig(
        out_dir / "confusion.png", dpi=100
    )
    log(
        f"validation accuracy {report['validation']['accuracy']:.4f}"
        + _trial_note(report["trial_validation"])
        + _reevaluation_note(report["reevaluation"])
        + f", test accuracy {test['accuracy']:.4f} (gap {report['gap']:+.4f}),"
        f" {seconds:.0f} s; wrote report.json, model.keras, classes.json, history.png,"
        f" confusion.png to {out_dir}"
    )
    return report


def reevaluate(
    export: Export,
    *,
    n_seeds: int,
    jobs: int = 1,
    threads: int = 0,
    data_dir: str | None = None,
    cache: str = "none",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The bundle with each trial retrained with `n_seeds` new seeds, best mean first.

    Each config trains as its trial did (train split, best epoch, the study's schedule
    horizon) and is scored by the study's metric on the validation split only: choosing
    among them leaves the test set untouched. Each entry gets `reevaluation` (the seeds,
    their values of the metric, mean and standard deviation) and `rank`, its place by
    that mean in the study's direction.

    Args:
        jobs: trainings at once, each in its own process with `threads` TensorFlow
            threads (0: TensorFlow's default); 1 trains here, one after another. A seed's
            result does not depend on `jobs`.
    """
    entries = export.bundle["trials"]
    runs = [
        # Not the trial's own seed: that run is the one that got it selected.
        (i, entry, j, entry["seed"] + j)
        for i, entry in enumerate(entries, start=1)
        for j in range(1, n_seeds + 1)
    ]
    metric = export.definition.study.metric
    scores: dict[tuple[int, int], float] = {}

    def done(i: int, entry: dict[str, Any], j: int, seed: int, score: float, seconds: float):
        scores[i, j] = score
        log(
            f"re-evaluating trial {entry['number']} ({i}/{len(entries)}), seed {seed}"
            f" ({j}/{n_seeds}): {metric} {score:.4f}"
            f" after {entry['best_epoch']} epochs, {seconds:.0f} s"
        )

    jobs = min(jobs, len(runs))
    if jobs <= 1:
        for run in runs:
            done(*run, *_reevaluate_run(export, run[1], run[3], data_dir, cache))
    else:
        log(f"re-evaluating {len(runs)} trainings, {jobs} at once")
        pool = ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_job,
            initargs=(threads,),
        )
        try:
            futures = {
                pool.submit(_reevaluate_run, export, run[1], run[3], data_dir, cache): run
                for run in runs
            }
            for future in as_completed(futures):
                done(*futures[future], *future.result())
        finally:
            # On an error or Ctrl-C, the trainings not yet started never start.
            pool.shutdown(cancel_futures=True)
    reevaluated = []
    for i, entry in enumerate(entries, start=1):
        values = [scores[i, j] for j in range(1, n_seeds + 1)]
        reevaluation = {
            "seeds": [entry["seed"] + j for j in range(1, n_seeds + 1)],
            "epochs": entry["best_epoch"],
            "threads": threads or tf.config.threading.get_intra_op_parallelism_threads(),
            "metric": metric,
            metric: values,
            "mean": statistics.mean(values),
            "std": statistics.stdev(values),
            "trial_rank": entry["rank"],
        }
        log(
            f"trial {entry['number']}: mean {metric} {reevaluation['mean']:.4f}"
            f" ± {reevaluation['std']:.4f} over {n_seeds} seeds"
        )
        reevaluated.append({**entry, "reevaluation": reevaluation})
    ranked = best_first(
        reevaluated, export.definition.direction, key=lambda e: e["reevaluation"]["mean"]
    )
    trials = [{**entry, "rank": rank} for rank, entry in enumerate(ranked, start=1)]
    return {**export.bundle, "trials": trials}


def _start_job(threads: int) -> None:
    """A re-evaluation process: its thread count, before TensorFlow starts its runtime."""
    from search.device import configure_threads

    configure_threads(threads)


@functools.cache
def _study_data(section: DataSection, data_dir: str | None, cache: str) -> Dataset:
    """The study's split, loaded once per process."""
    return load_study_data(section, data_dir=data_dir, cache=cache)


def _reevaluate_run(
    export: Export, entry: dict[str, Any], seed: int, data_dir: str | None, cache: str
) -> tuple[float, float]:
    """One re-evaluation training: the study's metric after its last epoch, and its seconds."""
    data = _study_data(export.definition.data, data_dir, cache)
    start = time.monotonic()
    _, history = train_on_split(export, entry, data, epochs=entry["best_epoch"], seed=seed)
    return history[export.definition.study.metric][-1], time.monotonic() - start


def train_on_split(
    export: Export,
    entry: dict[str, Any],
    data: Dataset,
    *,
    epochs: int,
    seed: int,
    verbose: int | str = 0,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train an exported trial's config on the train split as the trial did.

    Returns:
        The model and its history (loss, accuracy, val_loss, val_accuracy per epoch).
    """
    # What a trial does before it builds its model, so the weights start the same.
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    # A cosine schedule spans the epochs the trial planned (its max_epochs unless its time
    # was short), as in the trial, even when stopping at the best epoch; past them, it
    # spans the longer run.
    planned = entry.get("planned_epochs") or export.definition.trials.max_epochs
    schedule_epochs = max(planned, epochs)
    model = _build(export, entry, data, schedule_epochs)
    fitted = fit(
        model,
        entry["config"],
        data,
        epochs=epochs,
        schedule_epochs=schedule_epochs,
        verbose=verbose,
        shuffle_seed=seed,
    )
    return model, {key: [float(v) for v in values] for key, values in fitted.history.items()}


def _kept_model_path(export: Export, entry: dict[str, Any]) -> Path:
    """The exported file of a trial's kept model (`search export --weights`)."""
    if not entry.get("weights"):
        raise ExportError(
            f"{export.path}: trial {entry['number']} was exported without its kept model;"
            " export with --weights to test it as trained, or retrain without --from-weights"
        )
    path = export.path.parent / entry["weights"]
    if not path.is_file():
        raise ExportError(f"{export.path}: trial {entry['number']}'s kept model {path} is missing")
    return path


def _build(export: Export, entry: dict[str, Any], data: Dataset, schedule_epochs: int):
    """Build the entry's model and check its training settings, before anything is written."""
    config = entry["config"]
    space = export.space()
    try:
        model = space.build(config, data.input_shape, data.num_classes)
        learning_rate_callbacks(config, schedule_epochs=schedule_epochs)
        batch_size = config["batch_size"]
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size is {batch_size!r}, but must be an integer >= 1")
    except KeyError as e:
        raise ExportError(
            f"{export.path}: trial {entry['number']}: its config has no key {e}, which the"
            f" {export.definition.study.space!r} space needs"
        ) from None
    except (TypeError, ValueError) as e:
        raise ExportError(
            f"{export.path}: trial {entry['number']}: the {export.definition.study.space!r}"
            f" space cannot build its config ({e})"
        ) from None
    return model


def _evaluate(model: keras.Model, split: Split | FileSplit) -> dict[str, Any]:
    """Loss (as Keras computes it in training), accuracy and confusion matrix on a split."""
    if isinstance(split, FileSplit):
        # Batches in the split's order, labels alongside (predict ignores them).
        batches = split.batches(EVAL_BATCH)
        loss, _ = model.evaluate(batches, verbose=0)
        predicted = model.predict(batches, verbose=0).argmax(axis=1)
    else:
        loss, _ = model.evaluate(split.x, split.y, batch_size=EVAL_BATCH, verbose=0)
        predicted = model.predict(split.x, batch_size=EVAL_BATCH, verbose=0).argmax(axis=1)
    n_classes = model.output_shape[-1]
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (split.y, predicted), 1)
    return {
        "loss": float(loss),
        "accuracy": float(np.trace(confusion) / len(split)),
        "confusion": confusion,
    }


def _per_class(confusion: np.ndarray, class_names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Precision and recall per class (rows: true class, columns: predicted)."""
    correct = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    return [
        {
            "name": name,
            "precision": float(correct[i] / predicted[i]) if predicted[i] else 0.0,
            "recall": float(correct[i] / support[i]) if support[i] else 0.0,
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]


def _trial_validation(entry: dict[str, Any], epochs: int) -> dict[str, float] | None:
    """The trial's own validation numbers after `epochs` epochs, if it trained that long."""
    history = entry["history"]
    if min(len(history.get(key, [])) for key in ("val_accuracy", "val_loss")) < epochs:
        return None
    return {
        "accuracy": history["val_accuracy"][epochs - 1],
        "loss": history["val_loss"][epochs - 1],
    }


def _trial_note(trial_validation: dict[str, float] | None) -> str:
    if trial_validation is None:
        return ""
    return f" (the trial's: {trial_validation['accuracy']:.4f})"


def _reevaluation_note(reevaluation: dict[str, Any] | None) -> str:
    if reevaluation is None:
        return ""
    return (
        f" (mean over {len(reevaluation['seeds'])} other seeds:"
        f" {reevaluation['mean']:.4f} ± {reevaluation['std']:.4f}"
        f" {reevaluation.get('metric', 'val_accuracy')})"
    )


def _plot_history(history: dict[str, list[float]], entry: dict[str, Any]) -> Figure:
    """Accuracy and loss per epoch, train and validation, beside the trial's validation."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    trial = entry["history"]
    for ax, key in zip(fig.subplots(1, 2), ("accuracy", "loss"), strict=True):
        epochs = range(1, len(history[key]) + 1)
        ax.plot(epochs, history[key], marker="o", label="train")
        ax.plot(epochs, history[f"val_{key}"], marker="o", label="validation")
        if trial.get(f"val_{key}"):
            trial_epochs = range(1, len(trial[f"val_{key}"]) + 1)
            ax.plot(
                trial_epochs,
                trial[f"val_{key}"],
                linestyle="--",
                color="grey",
                label=f"trial {entry['number']} validation",
            )
        ax.set(xlabel="epoch", ylabel=key, title=key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def _plot_confusion(confusion: np.ndarray, class_names: tuple[str, ...]) -> Figure:
    """The test set's confusion matrix with counts in the cells."""
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true", title="test set confusion matrix")
    threshold = confusion.max() / 2
    for (i, j), count in np.ndenumerate(confusion):
        color = "white" if count > threshold else "black"
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=color)
    return fig
