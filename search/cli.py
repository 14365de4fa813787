"""The `search` command: argparse over the Python API (`search.api`), one function per command.

Every command's settings come from its flags, else the environment (`search.flags.
settings_from`, read once here). Bad input (a study file, a dataset, a storage URL, a study
name) exits with code 2 and a message naming the file, key or value and the rule it broke,
before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import optuna

from search import __version__
from search.config import ConfigError
from search.dashboard import DEFAULT_HOST, DEFAULT_PORT
from search.errors import USER_ERRORS
from search.flags import (
    budget_flags,
    cache_flag,
    common_flags,
    data_dir_flag,
    enqueue_flag,
    existing_path,
    gpu_flag,
    gpu_list,
    mixed_precision_flag,
    positive_int,
    resolve_study_name,
    settings_from,
    study_file_or_name,
    study_name_args,
    threads_flag,
    worker_flags,
)
from search.settings import Settings


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ INFO notes (CPU features, oneDNN) would drown every command's output;
    # set before anything imports TensorFlow. A user's own setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Heartbeats and stale-trial reaping are marked experimental; we rely on them knowingly.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    parser = _parser()
    args = parser.parse_args(argv)
    if hasattr(args, "study"):
        resolve_study_name(parser, args)
    try:
        settings = settings_from(args)
        levels = {-2: optuna.logging.ERROR, -1: optuna.logging.WARNING, 0: optuna.logging.INFO}
        optuna.logging.set_verbosity(levels.get(settings.verbosity, optuna.logging.DEBUG))
        if getattr(args, "gpu", None) is not None:
            from search.device import gpu_env

            # This process's GPU, before anything starts TensorFlow.
            os.environ.update(gpu_env(str(args.gpu)))
        return args.command(args, settings) or 0
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
    common = common_flags()
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(command=func, name=name)
        return p

    p = command("run", _run, "Create or resume a study and run it with N local workers.")
    study_file_or_name(p)
    p.add_argument("--workers", type=positive_int, help="worker processes (1)")
    p.add_argument(
        "--gpus",
        type=gpu_list,
        metavar="0,1,...",
        help="run the workers on these GPUs, each worker on one (CUDA_VISIBLE_DEVICES):"
        " --workers-per-gpu of them per GPU, instead of --workers",
    )
    p.add_argument("--workers-per-gpu", type=positive_int, metavar="K", help="workers per GPU (1)")
    budget_flags(p)
    enqueue_flag(p)
    worker_flags(p, recycle_default=10)
    p.add_argument(
        "--no-recycle",
        action="store_true",
        help="keep each worker process for all its trials (no --max-trials-per-process)",
    )

    p = command("worker", _worker, "Run one worker process for a study (any machine).")
    study_file_or_name(p)
    p.add_argument("--worker-index", type=int, default=None, help="seeds the sampler (random)")
    worker_flags(p)
    gpu_flag(p)

    p = command("create", _create, "Create a study from a file (idempotent); runs nothing.")
    p.add_argument("study_file", metavar="STUDY.toml")
    p.set_defaults(study_name=None)
    budget_flags(p)
    enqueue_flag(p)
    data_dir_flag(p)

    p = command("status", _status, "List the studies, or one study's trials and best trial.")
    study_name_args(p, required=False)
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
    study_name_args(p, required=False, help="default: all studies")
    p.add_argument(
        "--every", type=float, metavar="SECONDS", help="keep reaping at this period until stopped"
    )

    p = command("export", _export, "Write a study's best trial (or K best) as a JSON bundle.")
    study_name_args(p, required=True)
    p.add_argument("-o", "--output", metavar="FILE", help="default: runs/STUDY_NAME/best.json")
    p.add_argument("--top", type=positive_int, default=1, help="the K best completed trials (1)")
    p.add_argument(
        "--reevaluate",
        type=positive_int,
        metavar="S",
        help="retrain each of the K with S other seeds (>= 2) on the train split and rank them"
        " by their mean of the study's metric on the validation split",
    )
    threads_flag(p, "the best trial's, per re-evaluation training")
    p.add_argument(
        "--jobs",
        type=positive_int,
        help="re-evaluation trainings at once, each in its own process (default: this"
        " machine's cores divided by the threads)",
    )
    p.add_argument(
        "--weights",
        action="store_true",
        help="add each exported trial's kept best-epoch model.keras beside the bundle"
        " (for -o best.json: best-trial-N.keras); a trial without kept weights is an error",
    )
    data_dir_flag(p)
    cache_flag(p)

    p = command(
        "retrain", _retrain, "Retrain an exported trial, then evaluate it once on the test set."
    )
    p.add_argument("export_file", metavar="FILE.json")
    p.add_argument("-o", "--output", metavar="DIR", help="default: trial-N beside FILE.json")
    p.add_argument("--trial", type=int, help="which exported trial (default: the best)")
    p.add_argument("--epochs", type=positive_int, help="default: the trial's best epoch")
    p.add_argument("--seed", type=int, help="default: the trial's seed")
    p.add_argument(
        "--from-weights",
        action="store_true",
        help="test the trial's kept best-epoch model (exported with `search export --weights`)"
        " instead of training it again: the model retraining would reproduce, in seconds",
    )
    threads_flag(p, "the trial's")
    data_dir_flag(p)
    cache_flag(p)
    gpu_flag(p)
    mixed_precision_flag(p)

    p = command("report", _report, "Write a study's HTML report, with its retrained configs.")
    study_name_args(p, required=True)
    p.add_argument("-o", "--output", metavar="DIR", help="default: runs/STUDY_NAME")
    p.add_argument(
        "--retrained",
        metavar="PATH",
        type=existing_path,
        action="append",
        default=[],
        help="a retrain's report.json, or a directory searched for them; repeatable"
        " (default: runs/STUDY_NAME)",
    )
    data_dir_flag(p)
    from search.submit import add_submit_commands

    add_submit_commands(sub, common)
    return parser


def _study(args: argparse.Namespace, settings: Settings, **kwargs):
    """The study of STUDY.toml (created or resumed) or of --study-name."""
    from search.api import load_study, study_from_file

    if bool(args.study_file) == bool(args.study_name):
        raise ConfigError("give either STUDY.toml or --study-name NAME")
    if hasattr(args, "n_trials"):
        kwargs.update(
            n_trials=args.n_trials, timeout_minutes=args.timeout_minutes, enqueue=args.enqueue
        )
    if args.study_name:
        kwargs.pop("trains", None)
        return load_study(args.study_name, settings=settings, **kwargs)
    return study_from_file(args.study_file, settings=settings, **kwargs)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.gpus and args.workers:
        raise ConfigError(
            "give --workers or --gpus, not both: with --gpus the workers are the GPUs times"
            " --workers-per-gpu"
        )
    if args.workers_per_gpu and not args.gpus:
        raise ConfigError("--workers-per-gpu needs --gpus")
    study = _study(args, settings, quiet=args.quiet > 0)
    return study.run(
        args.workers or 1,
        gpus=args.gpus,
        workers_per_gpu=args.workers_per_gpu or 1,
        max_trials_per_process=None if args.no_recycle else args.max_trials_per_process,
        mixed_precision=args.mixed_precision,
        quiet=args.quiet > 0,
    )


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from search.worker import WorkerSpec, serve

    settings = settings.replace(threads=settings.threads or 1)
    study = _study(args, settings, trains=True) if args.study_file else None
    # Workers started by hand, compose or a cluster have no index: a distinct one each.
    index = args.worker_index
    index = int.from_bytes(os.urandom(2), "big") if index is None else index
    spec = WorkerSpec(
        study.name if study else args.study_name,
        settings,
        worker_index=index,
        max_trials=args.max_trials_per_process,
        mixed_precision=args.mixed_precision,
    )
    storage, data = (study.storage, study.dataset) if study else (None, None)
    return serve(spec, storage=storage, data=data)


def _create(args: argparse.Namespace, settings: Settings) -> int:
    _study(args, settings)
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from search.status import print_status
    from search.storage import open_storage

    print_status(open_storage(settings), args.study_name, output_format=args.format)
    return 0


def _dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from search.checkpoints import artifact_store, open_store
    from search.config import load_config
    from search.dashboard import serve_dashboard
    from search.storage import open_storage, redact, storage_url

    serve_dashboard(
        open_storage(settings),
        host=args.host,
        port=args.port,
        study_name=load_config(args.study_file).name if args.study_file else None,
        storage_description=redact(storage_url(settings)),
        artifacts=artifact_store(open_store(settings.checkpoints)),
    )
    return 0


def _reap(args: argparse.Namespace, settings: Settings) -> int:
    from search.api import reap

    reap([args.study_name] if args.study_name else [], settings, every=args.every)
    return 0


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from search.api import load_study

    load_study(args.study_name, settings=settings).export(
        args.output,
        top=args.top,
        reevaluate=args.reevaluate,
        threads=args.threads,
        jobs=args.jobs,
        weights=args.weights,
    )
    return 0


def _retrain(args: argparse.Namespace, settings: Settings) -> int:
    from search.api import retrain
    from search.device import configure_device
    from search.export import read_export

    export = read_export(args.export_file)
    # Before TensorFlow starts: the trial's own thread count reproduces its numbers.
    threads = settings.threads or export.entry(args.trial).get("threads") or 0
    configure_device(threads=threads, mixed_precision=args.mixed_precision)
    retrain(
        export,
        number=args.trial,
        epochs=args.epochs,
        seed=args.seed,
        from_weights=args.from_weights,
        output=args.output,
        settings=settings,
    )
    return 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from search.api import load_study

    path = load_study(args.study_name, settings=settings).report(
        args.output, retrained=args.retrained
    )
    print(f"report: {path.resolve().as_uri()}")
    return 0
