"""SLURM: a study's workers as one job array, and which array task a worker process is.

Each task of the array runs one `search worker` against the study's shared storage (a
database server: the tasks run on many machines). A preempted or requeued task starts again
from the top of its script; its worker had stopped its trial at the next batch and queued it
again (SIGTERM), so a worker goes on with that trial from its last checkpoint.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# SLURM's time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
TIME_FORMAT = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}")
# Partition, account and QOS names as SLURM writes them (a comma list of partitions too).
NAME_FORMAT = re.compile(r"[A-Za-z0-9_.+,-]+")
# Seconds before --time at which a task's worker is sent SIGTERM: enough to finish a batch
# and queue its trial again, which SIGKILL at the limit itself would not leave time for.
STOP_BEFORE_LIMIT = 60
# The script sets these itself; given again, they would break what the script relies on.
RESERVED_OPTIONS = {
    "-a": "--workers",
    "--array": "--workers",
    "-o": "the per-task logs",
    "--output": "the per-task logs",
    "-e": "the per-task logs",
    "--error": "the per-task logs",
    "--open-mode": "the per-task logs",
    "--no-requeue": "requeueing after preemption",
    "--export": "the storage URL in the environment",
}


class SubmitError(ValueError):
    """A job that cannot be written or submitted; the message names the value and the rule."""


@dataclass(frozen=True)
class SlurmArray:
    """One job array of workers for a study: what goes into its sbatch script.

    Args:
        log_dir: where each task writes its log, <job name>-<job id>_<task>.log.
        checkpoints: the checkpoint location every task reaches (an absolute folder on a
            shared file system, or s3://...).
        worker_args: more `search worker` flags (--data-dir, --cache, --mixed-precision).
        sbatch_options: more sbatch options, each with its value ("--qos=high").
    """

    study_name: str
    n_workers: int
    log_dir: Path
    checkpoints: str
    cpus_per_task: int = 1
    gpus_per_task: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    worker_args: list[str] = field(default_factory=list)
    sbatch_options: list[str] = field(default_factory=list)
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.n_workers < 1:
            raise SubmitError(f"--workers is {self.n_workers}, but must be >= 1")
        if self.time is not None and not TIME_FORMAT.fullmatch(self.time):
            raise SubmitError(
                f"--time {self.time!r}: give SLURM's MINUTES, HH:MM:SS or D-HH:MM:SS"
            )
        for flag, value in (("--partition", self.partition), ("--account", self.account)):
            if value is not None and not NAME_FORMAT.fullmatch(value):
                raise SubmitError(
                    f"{flag} {value!r}: a SLURM name has only letters, digits and _.+,-"
                )
        for option in self.sbatch_options:
            name = option.split("=", 1)[0].split()[0]
            if name in RESERVED_OPTIONS:
                raise SubmitError(
                    f"sbatch option {option!r}: {name} is set by search submit"
                    f" (for {RESERVED_OPTIONS[name]})"
                )

    @property
    def job_name(self) -> str:
        return f"search-{self.study_name}"


def parse_sbatch_options(text: str) -> list[str]:
    """Split "--qos=high --mem 8G" into one option per item, each with its value."""
    options: list[str] = []
    for token in shlex.split(text):
        if token.startswith("-"):
            options.append(token)
        elif options:
            options[-1] += f" {token}"
        else:
            raise SubmitError(f"--sbatch-options {text!r}: {token!r} is not an option (-X, --x)")
    return options


def batch_script(array: SlurmArray) -> str:
    """The sbatch script of the array: one `search worker` per task."""
    options = [
        f"--job-name={array.job_name}",
        f"--array=0-{array.n_workers - 1}",
        f"--cpus-per-task={array.cpus_per_task}",
    ]
    for flag, value in (
        ("--gpus-per-task", array.gpus_per_task),
        ("--partition", array.partition),
        ("--time", array.time),
        ("--account", array.account),
    ):
        if value is not None:
            options.append(f"{flag}={value}")
    options += array.sbatch_options
    worker = [
        array.python,
        "-m",
        "search",
        "worker",
        "--study-name",
        array.study_name,
        *array.worker_args,
    ]
    lines = [
        "#!/bin/bash",
        f"# The workers of study {array.study_name!r}, written by `search submit slurm`:",
        "# each task of this array runs one `search worker` against the study's storage until",
        "# its budget is spent.",
        *(f"#SBATCH {option}" for option in options),
        "# Preempted or requeued (scontrol requeue), a task is sent SIGTERM: its worker stops",
        "# its trial at the next batch and queues it again; the task starts again later, and a",
        "# worker goes on with that trial from its last checkpoint.",
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:TERM@{STOP_BEFORE_LIMIT}",
        "# One log per task, kept across its restarts: <job name>-<job id>_<task>.log.",
        f"#SBATCH --output={array.log_dir}/%x-%A_%a.log",
        "#SBATCH --open-mode=append",
        "# The storage URL comes in the environment of sbatch, so no password is in this file.",
        "#SBATCH --export=ALL",
        "set -eu",
        ': "${SEARCH_STORAGE:?the study storage URL, which search submit slurm passes on}"',
        f"export SEARCH_CHECKPOINTS={shlex.quote(array.checkpoints)}",
        "export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2",
        *(["export TF_FORCE_GPU_ALLOW_GROWTH=true"] if array.gpus_per_task else []),
        'echo "task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname),'
        ' start ${SLURM_RESTART_COUNT:-0}"',
        "# exec: the worker itself receives SLURM's signals. No --worker-index: each start",
        "# seeds its sampler afresh, so a requeued task does not repeat its first points.",
        f'exec {shlex.join(worker)} --threads "$SLURM_CPUS_PER_TASK"',
    ]
    return "\n".join(lines) + "\n"


def submit(script: Path, *, environment: dict[str, str]) -> str:
    """Submit an sbatch script; return the job id.

    The tasks inherit this process's environment with `environment` over it: the settings
    of the submitting command as SEARCH_* variables (`Settings.environment`: the storage,
    its password file, checkpoints, retries...), which each task's worker reads back.

    Raises:
        SubmitError: sbatch is missing or refused the job (with its message).
    """
    try:
        result = subprocess.run(
            ["sbatch", "--parsable", str(script)],
            env=os.environ | environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except FileNotFoundError:
        raise SubmitError(
            "sbatch not found: submit from a SLURM login node, or print the script with --dry-run"
        ) from None
    if result.returncode != 0:
        raise SubmitError(f"sbatch refused the job: {result.stderr.strip() or result.stdout}")
    # --parsable prints "JOBID" or "JOBID;CLUSTER".
    return result.stdout.strip().split(";")[0]


def shared_checkpoints(location: str) -> str:
    """A checkpoint location as every task reaches it: a folder made absolute.

    The folder must be on a file system the machines share; s3://... and none stay as they are.
    """
    if location == "none" or "://" in location:
        return location
    return str(Path(location).expanduser().resolve())


def array_task() -> str | None:
    """This process's SLURM array task as JOB_TASK (its log's %A_%a), if it is one."""
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if job and task else None
