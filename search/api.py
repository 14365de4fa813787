"""The Python API: a study defined, run and read back from code (a notebook, a script).

    import search

    study = search.create_study(
        "digits", space=search.Space(suggest, build), data=(x_train, y_train, x_test, y_test),
        n_trials=20, max_epochs=10, timeout_minutes=30,
    )
    study.optimize(workers=2)
    model = study.best_model()             # the best trial's kept best-epoch keras.Model
    result = study.retrain()               # trained again, tested once
    print(result.test_accuracy)

A study made here is a study like any other: `search run --study-name digits` resumes it, and
`search status`, the dashboard, export and retrain read it. The CLI is a layer over this
module (one code path): `search run STUDY.toml` is `study_from_file(...).optimize(...)`.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from search.config import (
    ConfigError,
    StudyConfig,
    check_space_options,
    from_dict,
    load_config,
    section_of,
    table_keys,
)
from search.data import DataError
from search.errors import USER_ERRORS
from search.export import Export, ExportError
from search.record import TrialRecord
from search.settings import Settings
from search.study import StudyError

# `optimize` restarts a worker process after this many trials: memory held across trials
# by TensorFlow grows with each (benchmarks/results/worker_memory.md).
RECYCLE_AFTER = 10
Log = Callable[[str], None]


class WorkersFailed(RuntimeError):
    """Workers kept failing and were given up on before the study's budget was spent."""


def _say(line: str) -> None:
    print(line, flush=True)


def _quiet(line: str) -> None:
    pass


def create_study(
    name: str,
    *,
    space: Any,
    data: Any = "fashion_mnist",
    storage: str | None = None,
    settings: Settings | None = None,
    space_options: Mapping[str, Any] | None = None,
    prior: Mapping[str, Any] | None = None,
    enqueue: Sequence[str | Path] = (),
    quiet: bool = False,
    **keys: Any,
) -> Study:
    """Create a study (or resume the one of that name, if its definition is the same).

    Every key of a study file's [study], [data] and [trials] tables is a keyword here
    (`n_trials`, `max_epochs`, `timeout_minutes`, `metric`, `seed`, `validation_split`,
    `train_subset`, `pruner`, ...; docs/studies.md), with the same rules and defaults.

    Args:
        space: a built-in space's name ("conv"), a module's dotted path, or a `Space` of
            your own `suggest` and `build` functions (saved beside the study's runs).
        data: "fashion_mnist", "npz:PATH", "dir:PATH", or arrays: a tuple
            (x_train, y_train, x_test, y_test) or a dict with those keys, saved as an .npz
            beside the study's runs (the validation split is cut from x_train).
        storage: the storage URL (default: the settings').
        settings: how this process runs studies (default: `Settings()`, no environment).
        space_options: the [space] table (the space's OPTIONS).
        prior: the [prior] table (centres replacing the space's).
        enqueue: `search export` files whose trials are queued, each once.
        quiet: print nothing.

    Raises:
        ConfigError, DataError, SpaceError, StorageError, StudyError, ExportError: bad
        input, named; nothing is written.
    """
    settings = (settings or Settings()).replace(storage=storage)
    folder = (settings.runs_dir / name).resolve()
    raw: dict[str, dict[str, Any]] = {"study": {"name": name}, "data": {}, "trials": {}}
    given_apart = ("name", "space", "dataset")
    for key, value in keys.items():
        section = section_of(key)
        if section is None or key in given_apart:
            allowed = [k for k in table_keys() if k not in given_apart]
            raise ConfigError(f"create_study: unknown keyword {key!r}; keys: {', '.join(allowed)}")
        raw[section][key] = value
    raw["data"]["dataset"], arrays = _dataset(data, folder)
    space_object = None
    if isinstance(space, str):
        raw["study"]["space"] = space
    elif hasattr(space, "suggest") and hasattr(space, "build") and hasattr(space, "__file__"):
        raw["study"]["space"] = space.__name__  # a module
    else:
        from spaces import Space

        if not isinstance(space, Space):
            raise ConfigError(
                f"create_study: space is {space!r}; give a space's name, a module, or"
                " search.Space(suggest, build)"
            )
        space_object = space
        raw["study"]["space"] = f"pickle:{folder / 'space.pkl'}"
    raw["space"] = dict(space_options or {})
    raw["prior"] = dict(prior or {})
    config = from_dict(raw, source="create_study")
    path = Path(config.data.dataset.removeprefix("npz:"))
    written = arrays is not None and not path.exists()
    try:
        if written:
            # Checked with the study (as any .npz), and removed again if anything is wrong.
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz", delete=False) as f:
                np.savez(f, **arrays)
            Path(f.name).replace(path)
        return _create(config, settings, space=space_object, enqueue=enqueue, quiet=quiet)
    except BaseException:
        if written:
            path.unlink(missing_ok=True)
        raise


def study_from_file(
    path: str | Path,
    *,
    storage: str | None = None,
    settings: Settings | None = None,
    n_trials: int | None = None,
    timeout_minutes: float | None = None,
    enqueue: Sequence[str | Path] = (),
    quiet: bool = False,
    trains: bool = False,
) -> Study:
    """Create or resume the study a TOML file defines, its budget overridden if given.

    Args:
        trains: this process goes on to train (a worker); else it leaves the GPUs alone.
    """
    settings = (settings or Settings()).replace(storage=storage)
    config = load_config(path).with_budget(n_trials=n_trials, timeout_minutes=timeout_minutes)
    return _create(config, settings, enqueue=enqueue, quiet=quiet, trains=trains, source=str(path))


def load_study(
    name: str,
    *,
    storage: str | None = None,
    settings: Settings | None = None,
    n_trials: int | None = None,
    timeout_minutes: float | None = None,
    enqueue: Sequence[str | Path] = (),
    quiet: bool = False,
) -> Study:
    """A study already in the storage, by name (created by the API, a file or the CLI).

    Args:
        n_trials, timeout_minutes: a new budget, recorded in the study.
        enqueue: `search export` files whose trials are queued, each once.

    Raises:
        StudyError: no such study (the message lists the storage's), or one without a
            definition.
    """
    from search.storage import open_storage
    from search.study import load_definition

    settings = (settings or Settings()).replace(storage=storage)
    backend = open_storage(settings)
    config = load_definition(name, backend, wait_seconds=0)
    if n_trials is None and timeout_minutes is None and not enqueue:
        return Study(config, settings, backend)
    config = config.with_budget(n_trials=n_trials, timeout_minutes=timeout_minutes)
    return _create(config, settings, enqueue=enqueue, quiet=quiet, source=f"study {name!r}")


def _dataset(data: Any, folder: Path) -> tuple[str, dict[str, np.ndarray] | None]:
    """The [data] dataset for `data`: a name as given, or arrays with the .npz they go to.

    The file is named by the arrays' content: other arrays are another dataset, so a study
    given other arrays under its name is a changed study (an error), not a silent swap.
    """
    if isinstance(data, str):
        return data, None
    if isinstance(data, Mapping):
        arrays = dict(data)
    elif isinstance(data, tuple | list) and len(data) == 4:
        arrays = dict(zip(("x_train", "y_train", "x_test", "y_test"), data, strict=True))
    else:
        raise ConfigError(
            "create_study: data must be a dataset name ('fashion_mnist', 'npz:PATH',"
            " 'dir:PATH'), a tuple (x_train, y_train, x_test, y_test) or a dict of those"
        )
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode() + str(arrays[key].dtype).encode() + arrays[key].tobytes())
    return f"npz:{folder / f'data-{digest.hexdigest()[:12]}.npz'}", arrays


def _create(
    config: StudyConfig,
    settings: Settings,
    *,
    space: Any = None,
    enqueue: Sequence[str | Path] = (),
    quiet: bool = False,
    trains: bool = False,
    source: str = "create_study",
) -> Study:
    """Validate a definition, its space and its dataset, then create or check the study."""
    from search.data import load_study_data
    from search.export import exported_params
    from search.storage import open_storage, redact, storage_url
    from search.study import create_study as create_in_storage
    from search.study import enqueue_exported, study_prior
    from spaces import load_space, save_space

    say = _quiet if quiet else _say
    if space is None:
        space = load_space(config.study.space)
    check_space_options(config, space, source=source)
    # Validated before anything is written: a [prior] centre outside its param's range
    # is an error naming the key.
    prior_centre = study_prior(config, space=space)[1] if config.trials.prior else None
    exported = exported_params(enqueue, config, space)
    if not trains and config.data.dataset.startswith("dir:"):
        from search.device import hide_gpus

        # TensorFlow decodes the images below: in a supervisor, on no GPU a worker needs.
        hide_gpus()
    # Loaded to validate it before the study exists (an image folder's every image decoded).
    data = load_study_data(
        config.data, data_dir=settings.data_dir, cache=settings.cache, check=True
    )
    backend = open_storage(settings)
    optuna_study, created = create_in_storage(
        config, backend, dict(space.BASELINES), prior_centre=prior_centre, space=space
    )
    if config.study.space.startswith("pickle:"):
        # Once the study is known to match: the functions given last are what workers run.
        save_space(space, Path(config.study.space.removeprefix("pickle:")))
    n_queued = enqueue_exported(optuna_study, exported)
    n = len(optuna_study.get_trials(deepcopy=False))
    say(
        f"{'created' if created else 'resuming'} study {config.name!r}"
        f" ({_space_name(config, space)} space, {n} trials so far)"
        f" in {redact(storage_url(settings))}"
    )
    if exported:
        skipped = len(exported) - n_queued
        say(
            f"queued {n_queued} of the {len(exported)} exported trials from"
            f" {', '.join(map(str, enqueue))}"
            + (f" ({skipped} with params already in the study)" if skipped else "")
        )
    return Study(config, settings, backend, data=data)


def _space_name(config: StudyConfig, space: Any) -> str:
    return getattr(space, "__name__", config.study.space).removeprefix("spaces.")


@dataclass(frozen=True)
class Retrained:
    """A retrained (or kept) model tested once: its report and where its files are."""

    report: dict[str, Any]
    path: Path

    @property
    def test_accuracy(self) -> float:
        return self.report["test"]["accuracy"]

    @property
    def validation_accuracy(self) -> float:
        return self.report["validation"]["accuracy"]

    def model(self) -> Any:
        """The saved model (`model.keras`), as plain Keras loads it."""
        import keras

        return keras.models.load_model(self.path / "model.keras")


class Study:
    """A study in a storage: run it, read its trials and models, export, retrain, report.

    Made by `create_study`, `study_from_file` or `load_study`. `optuna` is the underlying
    `optuna.Study`, for Optuna's own tools (visualization, `trials_dataframe`).
    """

    def __init__(
        self,
        config: StudyConfig,
        settings: Settings,
        storage: optuna.storages.BaseStorage,
        *,
        data: Any = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.storage = storage
        # The loaded dataset, when this process loaded it (a worker trains on it), else None.
        self.dataset = data
        self.optuna = optuna.load_study(study_name=config.name, storage=storage)

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return f"Study({self.name!r}, space={self.config.study.space!r})"

    # --- running -------------------------------------------------------------------

    def optimize(
        self,
        workers: int = 1,
        *,
        gpus: Sequence[int | str] | None = None,
        workers_per_gpu: int = 1,
        threads: int | None = None,
        max_trials_per_process: int | None = RECYCLE_AFTER,
        mixed_precision: bool = False,
        quiet: bool = False,
        display: Any = None,
    ) -> Study:
        """Run the study with `workers` local worker processes until its budget is spent.

        Each worker is a process of its own (TensorFlow's memory and threads are a
        process's), the same as `search run` starts; progress shows here (a live block in a
        terminal or a notebook, plain lines elsewhere). At the study's timeout running
        trials stop at their next batch; Ctrl-C (a notebook's interrupt) stops the workers,
        fails and requeues their trials, and raises KeyboardInterrupt.

        Args:
            gpus: run the workers on these GPUs, `workers_per_gpu` per GPU, not `workers`.
            threads: TensorFlow threads per worker (default: the settings', else the
                cores divided by the workers).
            max_trials_per_process: a worker process is replaced after this many trials
                (None: never), which bounds its memory.

        Raises:
            WorkersFailed: the workers kept failing before the budget was spent.
        """
        code = self.run(
            workers,
            gpus=gpus,
            workers_per_gpu=workers_per_gpu,
            threads=threads,
            max_trials_per_process=max_trials_per_process,
            mixed_precision=mixed_precision,
            quiet=quiet,
            display=display,
        )
        if code in (130, 143):
            raise KeyboardInterrupt
        if code:
            raise WorkersFailed(
                f"study {self.name!r}: workers kept failing; their logs are in"
                f" {self.log_dir}/worker-*.log"
            )
        return self

    def run(
        self,
        workers: int = 1,
        *,
        gpus: Sequence[int | str] | None = None,
        workers_per_gpu: int = 1,
        threads: int | None = None,
        max_trials_per_process: int | None = RECYCLE_AFTER,
        mixed_precision: bool = False,
        quiet: bool = False,
        display: Any = None,
    ) -> int:
        """`optimize`, returning the exit code `search run` exits with (0, 1, 130, 143)."""
        from search.device import default_threads
        from search.progress import Display, notebook_display
        from search.status import describe_best
        from search.supervisor import supervise

        gpu_names = [str(g) for g in gpus] if gpus else None
        n_workers = len(gpu_names) * workers_per_gpu if gpu_names else workers
        threads = threads or self.settings.threads or default_threads(n_workers)
        display = display or notebook_display(quiet=quiet) or Display(quiet=quiet)
        code = supervise(
            self.config,
            self.storage,
            self.settings.replace(threads=threads),
            n_workers=n_workers,
            log_dir=self.log_dir,
            gpus=gpu_names,
            max_trials_per_process=max_trials_per_process,
            mixed_precision=mixed_precision,
            display=display,
        )
        if not quiet:
            say = display.final
            say(describe_best(self.name, self.storage))
            numbers = self.attach_kept()
            if numbers:
                say(
                    f"kept best-epoch models of trials {numbers} in"
                    f" {self.settings.checkpoints}/{self.name}/kept (artifacts in the"
                    " dashboard; `search export --weights` adds them to an export)"
                )
        return code

    @property
    def log_dir(self) -> Path:
        """Where `optimize` writes its workers' logs."""
        return self.settings.runs_dir / self.name / "logs"

    def reap(self) -> list[int]:
        """Fail trials whose worker stopped heartbeating and queue their retries; their
        numbers."""
        from search.failures import reap

        before = len(self.optuna.get_trials(deepcopy=False))
        reap(self.optuna)
        return [t.number for t in self.optuna.get_trials(deepcopy=False)[before:]]

    # --- reading -------------------------------------------------------------------

    def trials(self, states: Sequence[TrialState] | None = None) -> list[TrialRecord]:
        """The study's trials, oldest first (`states`: only those), each a `TrialRecord`:
        its state, value, params, history per epoch, best epoch, seed, origin, failure..."""
        return [TrialRecord.of(t) for t in self.optuna.get_trials(deepcopy=False, states=states)]

    def best_trials(self, k: int = 1) -> list[TrialRecord]:
        """The `k` best completed trials, best first."""
        from search.ranking import ranked_trials

        complete = self.optuna.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return [TrialRecord.of(t) for t in ranked_trials(complete, self.config.direction)[:k]]

    @property
    def best_trial(self) -> TrialRecord:
        """The best completed trial.

        Raises:
            ExportError: no trial has completed yet.
        """
        best = self.best_trials(1)
        if not best:
            raise ExportError(f"study {self.name!r} has no completed trial yet")
        return best[0]

    def config_of(self, number: int) -> dict[str, Any]:
        """A trial's config: its params replayed through the space's `suggest`, with the
        study's fixed [space] options: what `build` was given."""
        from spaces import load_space

        space = load_space(self.config.study.space)
        params = self.optuna.trials[number].params
        return self.config.space_config(space, space.suggest(optuna.trial.FixedTrial(params)))

    def best_model(self, number: int | None = None) -> Any:
        """A completed trial's kept best-epoch model (default: the best trial's), a
        `keras.Model` as trained (plain Keras loads it: `search.training.save_model`).

        Raises:
            ExportError: checkpoints are off, or the trial kept no model (only the best
                `keep_best` completed trials do).
        """
        import keras

        number = self.best_trial.number if number is None else number
        with tempfile.TemporaryDirectory() as tmp:
            path = self._fetch_kept([number], Path(tmp))[number]
            return keras.models.load_model(path)

    def attach_kept(self) -> list[int]:
        """Attach the kept models to their trials for the dashboard; their trial numbers."""
        from search.checkpoints import attach_kept, open_store

        return attach_kept(open_store(self.settings.checkpoints), self.optuna)

    def _fetch_kept(self, numbers: Sequence[int], folder: Path) -> dict[int, Path]:
        """Each trial's kept model, fetched into `folder` (trial-N.keras).

        Raises:
            ExportError: a trial has no kept model (before anything is fetched).
        """
        from search.checkpoints import kept_key, kept_numbers, open_store

        store = open_store(self.settings.checkpoints)
        if store is None:
            raise ExportError(
                "checkpoints are off (--checkpoints none): no trial kept weights; train the"
                " config again with `search retrain` on an export instead"
            )
        kept = set(kept_numbers(store, self.name))
        missing = [n for n in numbers if n not in kept]
        if missing:
            raise ExportError(
                f"trial{'s' * (len(missing) > 1)} {missing} of {self.name!r} kept no weights"
                f" in {store.location}/{self.name}/kept (only the best --keep-best completed"
                " trials do, from this version on): train the config again with `search"
                " retrain` on the export instead"
            )
        fetched = {}
        for number in numbers:
            target = folder / f"trial-{number}.keras"
            if not store.get(kept_key(self.name, number), target):
                raise ExportError(f"trial {number}'s kept weights were removed meanwhile")
            fetched[number] = target
        return fetched

    # --- selecting -----------------------------------------------------------------

    def export(
        self,
        path: str | Path | None = None,
        *,
        top: int = 1,
        reevaluate: int | None = None,
        threads: int | None = None,
        jobs: int | None = None,
        weights: bool = False,
        log: Log = _say,
    ) -> Export:
        """Write the `top` best completed trials as a JSON bundle (`search export`).

        Args:
            path: default: <runs_dir>/<study>/best.json.
            reevaluate: retrain each with this many other seeds (>= 2) on the train
                split and rank them by their mean validation value.
            threads, jobs: TensorFlow threads per re-evaluation, and how many at once.
            weights: add each trial's kept best-epoch model beside the bundle.
        """
        import os

        from search.device import configure_threads
        from search.export import export_best, read_export, write_export

        if reevaluate is not None and reevaluate < 2:
            raise ExportError(
                f"--reevaluate is {reevaluate}, but must be >= 2: a spread needs two seeds"
            )
        path = Path(path) if path else self.settings.runs_dir / self.name / "best.json"
        bundle = export_best(self.name, self.storage, top=top)
        if reevaluate:
            from search.retrain import reevaluate as reevaluate_trials

            # Before TensorFlow starts: the trials' own thread count reproduces them.
            threads = threads or bundle["trials"][0].get("threads") or 0
            configure_threads(threads)
            cores = os.cpu_count() or 1
            bundle = reevaluate_trials(
                Export(path, bundle, self.config),
                n_seeds=reevaluate,
                jobs=jobs or (max(1, cores // threads) if threads else 1),
                threads=threads,
                data_dir=self.settings.data_dir,
                cache=self.settings.cache,
                log=log,
            )
        numbers = [entry["number"] for entry in bundle["trials"]]
        scratch = Path(tempfile.mkdtemp(prefix="search-export-"))
        try:
            kept = self._fetch_kept(numbers, scratch) if weights else {}
            for entry in bundle["trials"]:
                if entry["number"] in kept:
                    # Relative to the bundle, so the two move together.
                    entry["weights"] = f"{path.stem}-trial-{entry['number']}.keras"
            write_export(bundle, path)
            for number, source in kept.items():
                shutil.move(source, path.parent / f"{path.stem}-trial-{number}.keras")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if kept:
            self.attach_kept()
        ranked = f", best mean over {reevaluate} seeds first," if reevaluate else ""
        log(
            f"exported trial{'s' * (len(numbers) > 1)} {numbers} of {self.name!r}{ranked}"
            f" to {path}"
        )
        return read_export(path)

    def retrain(
        self,
        export: Export | str | Path | None = None,
        *,
        number: int | None = None,
        epochs: int | None = None,
        seed: int | None = None,
        from_weights: bool = False,
        output: str | Path | None = None,
        log: Log = _say,
    ) -> Retrained:
        """Train an exported trial again on the train split, then test it once.

        Args:
            export: an export (or its file; default: a fresh `export()` of the best trial,
                with its kept model when `from_weights`).
            from_weights: test the trial's kept model instead of training it again.
        """
        return retrain(
            export if export is not None else self.export(weights=from_weights, log=log),
            number=number,
            epochs=epochs,
            seed=seed,
            from_weights=from_weights,
            output=output,
            settings=self.settings,
            log=log,
        )

    def report(
        self, output: str | Path | None = None, *, retrained: Sequence[Path] = (), log: Log = _say
    ) -> Path:
        """Write the study's HTML report (with the retrained models found); its path."""
        from search.report import write_report

        folder = self.settings.runs_dir / self.name
        return write_report(
            self.name,
            self.storage,
            Path(output) if output else folder,
            retrained=list(retrained) or [folder],
            data_dir=self.settings.data_dir,
            log=log,
        )


def retrain(
    export: Export | str | Path,
    *,
    number: int | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    from_weights: bool = False,
    output: str | Path | None = None,
    settings: Settings | None = None,
    log: Log = _say,
) -> Retrained:
    """Retrain an exported trial (`search retrain`), test it once; no storage needed.

    Writes report.json, model.keras, classes.json and plots into `output` (default:
    trial-N beside the export file).
    """
    from search.export import read_export
    from search.retrain import retrain as retrain_entry

    settings = settings or Settings()
    if not isinstance(export, Export):
        export = read_export(export)
    entry = export.entry(number)
    out_dir = Path(output) if output else export.path.parent / f"trial-{entry['number']}"
    report = retrain_entry(
        export,
        out_dir,
        number=entry["number"],
        epochs=epochs,
        seed=seed,
        data_dir=settings.data_dir,
        cache=settings.cache,
        from_weights=from_weights,
        log=log,
    )
    return Retrained(report, out_dir)


def reap(
    names: Sequence[str],
    settings: Settings,
    *,
    every: float | None = None,
    log: Log = _say,
) -> None:
    """Fail stale trials of these studies (all, if none named) and queue their retries;
    with `every`, keep at it at that period until interrupted (`search reap`)."""
    from search.failures import reap as reap_study
    from search.storage import TRANSIENT_ERRORS, describe_error, open_storage
    from search.study import open_study, study_names

    backend = open_storage(settings)
    names = list(names) or study_names(backend)
    studies = [open_study(name, backend) for name in names]
    if every:
        log(
            f"reaping stale trials of {', '.join(names) or 'no study yet'} every {every:g}s;"
            " Ctrl-C stops"
        )
    while True:
        for study in studies:
            try:
                before = len(study.get_trials(deepcopy=False))
                reap_study(study)
                retried = [t.number for t in study.get_trials(deepcopy=False)[before:]]
            except TRANSIENT_ERRORS as e:
                if not every:
                    raise
                # A reaper outlives database restarts: the next round catches up.
                log(
                    f"{study.study_name}: storage unreachable, trying again in {every:g}s"
                    f" ({describe_error(e)})"
                )
                continue
            if retried or not every:
                log(
                    f"{study.study_name}: {len(retried)} stale trials failed and queued again"
                    + (f" as {retried}" if retried else "")
                )
        if not every:
            return
        time.sleep(every)


__all__ = [
    "ConfigError",
    "DataError",
    "Retrained",
    "Study",
    "StudyError",
    "USER_ERRORS",
    "WorkersFailed",
    "create_study",
    "load_study",
    "reap",
    "retrain",
    "study_from_file",
]
