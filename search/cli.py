"""The `search` command: plain argparse, one function per subcommand.

Every command takes `--storage` (else `SEARCH_STORAGE`, else sqlite:///runs/search.db).
Bad input (a study file, a dataset, a storage URL, a study name) exits with code 2 and a
message naming the file, key or value and the rule it broke, before anything is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path

import optuna

from search import __version__
from search.checkpoints import (
    CHECKPOINTS_ENV,
    DEFAULT_KEEP_BEST,
    DEFAULT_LOCATION,
    DEFAULT_MAX_RETRIES,
    KEEP_BEST_ENV,
    MAX_RETRIES_ENV,
    CheckpointError,
)
from search.config import ConfigError, StudyConfig, check_space_options, load_config
from search.dashboard import DEFAULT_HOST, DEFAULT_PORT, DashboardError, serve_dashboard
from search.data import CACHE_MODES, DataError, Dataset, resolve_cache
from search.export import ExportError, exported_params
from search.kubernetes import ManifestError
from search.slurm import SubmitError
from search.storage import (
    GRACE_ENV,
    HEARTBEAT_ENV,
    StorageError,
    open_storage,
    redact,
    storage_url,
)
from search.study import StudyError
from spaces import SpaceError

USER_ERRORS = (
    CheckpointError,
    ConfigError,
    DashboardError,
    DataError,
    ExportError,
    ManifestError,
    SpaceError,
    StorageError,
    StudyError,
    SubmitError,
)
RUNS_DIR = Path("runs")
# -v/-q as a number (-2 to 1), for the worker processes a supervisor starts.
LOG_LEVEL_ENV = "SEARCH_LOG_LEVEL"
# `search run` restarts a worker process after this many trials: memory held across
# trials by TensorFlow grows with each (benchmarks/results/worker_memory.md).
RECYCLE_AFTER = 10


def main(argv: list[str] | None = None) -> int:
    # Heartbeats and stale-trial reaping are marked experimental; we rely on them knowingly.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    parser = _parser()
    args = parser.parse_args(argv)
    _set_log_level(args)
    # Storage options in the environment, where open_storage and the workers find them.
    for value, name in (
        (args.heartbeat_interval, HEARTBEAT_ENV),
        (args.grace_period, GRACE_ENV),
        (args.checkpoints, CHECKPOINTS_ENV),
        (args.keep_best, KEEP_BEST_ENV),
        (args.max_retries, MAX_RETRIES_ENV),
    ):
        if value is not None:
            os.environ[name] = str(value)
    if hasattr(args, "study"):
        _resolve_study_name(parser, args)
    try:
        return args.command(args) or 0
    except USER_ERRORS as e:
        print(f"search {args.name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"search {args.name}: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="search", description="Hyperparameter search for Keras image classifiers."
    )
    parser.add_argument("--version", action="version", version=f"search {__version__}")
    # Shared by every command, so `search run -v STUDY.toml` works as well as `search -v run`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--storage",
        help="storage URL (default: $SEARCH_STORAGE, else sqlite:///runs/search.db)",
    )
    common.add_argument(
        "--heartbeat-interval",
        type=_positive_int,
        metavar="SECONDS",
        help="seconds between a running trial's heartbeats (default: $SEARCH_HEARTBEAT_INTERVAL,"
        " else 10); workers started by `run` inherit it",
    )
    common.add_argument(
        "--grace-period",
        type=_positive_int,
        metavar="SECONDS",
        help="seconds without a heartbeat before a running trial counts as dead and is retried,"
        " more than the interval (default: $SEARCH_GRACE_PERIOD, else 60)",
    )
    common.add_argument(
        "--checkpoints",
        metavar="LOCATION",
        help="where running trials save a checkpoint after every epoch and completed trials"
        " keep their best epoch's model: a folder every worker reaches, s3://BUCKET/PREFIX, or"
        f" none (default: ${CHECKPOINTS_ENV}, else {DEFAULT_LOCATION}/)",
    )
    common.add_argument(
        "--keep-best",
        type=_count,
        metavar="K",
        help="keep the best-epoch models of the study's best K completed trials, 0 none"
        f" (default: ${KEEP_BEST_ENV}, else {DEFAULT_KEEP_BEST})",
    )
    common.add_argument(
        "--max-retries",
        type=_count,
        metavar="N",
        help="times a trial whose worker died may be retried from its checkpoint while each"
        f" retry makes progress (default: ${MAX_RETRIES_ENV}, else {DEFAULT_MAX_RETRIES})",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more (Optuna's debug messages); workers started by `run` inherit it",
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=0,
        help="log less: -q warnings and errors only (`search run`: its final line only),"
        " -qq errors only",
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(command=func, name=name)
        return p

    p = command("run", _run, "Create or resume a study and run it with N local workers.")
    p.add_argument("study_file", metavar="STUDY.toml")
    p.add_argument("--workers", type=_positive_int, help="worker processes (1)")
    p.add_argument(
        "--gpus",
        type=_gpu_list,
        metavar="0,1,...",
        help="run the workers on these GPUs, each worker on one (CUDA_VISIBLE_DEVICES):"
        " --workers-per-gpu of them per GPU, instead of --workers",
    )
    p.add_argument(
        "--workers-per-gpu", type=_positive_int, metavar="K", help="workers per GPU (1)"
    )
    _budget_flags(p)
    _enqueue_flag(p)
    _worker_flags(p, recycle_default=RECYCLE_AFTER)
    p.add_argument(
        "--no-recycle",
        action="store_true",
        help="keep each worker process for all its trials (no --max-trials-per-process)",
    )

    p = command("worker", _worker, "Run one worker process for a study (any machine).")
    p.add_argument("study_file", metavar="STUDY.toml", nargs="?")
    p.add_argument("--study-name", help="a study already in the storage, instead of a file")
    p.add_argument("--worker-index", type=int, default=None, help="seeds the sampler (0)")
    # From `search run`: its deadline (a Unix time), which a recycled worker keeps.
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    _worker_flags(p)
    _gpu_flag(p)

    p = command("create", _create, "Create a study from a file (idempotent); runs nothing.")
    p.add_argument("study_file", metavar="STUDY.toml")
    _budget_flags(p)
    _enqueue_flag(p)
    _data_dir_flag(p)

    p = command("status", _status, "List the studies, or one study's trials and best trial.")
    _study_name_args(p, required=False)
    p.add_argument(
        "-f",
        "--format",
        choices=("table", "json"),
        default="table",
        help="table (default) or json, for scripts and jq",
    )

    p = command("dashboard", _dashboard, "Serve optuna-dashboard over the storage (Ctrl-C stops).")
    p.add_argument("study_file", metavar="STUDY.toml", nargs="?", help="print this study's page")
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on ({DEFAULT_HOST}: this machine only; the dashboard has no"
        " authentication)",
    )
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT}; 0: any free port)"
    )

    p = command("reap", _reap, "Fail trials whose worker stopped heartbeating; retry them.")
    _study_name_args(p, required=False, help="default: all studies")
    p.add_argument(
        "--every", type=float, metavar="SECONDS", help="keep reaping at this period until stopped"
    )

    p = command("export", _export, "Write a study's best trial (or K best) as a JSON bundle.")
    _study_name_args(p, required=True)
    p.add_argument("-o", "--output", metavar="FILE", help="default: runs/STUDY_NAME/best.json")
    p.add_argument("--top", type=_positive_int, default=1, help="the K best completed trials (1)")
    p.add_argument(
        "--reevaluate",
        type=_positive_int,
        metavar="S",
        help="retrain each of the K with S other seeds (>= 2) on the train split and rank them"
        " by their mean of the study's metric on the validation split",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        help="TensorFlow threads per re-evaluation training (default: the best trial's)",
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        help="re-evaluation trainings at once, each in its own process (default: this"
        " machine's cores divided by the threads)",
    )
    p.add_argument(
        "--weights",
        action="store_true",
        help="add each exported trial's kept best-epoch model.keras beside the bundle"
        " (for -o best.json: best-trial-N.keras); a trial without kept weights is an error",
    )
    _data_dir_flag(p)
    _cache_flag(p)

    p = command(
        "retrain", _retrain, "Retrain an exported trial, then evaluate it once on the test set."
    )
    p.add_argument("export_file", metavar="FILE.json")
    p.add_argument("-o", "--output", metavar="DIR", help="default: trial-N beside FILE.json")
    p.add_argument("--trial", type=int, help="which exported trial (default: the best)")
    p.add_argument("--epochs", type=_positive_int, help="default: the trial's best epoch")
    p.add_argument("--seed", type=int, help="default: the trial's seed")
    p.add_argument(
        "--from-weights",
        action="store_true",
        help="test the trial's kept best-epoch model (exported with `search export --weights`)"
        " instead of training it again: the model retraining would reproduce, in seconds",
    )
    p.add_argument(
        "--threads", type=_positive_int, help="TensorFlow threads (default: the trial's)"
    )
    _data_dir_flag(p)
    _cache_flag(p)
    _gpu_flag(p)
    _mixed_precision_flag(p)

    p = command("report", _report, "Write a study's HTML report, with its retrained configs.")
    _study_name_args(p, required=True)
    p.add_argument("-o", "--output", metavar="DIR", help="default: runs/STUDY_NAME")
    p.add_argument(
        "--retrained",
        metavar="PATH",
        type=_existing_path,
        action="append",
        help="a retrain's report.json, or a directory searched for them; repeatable"
        " (default: runs/STUDY_NAME)",
    )
    _data_dir_flag(p)
    # Imported here: search.submit builds its commands on this module's flags and _prepare.
    from search.submit import add_submit_commands

    add_submit_commands(sub, common)
    return parser


def _study_name_args(p: argparse.ArgumentParser, *, required: bool, help: str = "") -> None:
    """A study by name: `--study-name NAME`, as Optuna's CLI, or positional as a shorthand."""
    p.add_argument("study", metavar="STUDY_NAME", nargs="?", help=help or None)
    p.add_argument("--study-name", help="the study's name (the same as STUDY_NAME)")
    p.set_defaults(study_required=required)


def _resolve_study_name(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.study and args.study_name and args.study != args.study_name:
        parser.error(
            f"{args.name}: STUDY_NAME {args.study!r} and --study-name"
            f" {args.study_name!r} differ; give one"
        )
    args.study_name = args.study_name or args.study
    if args.study_required and not args.study_name:
        parser.error(f"{args.name}: give the study as STUDY_NAME or --study-name NAME")


def _set_log_level(args: argparse.Namespace) -> None:
    """Optuna's log level from -v/-q, else from the environment a supervisor passed on."""
    steps = args.verbose - args.quiet
    if steps:
        os.environ[LOG_LEVEL_ENV] = str(max(-2, min(1, steps)))
    steps = int(os.environ.get(LOG_LEVEL_ENV, "0"))
    levels = {-2: optuna.logging.ERROR, -1: optuna.logging.WARNING, 0: optuna.logging.INFO}
    optuna.logging.set_verbosity(levels.get(steps, optuna.logging.DEBUG))


def _budget_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-trials", type=_positive_int, help="override [trials] n_trials")
    p.add_argument("--timeout-minutes", type=float, help="override [trials] timeout_minutes")


def _enqueue_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--enqueue",
        metavar="FILE.json",
        action="append",
        help="queue the trials of a `search export` file of the same space, each once; repeatable",
    )


def _worker_flags(p: argparse.ArgumentParser, *, recycle_default: int | None = None) -> None:
    _data_dir_flag(p)
    _cache_flag(p)
    _mixed_precision_flag(p)
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="TensorFlow threads per worker (default: $SEARCH_THREADS, else cores / workers)",
    )
    p.add_argument(
        "--max-trials-per-process",
        type=_positive_int,
        default=recycle_default,
        help="restart a worker process after this many trials, bounding its memory"
        + (f" ({recycle_default})" if recycle_default else ""),
    )


def _cache_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache",
        choices=CACHE_MODES,
        help="where a dir:PATH dataset's decoded images are kept between epochs: none"
        " (decoded every epoch), memory, or disk (a temporary directory); results do not"
        " depend on it (default: $SEARCH_CACHE, else none)",
    )


def _gpu_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gpu",
        type=_gpu_number,
        metavar="N",
        help="train on this GPU only (sets CUDA_VISIBLE_DEVICES; memory growth on)",
    )


def _mixed_precision_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mixed-precision",
        action="store_true",
        help="compute in float16 on a GPU (Keras' mixed_float16); ignored, with a warning,"
        " without one",
    )


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _gpu_number(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPU number (0, 1, ...)")
    return int(text)


def _gpu_list(text: str) -> list[str]:
    gpus = [g.strip() for g in text.split(",")]
    if not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct GPU numbers, as in 0,1")
    return gpus


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or directory")
    return path


def _prepare(
    args: argparse.Namespace, *, trains: bool = False, quiet: bool = False
) -> tuple[StudyConfig, object, Dataset]:
    """Validate a study file, its space and its dataset, then create or check the study.

    Returns the definition, the storage and the loaded dataset (a worker trains on it).

    Args:
        trains: this process goes on to train (a worker); else it leaves the GPUs alone.
        quiet: say nothing (`search run -q`).
    """
    from search.data import load_study_data
    from search.study import create_study, enqueue_exported, study_prior
    from spaces import load_space

    config = load_config(args.study_file).with_budget(
        n_trials=args.n_trials, timeout_minutes=args.timeout_minutes
    )
    space = load_space(config.study.space)
    check_space_options(config, space, source=args.study_file)
    # Validated before anything is written: a [prior] centre outside its param's range
    # is an error naming the key.
    prior_centre = study_prior(config)[1] if config.trials.prior else None
    exported = exported_params(args.enqueue or [], config, space)
    if not trains and config.data.dataset.startswith("dir:"):
        from search.worker import hide_gpus

        # TensorFlow decodes the images below: in a supervisor, on no GPU a worker needs.
        hide_gpus()
    # Loaded to validate it before the study exists (an image folder's every image decoded).
    data = load_study_data(
        config.data,
        data_dir=args.data_dir,
        cache=resolve_cache(getattr(args, "cache", None)),
        check=True,
    )
    storage = _open(args)
    study, created = create_study(
        config, storage, dict(space.BASELINES), prior_centre=prior_centre
    )
    n_queued = enqueue_exported(study, exported)
    if quiet:
        return config, storage, data
    n = len(study.get_trials(deepcopy=False))
    print(
        f"{'created' if created else 'resuming'} study {config.name!r}"
        f" ({config.study.space} space, {n} trials so far) in {redact(storage_url(args.storage))}"
    )
    if exported:
        skipped = len(exported) - n_queued
        print(
            f"queued {n_queued} of the {len(exported)} exported trials from"
            f" {', '.join(args.enqueue)}"
            + (f" ({skipped} with params already in the study)" if skipped else "")
        )
    return config, storage, data


def _data_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        help="directory of the Fashion-MNIST IDX files, and the root of a relative dir:PATH"
        " (default: $SEARCH_DATA_DIR)",
    )


def _open(args: argparse.Namespace):
    return open_storage(args.storage)


def _run(args: argparse.Namespace) -> int:
    from search.progress import Display
    from search.worker import supervise

    if args.gpus and args.workers:
        raise ConfigError(
            "give --workers or --gpus, not both: with --gpus the workers are the GPUs times"
            " --workers-per-gpu"
        )
    if args.workers_per_gpu and not args.gpus:
        raise ConfigError("--workers-per-gpu needs --gpus")
    n_workers = len(args.gpus) * (args.workers_per_gpu or 1) if args.gpus else args.workers or 1
    config, storage, _ = _prepare(args, quiet=args.quiet > 0)
    threads = args.threads or _default_threads(n_workers)
    worker_args = ["--study-name", config.name, "--threads", str(threads)]
    if args.storage:
        worker_args += ["--storage", args.storage]
    if args.data_dir:
        worker_args += ["--data-dir", args.data_dir]
    if args.cache:
        worker_args += ["--cache", args.cache]
    if args.mixed_precision:
        worker_args += ["--mixed-precision"]
    if args.max_trials_per_process and not args.no_recycle:
        worker_args += ["--max-trials-per-process", str(args.max_trials_per_process)]
    code = supervise(
        config,
        storage,
        worker_args=worker_args,
        n_workers=n_workers,
        log_dir=RUNS_DIR / config.name / "logs",
        gpus=args.gpus,
        display=Display(quiet=args.quiet > 0),
    )
    if args.quiet:
        return code
    _print_best(config.name, storage)
    _attach_kept(config.name, storage)
    return code


def _attach_kept(study_name: str, storage: optuna.storages.BaseStorage) -> None:
    """Attach the study's kept models to it for the dashboard, and say where they are."""
    from search.checkpoints import attach_kept, open_store

    store = open_store()
    numbers = attach_kept(store, optuna.load_study(study_name=study_name, storage=storage))
    if store is not None and numbers:
        print(
            f"kept best-epoch models of trials {numbers} in {store.location}/{study_name}/kept"
            " (artifacts in the dashboard; `search export --weights` adds them to an export)"
        )


def _worker(args: argparse.Namespace) -> int:
    from search.pacing import STOP, Interrupted
    from search.study import load_definition
    from search.worker import TIME_UP, configure_device, run_worker

    if bool(args.study_file) == bool(args.study_name):
        raise ConfigError("give either STUDY.toml or --study-name NAME")
    cache = resolve_cache(args.cache)
    # Set before TensorFlow starts; two 1-thread workers beat one 2-thread worker on CPU.
    configure_device(
        threads=args.threads or int(os.environ.get("SEARCH_THREADS", "0")) or 1,
        gpu=args.gpu,
        mixed_precision=args.mixed_precision,
    )
    # Ctrl-C (which reaches every worker) or SIGTERM (compose, the supervisor): finish the
    # current batch, fail the trial with its reason and queue it again, then exit.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: STOP.set())
    if args.study_file:
        args.n_trials = args.timeout_minutes = args.enqueue = None
        config, storage, data = _prepare(args, trains=True)
        name = config.name
    else:
        name = args.study_name
        storage = _open(args)
        config = load_definition(name, storage)
        data = None
    index = args.worker_index if args.worker_index is not None else _worker_seed_offset()
    try:
        run_worker(
            name,
            storage,
            worker_index=index,
            data_dir=args.data_dir,
            data=data,
            cache=cache,
            max_trials=args.max_trials_per_process,
            deadline=args.deadline,
        )
    except Interrupted as e:
        print(f"search worker: stopped ({e}); the trial was queued again", file=sys.stderr)
        return 130
    # A timeout is the study's normal end, not an interruption.
    return 130 if STOP.is_set() and not TIME_UP.is_set() else 0


def _create(args: argparse.Namespace) -> int:
    _prepare(args)
    return 0


def _status(args: argparse.Namespace) -> int:
    from search.status import print_status

    print_status(_open(args), args.study_name, output_format=args.format)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from search.checkpoints import artifact_store, open_store

    study_name = load_config(args.study_file).name if args.study_file else None
    serve_dashboard(
        _open(args),
        host=args.host,
        port=args.port,
        study_name=study_name,
        storage_description=redact(storage_url(args.storage)),
        artifacts=artifact_store(open_store()),
    )
    return 0


def _reap(args: argparse.Namespace) -> int:
    import time

    from search.failures import reap
    from search.storage import TRANSIENT_ERRORS, describe_error
    from search.study import open_study, study_names

    storage = _open(args)
    names = [args.study_name] if args.study_name else study_names(storage)
    # The grace period is this process's storage option: the one the workers run with.
    studies = [open_study(name, storage) for name in names]
    if args.every:
        print(
            f"reaping stale trials of {', '.join(names) or 'no study yet'}"
            f" every {args.every:g}s; Ctrl-C stops",
            flush=True,
        )
    while True:
        for study in studies:
            try:
                before = len(study.get_trials(deepcopy=False))
                reap(study)
                retried = [t.number for t in study.get_trials(deepcopy=False)[before:]]
            except TRANSIENT_ERRORS as e:
                if not args.every:
                    raise
                # A reaper outlives database restarts: the next round catches up.
                print(
                    f"{study.study_name}: storage unreachable, trying again in"
                    f" {args.every:g}s ({describe_error(e)})",
                    flush=True,
                )
                continue
            if retried or not args.every:
                print(
                    f"{study.study_name}: {len(retried)} stale trials failed and queued again"
                    + (f" as {retried}" if retried else ""),
                    flush=True,
                )
        if not args.every:
            return 0
        time.sleep(args.every)


def _export(args: argparse.Namespace) -> int:
    from search.export import Export, export_best, write_export
    from search.study import load_definition

    if args.reevaluate == 1:
        raise ExportError("--reevaluate is 1, but must be >= 2: a spread needs two seeds")
    storage = _open(args)
    bundle = export_best(args.study_name, storage, top=args.top)
    path = Path(args.output) if args.output else RUNS_DIR / args.study_name / "best.json"
    if args.reevaluate:
        from search.worker import configure_threads

        # Before TensorFlow starts: the trials' own thread count reproduces their training.
        threads = args.threads or bundle["trials"][0].get("threads") or 0
        configure_threads(threads)
        from search.retrain import reevaluate

        definition = load_definition(args.study_name, storage, wait_seconds=0)
        cores = os.cpu_count() or 1
        bundle = reevaluate(
            Export(path, bundle, definition),
            n_seeds=args.reevaluate,
            jobs=args.jobs or (max(1, cores // threads) if threads else 1),
            threads=threads,
            data_dir=args.data_dir,
            cache=resolve_cache(args.cache),
            log=lambda line: print(line, flush=True),
        )
    weights = _kept_weights(args.study_name, storage, bundle) if args.weights else {}
    for entry in bundle["trials"]:
        if entry["number"] in weights:
            # Relative to the bundle, so the two move together.
            entry["weights"] = f"{path.stem}-trial-{entry['number']}.keras"
    write_export(bundle, path)
    for number, source in weights.items():
        shutil.move(source, path.parent / f"{path.stem}-trial-{number}.keras")
    numbers = [entry["number"] for entry in bundle["trials"]]
    ranked = f", best mean over {args.reevaluate} seeds first," if args.reevaluate else ""
    print(
        f"exported trial{'s' * (len(numbers) > 1)} {numbers} of {args.study_name!r}{ranked}"
        f" to {path}"
    )
    return 0


def _kept_weights(
    study_name: str, storage: optuna.storages.BaseStorage, bundle: dict
) -> dict[int, Path]:
    """Each exported trial's kept model, fetched to a temporary file beside the bundle.

    Raises:
        ExportError: an exported trial has no kept model (before anything is written).
    """
    import tempfile

    from search.checkpoints import attach_kept, kept_key, kept_numbers, open_store

    store = open_store()
    if store is None:
        raise ExportError(
            "--weights, but checkpoints are off (--checkpoints none): no trial kept weights;"
            " train the config again with `search retrain` on the export instead"
        )
    kept = set(kept_numbers(store, study_name))
    missing = [e["number"] for e in bundle["trials"] if e["number"] not in kept]
    if missing:
        raise ExportError(
            f"trial{'s' * (len(missing) > 1)} {missing} of {study_name!r} kept no weights in"
            f" {store.location}/{study_name}/kept (only the best --keep-best completed trials"
            " do, from this version on): train the config again with `search retrain` on"
            " the export instead"
        )
    scratch = Path(tempfile.mkdtemp(prefix="search-export-"))
    fetched = {}
    for entry in bundle["trials"]:
        target = scratch / f"trial-{entry['number']}.keras"
        if not store.get(kept_key(study_name, entry["number"]), target):
            raise ExportError(f"trial {entry['number']}'s kept weights were removed meanwhile")
        fetched[entry["number"]] = target
    attach_kept(store, optuna.load_study(study_name=study_name, storage=storage))
    return fetched


def _retrain(args: argparse.Namespace) -> int:
    from search.export import read_export
    from search.worker import configure_device

    export = read_export(args.export_file)
    entry = export.entry(args.trial)
    cache = resolve_cache(args.cache)
    # Before TensorFlow starts: the trial's own thread count reproduces its numbers.
    configure_device(
        threads=args.threads or entry.get("threads") or 0,
        gpu=args.gpu,
        mixed_precision=args.mixed_precision,
    )
    from search.retrain import retrain

    out_dir = Path(args.output) if args.output else export.path.parent / f"trial-{entry['number']}"
    retrain(
        export,
        out_dir,
        number=entry["number"],
        epochs=args.epochs,
        seed=args.seed,
        data_dir=args.data_dir,
        cache=cache,
        from_weights=args.from_weights,
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from search.report import write_report

    out_dir = Path(args.output) if args.output else RUNS_DIR / args.study_name
    path = write_report(
        args.study_name,
        _open(args),
        out_dir,
        retrained=args.retrained or [RUNS_DIR / args.study_name],
        data_dir=args.data_dir,
    )
    print(f"report: {path.resolve().as_uri()}")
    return 0


def _print_best(study_name: str, storage) -> None:
    from search.status import describe_best

    print(describe_best(study_name, storage))


def _default_threads(n_workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // n_workers)


def _worker_seed_offset() -> int:
    # Workers started by hand or by compose have no index: derive a distinct one.
    return int.from_bytes(os.urandom(2), "big")
