"""The command line's shared flags and argument types (`search.cli`, `search.submit`).

Flags that set a process's `Settings` are named after its fields (`--grace-period` is
`grace_period`), so `settings_from(args)` reads them all, over the environment.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from search.settings import CACHE_MODES, DEFAULT_CHECKPOINTS, Settings

# The Settings fields a command line may give.
SETTINGS_FLAGS = (
    "storage",
    "heartbeat_interval",
    "grace_period",
    "checkpoints",
    "keep_best",
    "max_retries",
    "data_dir",
    "cache",
    "threads",
)


def settings_from(args: argparse.Namespace) -> Settings:
    """This process's settings: its flags, else its environment (read here, once)."""
    given = {name: getattr(args, name, None) for name in SETTINGS_FLAGS}
    verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
    return Settings.from_env(**given, verbosity=max(-2, min(1, verbosity)))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def gpu_number(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPU number (0, 1, ...)")
    return int(text)


def gpu_list(text: str) -> list[str]:
    gpus = [g.strip() for g in text.split(",")]
    if not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct GPU numbers, as in 0,1")
    return gpus


def existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or directory")
    return path


def common_flags() -> argparse.ArgumentParser:
    """The flags every command takes: storage options and how much to log."""
    common = argparse.ArgumentParser(add_help=False)
    add = common.add_argument
    add("--storage", help="storage URL (default: $SEARCH_STORAGE, else sqlite:///runs/search.db)")
    add(
        "--heartbeat-interval",
        type=positive_int,
        metavar="SECONDS",
        help="seconds between a running trial's heartbeats (default: $SEARCH_HEARTBEAT_INTERVAL,"
        " else 10); workers started by `run` inherit it",
    )
    add(
        "--grace-period",
        type=positive_int,
        metavar="SECONDS",
        help="seconds without a heartbeat before a running trial counts as dead and is retried,"
        " more than the interval (default: $SEARCH_GRACE_PERIOD, else 60)",
    )
    add(
        "--checkpoints",
        metavar="LOCATION",
        help="where running trials save a checkpoint after every epoch and completed trials"
        " keep their best epoch's model: a folder every worker reaches, s3://BUCKET/PREFIX, or"
        f" none (default: $SEARCH_CHECKPOINTS, else {DEFAULT_CHECKPOINTS}/)",
    )
    add(
        "--keep-best",
        type=count,
        metavar="K",
        help="keep the best-epoch models of the study's best K completed trials, 0 none"
        f" (default: $SEARCH_KEEP_BEST, else {Settings.keep_best})",
    )
    add(
        "--max-retries",
        type=count,
        metavar="N",
        help="times a trial whose worker died may be retried from its checkpoint while each"
        f" retry makes progress (default: $SEARCH_MAX_RETRIES, else {Settings.max_retries})",
    )
    add(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more (Optuna's debug messages); workers started by `run` inherit it",
    )
    add(
        "-q",
        "--quiet",
        action="count",
        default=0,
        help="log less: -q warnings and errors only (`search run`: its final line only),"
        " -qq errors only",
    )
    return common


def budget_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-trials", type=positive_int, help="override [trials] n_trials")
    p.add_argument("--timeout-minutes", type=float, help="override [trials] timeout_minutes")


def enqueue_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--enqueue",
        metavar="FILE.json",
        action="append",
        default=[],
        help="queue the trials of a `search export` file of the same space, each once; repeatable",
    )


def data_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        help="directory of the Fashion-MNIST IDX files, and the root of a relative dir:PATH"
        " (default: $SEARCH_DATA_DIR)",
    )


def cache_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache",
        choices=CACHE_MODES,
        help="where a dir:PATH dataset's decoded images are kept between epochs: none"
        " (decoded every epoch), memory, or disk (a temporary directory); results do not"
        " depend on it (default: $SEARCH_CACHE, else none)",
    )


def gpu_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gpu",
        type=gpu_number,
        metavar="N",
        help="train on this GPU only (sets CUDA_VISIBLE_DEVICES; memory growth on)",
    )


def mixed_precision_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mixed-precision",
        action="store_true",
        help="compute in float16 on a GPU (Keras' mixed_float16); ignored, with a warning,"
        " without one",
    )


def threads_flag(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--threads", type=positive_int, help=f"TensorFlow threads (default: {default})")


def worker_flags(p: argparse.ArgumentParser, *, recycle_default: int | None = None) -> None:
    data_dir_flag(p)
    cache_flag(p)
    mixed_precision_flag(p)
    threads_flag(p, "$SEARCH_THREADS, else cores / workers")
    p.add_argument(
        "--max-trials-per-process",
        type=positive_int,
        default=recycle_default,
        help="restart a worker process after this many trials, bounding its memory"
        + (f" ({recycle_default})" if recycle_default else ""),
    )


def study_name_args(p: argparse.ArgumentParser, *, required: bool, help: str = "") -> None:
    """A study by name: `--study-name NAME`, as Optuna's CLI, or positional as a shorthand."""
    p.add_argument("study", metavar="STUDY_NAME", nargs="?", help=help or None)
    p.add_argument("--study-name", help="the study's name (the same as STUDY_NAME)")
    p.set_defaults(study_required=required)


def study_file_or_name(p: argparse.ArgumentParser) -> None:
    """A study file, or `--study-name` for a study already in the storage."""
    p.add_argument("study_file", metavar="STUDY.toml", nargs="?")
    p.add_argument("--study-name", help="a study already in the storage, instead of a file")


def resolve_study_name(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.study and args.study_name and args.study != args.study_name:
        parser.error(
            f"{args.name}: STUDY_NAME {args.study!r} and --study-name"
            f" {args.study_name!r} differ; give one"
        )
    args.study_name = args.study_name or args.study
    if args.study_required and not args.study_name:
        parser.error(f"{args.name}: give the study as STUDY_NAME or --study-name NAME")
