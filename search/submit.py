"""`search submit slurm|kubernetes STUDY.toml --workers N`: a study's workers on a cluster.

The commands' arguments and what they call; the SLURM job array is `search.slurm`'s, the
Kubernetes manifests are `search.kubernetes`'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from search.config import check_space_options, load_config
from search.flags import (
    budget_flags,
    cache_flag,
    data_dir_flag,
    enqueue_flag,
    mixed_precision_flag,
    positive_int,
)
from search.kubernetes import KubernetesStudy, ManifestError, dump_manifests
from search.settings import Settings
from search.slurm import (
    SlurmArray,
    SubmitError,
    batch_script,
    parse_sbatch_options,
    shared_checkpoints,
    submit,
)
from search.storage import storage_url


def add_submit_commands(sub, common: argparse.ArgumentParser) -> None:
    """Register `submit slurm` and `submit kubernetes` under the CLI's subcommands `sub`."""
    p = sub.add_parser(
        "submit",
        help="Run a study's workers on a cluster: a SLURM job array, or Kubernetes manifests.",
    )
    clusters = p.add_subparsers(required=True, metavar="CLUSTER")

    def cluster(name: str, func, help: str) -> argparse.ArgumentParser:
        c = clusters.add_parser(name, help=help, description=help, parents=[common])
        c.set_defaults(command=func, name=f"submit {name}")
        c.add_argument("study_file", metavar="STUDY.toml")
        c.add_argument("--workers", type=positive_int, required=True, help="worker processes")
        c.add_argument(
            "--cpus-per-task",
            type=positive_int,
            default=1,
            metavar="N",
            help="CPUs of each worker, its TensorFlow threads (1)",
        )
        c.add_argument("--gpus-per-task", type=positive_int, metavar="N", help="GPUs of each")
        cache_flag(c)
        mixed_precision_flag(c)
        return c

    c = cluster(
        "slurm",
        _submit_slurm,
        "Create the study, then submit its workers as one SLURM job array (sbatch).",
    )
    c.add_argument("--partition", help="sbatch --partition")
    c.add_argument("--time", help="sbatch --time: each task's limit (MINUTES, D-HH:MM:SS...)")
    c.add_argument("--account", help="sbatch --account")
    data_dir_flag(c)
    c.add_argument(
        "--sbatch-options",
        metavar='"OPTIONS"',
        default="",
        help='more sbatch options, as one string: --sbatch-options="--qos=high --mem=16G"',
    )
    c.add_argument(
        "--dry-run", action="store_true", help="print the sbatch script; create and submit nothing"
    )
    budget_flags(c)
    enqueue_flag(c)

    c = cluster(
        "kubernetes",
        _submit_kubernetes,
        "Print Kubernetes manifests that run the study (kubectl apply -f -).",
    )
    c.add_argument("--image", default="search:latest", help="the image built from the Dockerfile")
    c.add_argument("--namespace", help="the manifests' namespace (default: kubectl's)")
    c.add_argument("--memory", default="4Gi", help="memory of each worker (4Gi)")


def _submit_slurm(args: argparse.Namespace, settings: Settings) -> int:
    from search.api import study_from_file

    storage = settings.storage
    if storage.startswith("sqlite"):
        raise SubmitError(
            f"storage {storage}: the tasks of a job array run on several machines, which share"
            " a study through a database server only; give a PostgreSQL URL (--storage or"
            " SEARCH_STORAGE)"
        )
    name = load_config(args.study_file).name
    worker_args = ["--data-dir", str(Path(args.data_dir).resolve())] if args.data_dir else []
    worker_args += ["--cache", args.cache] if args.cache else []
    worker_args += ["--mixed-precision"] if args.mixed_precision else []
    array = SlurmArray(
        study_name=name,
        n_workers=args.workers,
        log_dir=(settings.runs_dir / name / "slurm").resolve(),
        checkpoints=shared_checkpoints(settings.checkpoints),
        cpus_per_task=args.cpus_per_task,
        gpus_per_task=args.gpus_per_task,
        partition=args.partition,
        time=args.time,
        account=args.account,
        worker_args=worker_args,
        sbatch_options=parse_sbatch_options(args.sbatch_options),
    )
    script = batch_script(array)
    if args.dry_run:
        print(script, end="")
        return 0
    study_from_file(
        args.study_file,
        settings=settings,
        n_trials=args.n_trials,
        timeout_minutes=args.timeout_minutes,
        enqueue=args.enqueue,
    )
    array.log_dir.mkdir(parents=True, exist_ok=True)
    path = array.log_dir / f"{array.job_name}.sbatch"
    path.write_text(script)
    job = submit(path, environment=settings.environment())
    print(
        f"submitted job array {job} ({args.workers} workers of {name!r}); script {path};"
        f" logs {array.log_dir}/{array.job_name}-{job}_<task>.log"
    )
    return 0


def _submit_kubernetes(args: argparse.Namespace, settings: Settings) -> int:
    from spaces import load_space

    config = load_config(args.study_file)
    check_space_options(config, load_space(config.study.space), source=args.study_file)
    # Only what was given (a flag or the environment) goes into the manifests.
    url = settings.storage if "storage" in settings.sources else None
    checkpoints = settings.checkpoints if "checkpoints" in settings.sources else None
    if checkpoints and not (checkpoints == "none" or checkpoints.startswith("s3://")):
        raise ManifestError(
            f"checkpoints {checkpoints!r}: a folder here is not in the pods; give s3://..., none,"
            " or nothing (a ReadWriteMany volume that every pod mounts)"
        )
    worker_args = ["--cache", args.cache] if args.cache else []
    worker_args += ["--mixed-precision"] if args.mixed_precision else []
    study = KubernetesStudy(
        study_name=config.name,
        study_text=Path(args.study_file).read_text(),
        n_workers=args.workers,
        image=args.image,
        namespace=args.namespace,
        cpus=args.cpus_per_task,
        memory=args.memory,
        gpus=args.gpus_per_task,
        storage_url=storage_url(settings) if url else None,
        checkpoints=checkpoints,
        worker_args=worker_args,
    )
    print(dump_manifests(study), end="")
    return 0
