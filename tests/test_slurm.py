"""`search submit slurm` on a real one-machine SLURM cluster, against a real PostgreSQL: a job
array of 3 workers runs a study to its budget while one task is requeued mid-trial."""

from __future__ import annotations

import re
import subprocess
import time

import optuna
import pytest
from conftest import TEST_GRACE_PERIOD, cli_env, search_cmd
from optuna.trial import TrialState
from pgserver import PostgresServer
from slurmcluster import SlurmCluster, unavailable

from search.cli import main
from search.record import FailureKind, TrialRecord
from search.status import print_status
from search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
N_TRIALS, N_WORKERS = 5, 3
# Seconds the array may take; it takes about a minute on 2 cores.
DEADLINE = 300
DONE = {TrialState.COMPLETE, TrialState.PRUNED}


def submit(*args: str, cwd, slurm: SlurmCluster) -> subprocess.CompletedProcess:
    return subprocess.run(
        search_cmd("submit", "slurm", *args),
        cwd=cwd,
        env=cli_env(**slurm.env),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_a_job_array_runs_the_study_and_a_requeued_task_trial_resumes(tmp_path, write_study):
    if reason := unavailable():
        pytest.skip(reason)
    with PostgresServer() as pg, SlurmCluster() as slurm:
        # Small: what is tested is the array, not the models; 4 epochs leave time to requeue
        # a task between a trial's first checkpoint and its end.
        study_file = write_study(
            n_trials=N_TRIALS, max_epochs=4, train_subset=1000, validation_subset=500
        )
        submitted = submit(
            study_file, "--workers", str(N_WORKERS), "--storage", pg.url, cwd=tmp_path, slurm=slurm
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job = re.search(r"submitted job array (\d+)", submitted.stdout).group(1)
        # The study was created before any task ran.
        assert "created study 't'" in submitted.stdout

        storage = open_storage(pg.url, heartbeat_interval=1, grace_period=TEST_GRACE_PERIOD)
        study = optuna.load_study(study_name="t", storage=storage)
        checkpoints = tmp_path / "runs" / "t" / "checkpoints"
        requeued = None
        released = False
        deadline = time.monotonic() + DEADLINE
        while (jobs := slurm.jobs()) and time.monotonic() < deadline:
            if requeued is None:
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    # After its first or second epoch's checkpoint, with epochs to go.
                    if (
                        len(t.intermediate_values) == 1
                        and (checkpoints / f"trial-{t.number}.npz").exists()
                    ):
                        task = TrialRecord.of(t).worker.split(" slurm ")[1]
                        slurm.run("scontrol", "requeue", task)
                        requeued = (task, t.number, t.params, TrialRecord.of(t).worker)
                        break
            elif jobs.get(requeued[0]) == "PD" and not released:
                # SLURM holds a requeued job for two minutes (its BeginTime): start it now.
                slurm.run("scontrol", "update", f"JobId={requeued[0]}", "StartTime=now")
                released = True
            time.sleep(0.3)
        logs = tmp_path / "runs" / "t" / "slurm"
        assert not jobs, f"the array did not end in {DEADLINE} s: {jobs}\n{_tails(logs)}"
        trials = study.get_trials(deepcopy=False)
        storage.engine.dispose()

    assert requeued is not None and released, _tails(logs)
    task, number, params, worker = requeued
    # Each task's log is there, named by job and task; the requeued one holds both starts.
    for i in range(N_WORKERS):
        assert f"task {job}_{i} on " in (logs / f"search-t-{job}_{i}.log").read_text()
    log = (logs / f"search-t-{task}.log").read_text()
    assert "start 0" in log and "start 1" in log, log
    assert "the trial was queued again" in log, log
    # The trial recorded its worker as host:pid and its array task.
    assert re.fullmatch(rf"\S+:\d+ slurm {job}_\d", worker), worker
    # Every trial ended: none is RUNNING (or waiting), the numbers are 0..N-1 and unique.
    assert {t.state for t in trials} <= DONE | {TrialState.FAIL}, _tails(logs)
    assert [t.number for t in trials] == list(range(len(trials)))
    # The budget is met exactly.
    assert sum(t.state in DONE for t in trials) == N_TRIALS
    # The requeued task's worker stopped its trial on SIGTERM and queued it again...
    stopped = trials[number]
    assert stopped.state == TrialState.FAIL
    assert TrialRecord.of(stopped).failure == FailureKind.INTERRUPTED, stopped.user_attrs
    # ...and its one retry went on from the stopped trial's checkpoint to the end.
    (retry,) = [t for t in trials if TrialRecord.of(t).retry_of == number]
    assert retry.params == params and retry.state in DONE
    resumed = TrialRecord.of(retry).resumed_from
    assert resumed.trial == number and resumed.epoch >= 1


PG = "postgresql+psycopg://search@db.example.org:5432/search"


def test_dry_run_prints_the_array_script(write_study, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEARCH_CHECKPOINTS", raising=False)
    args = ["--workers", "4", "--cpus-per-task", "2", "--gpus-per-task", "1", "--time", "0-04:00"]
    args += ["--partition", "gpu", "--account", "lab", "--sbatch-options=--qos=high --mem 16G"]
    code = main(["submit", "slurm", str(write_study()), *args, "--storage", PG, "--dry-run"])
    script = capsys.readouterr().out
    assert code == 0
    lines = script.splitlines()
    for option in [
        "--array=0-3",
        "--cpus-per-task=2",
        "--gpus-per-task=1",
        "--partition=gpu",
        "--time=0-04:00",
        "--account=lab",
        "--qos=high",
        "--mem 16G",
        "--requeue",
        f"--output={tmp_path}/runs/t/slurm/%x-%A_%a.log",
    ]:
        assert f"#SBATCH {option}" in lines, script
    # Each task runs one worker in place of the shell, so SLURM's signals reach it.
    assert lines[-1].startswith("exec ") and "-m search worker --study-name t" in lines[-1]
    assert f"export SEARCH_CHECKPOINTS={tmp_path}/runs" in lines
    # The storage URL is not in the script (sbatch's environment carries it).
    assert "db.example.org" not in script
    # A dry run writes nothing.
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time", "4h"], "--time '4h': give SLURM's MINUTES, HH:MM:SS or D-HH:MM:SS"),
        (["--partition", "a b"], "--partition 'a b': a SLURM name has only"),
        (["--sbatch-options=--array=0-9"], "--array is set by search submit (for --workers)"),
        (["--sbatch-options=high"], "'high' is not an option"),
        (["--storage", "sqlite:///x.db"], "storage sqlite:///x.db: the tasks of a job array"),
    ],
)
def test_bad_input_exits_2_naming_the_value_and_the_rule(write_study, capsys, args, message):
    storage = [] if "--storage" in args else ["--storage", PG]
    code = main(["submit", "slurm", str(write_study()), "--workers", "2", *storage, *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


def test_status_says_where_a_running_trial_runs(capsys):
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.set_user_attr("worker", "node7:123 slurm 41_2")
    print_status(storage, "s")
    # The running trial's row names its host, process and array task.
    assert "on node7:123 slurm 41_2" in capsys.readouterr().out


def _tails(logs) -> str:
    return "\n".join(
        f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-20:])
        for p in sorted(logs.glob("*.log"))
    )
