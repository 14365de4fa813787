"""Checkpoints of running trials, and the weights kept of a study's best trials.

After every epoch a running trial writes one checkpoint file (`Checkpointer`, a callback
of its fit): its weights, its optimizer's state (the learning rate among it), the epoch, its
history, the reduce-on-plateau schedule's counters and its best epoch's weights. A retry of
the trial (same params, after its worker died or was stopped) continues from the newest
checkpoint of the attempts before it. A checkpoint is a NumPy `.npz` of plain arrays and
one JSON string: read back without pickles, by this code only.

Writes are atomic: a file is written beside its final name and renamed over it (an S3
object appears whole when its upload ends), so a worker killed while saving leaves the
previous checkpoint in place.

Where: a folder (default `runs/`) or `s3://BUCKET/PREFIX` (boto3, credentials and endpoint
from the usual AWS environment), given per process by its settings (`--checkpoints`
or `SEARCH_CHECKPOINTS`); every worker of a study must reach the same one. Under it:

    <study>/checkpoints/trial-<N>.npz   the running trial N's last epoch (removed when it ends)
    <study>/kept/trial-<N>.keras        completed trial N's best-epoch model (the best K kept)
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from search.ranking import best_value, ranked_trials
from search.record import TrialWriter

if TYPE_CHECKING:
    import keras

    from search.objective import PruningReporter
    from search.training import Horizon


class CheckpointError(ValueError):
    """A checkpoint location or setting that cannot be used."""


class Store:
    """Files under keys ("<study>/checkpoints/trial-3.npz"), in a folder or an S3 bucket."""

    location: str

    def put(self, key: str, path: Path) -> None:
        """Store the local file `path` under `key`, atomically, replacing what was there."""
        raise NotImplementedError

    def get(self, key: str, path: Path) -> bool:
        """Copy what `key` holds to the local file `path`; False if there is nothing."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove `key`; nothing happens if it is not there."""
        raise NotImplementedError

    def keys(self, prefix: str) -> list[str]:
        """The keys that start with `prefix`."""
        raise NotImplementedError

    def local_path(self, key: str) -> Path | None:
        """Where a key lives on this machine's file system (None: not on it)."""
        return None


class FolderStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Copied beside the target, then renamed over it: readers see the old file or the new.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str, path: Path) -> bool:
        source = self._path(key)
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            return False
        path.write_bytes(data)
        return True

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self, prefix: str) -> list[str]:
        folder = self._path(prefix).parent if not prefix.endswith("/") else self._path(prefix)
        if not folder.is_dir():
            return []
        found = (p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())
        # Files being written (".name.tmp") are not there yet.
        return sorted(k for k in found if k.startswith(prefix) and not k.split("/")[-1][0] == ".")

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


class S3Store(Store):
    """An S3 bucket (or any S3-compatible service: AWS_ENDPOINT_URL), through boto3."""

    def __init__(self, url: str) -> None:
        try:
            import boto3
        except ImportError:
            raise CheckpointError(
                f"checkpoints at {url} need boto3: pip install boto3 (the `s3` extra)"
            ) from None
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise CheckpointError(f"checkpoint location {url!r}: give s3://BUCKET[/PREFIX]")
        self.location = url
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client("s3")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def get(self, key: str, path: Path) -> bool:
        from botocore.exceptions import ClientError

        # One GET gives one whole version of the object, even while a worker puts a newer
        # one (boto3's download_file reads in ranges and fails if the object changes).
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return False
            raise
        with open(path, "wb") as f:
            for chunk in response["Body"].iter_chunks(1 << 20):
                f.write(chunk)
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def keys(self, prefix: str) -> list[str]:
        strip = len(self._key(""))
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix)
        )
        return sorted(obj["Key"][strip:] for page in pages for obj in page.get("Contents", []))


def open_store(location: str) -> Store | None:
    """The store at `location` (`Settings.checkpoints`): a folder, s3://..., or "none" (None).

    "none": no checkpoints and no kept models.
    """
    if location == "none":
        return None
    if location.startswith("s3://"):
        return S3Store(location)
    if "://" in location:
        raise CheckpointError(
            f"checkpoint location {location!r}: give a folder or s3://BUCKET[/PREFIX]"
        )
    return FolderStore(Path(location).expanduser())


def checkpoint_key(study: str, number: int) -> str:
    return f"{study}/checkpoints/trial-{number}.npz"


def kept_key(study: str, number: int) -> str:
    return f"{study}/kept/trial-{number}.keras"


def kept_numbers(store: Store, study: str) -> list[int]:
    """The trials whose best-epoch model is kept."""
    prefix = f"{study}/kept/trial-"
    return sorted(
        int(k[len(prefix) : -len(".keras")])
        for k in store.keys(prefix)
        if k.endswith(".keras") and k[len(prefix) : -len(".keras")].isdigit()
    )


# --- one checkpoint --------------------------------------------------------------------


@dataclass
class Checkpoint:
    """What a trial needs to go on after its `epoch`-th epoch."""

    trial: int
    epoch: int
    params: dict[str, Any]
    weights: list[np.ndarray]  # every variable of the model (its RNG states too)
    optimizer: list[np.ndarray]
    best_weights: list[np.ndarray]  # the best epoch's `get_weights()`
    # history, epoch_end, epoch_seconds, best_epoch, planned_epochs, plateau: `Checkpointer`.
    state: dict[str, Any]


def save_checkpoint(store: Store, study: str, checkpoint: Checkpoint) -> None:
    """Write a trial's checkpoint, replacing its previous one atomically."""
    meta = {
        "trial": checkpoint.trial,
        "epoch": checkpoint.epoch,
        "params": checkpoint.params,
        "state": checkpoint.state,
    }
    arrays = {"meta": np.array(json.dumps(meta))}
    for group in ("weights", "optimizer", "best_weights"):
        for i, array in enumerate(getattr(checkpoint, group)):
            arrays[f"{group}/{i}"] = np.asarray(array)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.npz"
        np.savez(path, **arrays)
        store.put(checkpoint_key(study, checkpoint.trial), path)


def load_checkpoint(store: Store, study: str, number: int) -> Checkpoint | None:
    """Trial `number`'s checkpoint (None: there is none).

    Raises:
        ValueError (or OSError): a checkpoint that cannot be read.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.npz"
        if not store.get(checkpoint_key(study, number), path):
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                groups: dict[str, list[np.ndarray]] = {}
                for group in ("weights", "optimizer", "best_weights"):
                    count = sum(1 for name in npz.files if name.startswith(f"{group}/"))
                    groups[group] = [npz[f"{group}/{i}"] for i in range(count)]
        except (zipfile.BadZipFile, KeyError, EOFError) as e:
            raise ValueError(f"{type(e).__name__}: {e}") from None
    return Checkpoint(
        trial=meta["trial"],
        epoch=meta["epoch"],
        params=meta["params"],
        state=meta["state"],
        **groups,
    )


def delete_checkpoint(store: Store, study: str, number: int) -> None:
    store.delete(checkpoint_key(study, number))


# --- a training trial's checkpoints ----------------------------------------------------


class Checkpointer:
    """After every epoch, save what the trial needs to go on; resume from what was saved.

    Its `callback` goes after the trial's PruningReporter in fit's callbacks, so a
    checkpoint holds the epoch's history, and a trial pruned at an epoch saves nothing more.
    Keras is imported where it is used: a process that only reads stores (the CLI) does
    without it.
    """

    def __init__(
        self,
        store: Store | None,
        study: str,
        trial: optuna.Trial,
        reporter: PruningReporter,
        schedule: list[keras.callbacks.Callback],
        direction: str,
        horizon: Horizon,
        raw_images: tuple[int, int, int] | None = None,
    ) -> None:
        """
        Args:
            horizon: the trial's planned epochs, saved and restored with its state.
            raw_images: the input shape of a model trained on image folders, whose kept
                model takes images of any size (`for_raw_images`).
        """
        from search.training import ResumablePlateau

        self.raw_images = raw_images
        self.store = store
        self.study = study
        self.trial = trial
        self.writer = TrialWriter(trial)
        self.reporter = reporter
        self.plateau = next((c for c in schedule if isinstance(c, ResumablePlateau)), None)
        self.direction = direction
        self.horizon = horizon
        self.best_weights: list[Any] | None = None
        self.best_epoch = 0
        # Older attempts' checkpoints, removed once this trial has saved its own.
        self.superseded: list[int] = []

    def callback(self, model: keras.Model) -> keras.callbacks.Callback:
        """The Keras callback that saves `model`'s checkpoint after every epoch."""
        import keras

        return keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: self.after_epoch(model, epoch + 1)
        )

    def resume(self, model: keras.Model, retry_of: list[int]) -> int:
        """Load the newest checkpoint of the attempts before; return its epoch (0: none).

        Reports its epochs' values again, so the pruner judges the whole curve, and records
        where the trial went on from (`resumed_from`), or why it starts from epoch 1.
        """
        if self.store is None:
            self.writer.set_restarted("checkpoints are off")
            return 0
        self.superseded = list(retry_of)
        reasons = []
        for number in reversed(retry_of):
            try:
                checkpoint = load_checkpoint(self.store, self.study, number)
                if checkpoint is None:
                    reasons.append(f"trial {number} left no checkpoint")
                    continue
                self._restore(model, checkpoint)
            except Exception as e:  # unreadable, or not this model's: try an older one
                reasons.append(f"trial {number}'s checkpoint is unusable ({e})"[:300])
                continue
            # (A retry inherits its attempt's attributes: an older reason is replaced.)
            self.writer.set_resumed(number, checkpoint.epoch, "; ".join(reasons) or None)
            return checkpoint.epoch
        self.writer.set_resumed(None, 0, "; ".join(reasons) + ": started from epoch 1")
        return 0

    def _restore(self, model: keras.Model, checkpoint: Checkpoint) -> None:
        if checkpoint.params != self.trial.params:
            raise ValueError("its params differ from this trial's")
        # All of the model's state: weights, batch norm's statistics, dropout's RNG states.
        if len(model.variables) != len(checkpoint.weights):
            raise ValueError("its weights do not fit this model")
        for variable, value in zip(model.variables, checkpoint.weights, strict=True):
            variable.assign(value)
        optimizer = model.optimizer
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        if len(optimizer.variables) != len(checkpoint.optimizer):
            raise ValueError("its optimizer state does not fit this model's optimizer")
        for variable, value in zip(optimizer.variables, checkpoint.optimizer, strict=True):
            variable.assign(value)
        state = checkpoint.state
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.restore(state["plateau"])
        self.best_weights = checkpoint.best_weights or None
        self.best_epoch = state["best_epoch"]
        if state.get("planned_epochs") is not None:
            self.horizon.epochs, self.horizon.planned = state["planned_epochs"], True
        self.reporter.history = {k: list(v) for k, v in state["history"].items()}
        self.reporter.epoch_end = list(state["epoch_end"])
        self.reporter.epoch_seconds = list(state["epoch_seconds"])
        # The earlier epochs, reported again to this trial: its curve has every epoch once.
        for epoch, value in enumerate(self.reporter.history[self.reporter.metric], start=1):
            self.trial.report(value, step=epoch)

    def after_epoch(self, model: keras.Model, epoch: int) -> None:
        """Save the checkpoint of the `epoch`-th epoch (1-based), just trained."""
        if self.store is None or self.reporter.diverged:
            return
        values = self.reporter.history[self.reporter.metric]
        if values.index(best_value(values, self.direction)) == len(values) - 1:
            self.best_weights = model.get_weights()
            self.best_epoch = len(values)
        save_checkpoint(
            self.store,
            self.study,
            Checkpoint(
                trial=self.trial.number,
                epoch=epoch,
                params=self.trial.params,
                weights=[v.numpy() for v in model.variables],
                optimizer=[v.numpy() for v in model.optimizer.variables],
                best_weights=self.best_weights or [],
                state={
                    "history": self.reporter.history,
                    "epoch_end": self.reporter.epoch_end,
                    "epoch_seconds": self.reporter.epoch_seconds,
                    "best_epoch": self.best_epoch,
                    "planned_epochs": self.horizon.epochs if self.horizon.planned else None,
                    "plateau": None if self.plateau is None else self.plateau.state(),
                },
            ),
        )
        while self.superseded:
            delete_checkpoint(self.store, self.study, self.superseded.pop())

    def finish(self, model: keras.Model, *, kept: bool) -> None:
        """The trial ended: keep its best epoch's model if it completed, drop checkpoints."""
        from search.training import for_raw_images, save_model

        if self.store is None:
            return
        if kept and self.best_weights is not None:
            model.set_weights(self.best_weights)
            if self.raw_images is not None:
                model = for_raw_images(model, self.raw_images)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.keras"
                save_model(model, path)
                self.store.put(kept_key(self.study, self.trial.number), path)
            self.writer.set_kept_epoch(self.best_epoch)
        for number in [*self.superseded, self.trial.number]:
            delete_checkpoint(self.store, self.study, number)


# --- the kept models -------------------------------------------------------------------


def prune_kept(store: Store | None, study: optuna.Study, keep: int) -> list[int]:
    """Remove the kept models of completed trials outside the study's best `keep`.

    Safe with many workers at once: only finished trials' models are removed (a running
    trial's model, saved just before it completes, stays), and a trial that completes later
    only pushes others further down the ranking, so a model removed by one worker is
    outside the best `keep` by any later count too.

    Returns:
        The trials whose models remain.
    """
    if store is None:
        return []
    trials = study.get_trials(deepcopy=False)
    ranked = ranked_trials(trials, study.direction)
    best = {t.number for t in ranked[:keep]}
    # Trials that ended and will never rank: those outside the best, and any that ended
    # otherwise (a worker that died between saving a model and completing its trial).
    ended = {t.number for t in trials if t.state.is_finished()} - best
    kept = []
    for number in kept_numbers(store, study.study_name):
        if number in ended:
            store.delete(kept_key(study.study_name, number))
        else:
            kept.append(number)
    return kept


# --- the kept models in optuna-dashboard -----------------------------------------------


def artifact_name(number: int) -> str:
    return f"trial-{number}-model.keras"


def artifact_store(store: Store | None) -> Any:
    """The Optuna artifact store beside a checkpoint store (what the dashboard reads)."""
    from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

    if store is None:
        return None
    if isinstance(store, S3Store):
        return Boto3ArtifactStore(store.bucket, client=store.client)
    assert isinstance(store, FolderStore)
    path = store.root / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def attach_kept(store: Store | None, study: optuna.Study) -> list[int]:
    """Attach each kept model to the study as an Optuna artifact, once; return the numbers.

    Optuna cannot remove an artifact's record, and a finished trial takes no new ones. So a
    model is attached to its study (as `trial-<N>-model.keras`) when it is final, at the end
    of `search run` and by `search export --weights`, and the artifact is a copy: removing a
    kept model later never leaves the dashboard an entry without its file.
    """
    from optuna.artifacts import get_all_artifact_meta, upload_artifact

    if store is None:
        return []
    artifacts = artifact_store(store)
    attached = {meta.filename for meta in get_all_artifact_meta(study)}
    numbers = []
    for number in kept_numbers(store, study.study_name):
        name = artifact_name(number)
        if name not in attached:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / name
                if not store.get(kept_key(study.study_name, number), path):
                    continue  # removed since it was listed
                upload_artifact(
                    artifact_store=artifacts, file_path=str(path), study_or_trial=study
                )
        numbers.append(number)
    return numbers
