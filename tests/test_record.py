"""The trial record: what trials and studies store, read back typed, older studies' too."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.failures import requeue
from search.record import (
    FailureKind,
    Resumed,
    StoppedAtDeadline,
    StudyRecord,
    TrialRecord,
    TrialWriter,
    queued_attrs,
    write_class_names,
    write_definition,
    write_description,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
HISTORY = {"loss": [1.0, 0.5], "accuracy": [0.5, 0.7], "val_loss": [1.1, 0.6]}
HISTORY |= {"val_accuracy": [0.4, 0.6]}


def test_a_trial_written_with_the_old_raw_keys_reads_back():
    # What a trial of an older version holds: the keys as stored, and Optuna's retry keys.
    old = create_trial(
        state=TrialState.FAIL,
        user_attrs={
            "history": HISTORY,
            "epoch_end": [100.0, 110.0],
            "epoch_seconds": [10.0, 9.5],
            "epochs": 2,
            "epochs_trained": 1,
            "best_epoch": 2,
            "seconds": 19.5,
            "worker_rss_mb": 812.5,
            "worker": "node7:123 slurm 41_2",
            "seed": 45,
            "threads": 2,
            "device": "cpu",
            "n_params": 101_770,
            "warning": "no pretrained weights",
            "origin": "baseline",
            "baseline": "model_0",
            "enqueued_from": "best.json#3",
            "planned_epochs": 8,
            "plan_note": "8 of max 20 epochs planned",
            "stopped_at_deadline": {"epochs": 2, "planned": 8},
            "resumed_from": {"trial": 3, "epoch": 1},
            "restarted": None,
            "kept_epoch": 2,
            "fail_reason": "Interrupted: the worker was stopped at epoch 2",
            "pruned_reason": "too costly",
        },
        system_attrs={"failed_trial": 1, "retry_history": [1, 3]},
    )
    record = TrialRecord.of(old)
    assert record == TrialRecord(
        number=old.number,
        state=TrialState.FAIL,
        history=HISTORY,
        epoch_end=[100.0, 110.0],
        epoch_seconds=[10.0, 9.5],
        epochs=2,
        epochs_trained=1,
        best_epoch=2,
        seconds=19.5,
        worker_rss_mb=812.5,
        worker="node7:123 slurm 41_2",
        seed=45,
        threads=2,
        device="cpu",
        n_params=101_770,
        warning="no pretrained weights",
        origin="baseline",
        baseline="model_0",
        enqueued_from="best.json#3",
        planned_epochs=8,
        plan_note="8 of max 20 epochs planned",
        stopped_at_deadline=StoppedAtDeadline(epochs=2, planned=8),
        resumed_from=Resumed(trial=3, epoch=1),
        restarted=None,
        kept_epoch=2,
        fail_reason="Interrupted: the worker was stopped at epoch 2",
        # An older trial has its reason only: the kind is the one it was worded for.
        failure=FailureKind.INTERRUPTED,
        pruned_reason="too costly",
        retry_of=1,
        retry_history=(1, 3),
    )
    assert record.interrupted and record.epochs_done == 2
    # `search status --format json` shows them under the keys they are stored with.
    shown = record.status_attrs()
    assert shown["resumed_from"] == {"trial": 3, "epoch": 1} and "restarted" in shown
    assert shown["fail_kind"] == "interrupted" and "history" not in shown


@pytest.mark.parametrize(
    ("state", "reason", "kind"),
    [
        (TrialState.FAIL, "Interrupted: the worker was stopped in epoch 3", "interrupted"),
        (TrialState.FAIL, "killed: its worker did not stop within 30 s of SIGTERM", "killed"),
        (TrialState.FAIL, "not run: the 10 trials of the budget were claimed", "budget_claimed"),
        (TrialState.FAIL, "the space cannot build this config: no", "unbuildable"),
        (TrialState.FAIL, "loss or val_accuracy is not finite at epoch 2", "diverged"),
        (TrialState.FAIL, "loss is not finite in epoch 2", "diverged"),
        (TrialState.FAIL, "ResourceExhaustedError: OOM", "error"),
        (TrialState.PRUNED, "TrialPruned: pruned at epoch 1 (val_accuracy 0.1)", "pruned"),
        # Failed by the storage when its worker stopped heartbeating: no reason recorded.
        (TrialState.FAIL, None, "stale"),
        (TrialState.COMPLETE, None, None),
    ],
)
def test_an_older_trials_failure_kind_comes_from_its_reason(state, reason, kind):
    trial = create_trial(
        state=state,
        value=0.5 if state == TrialState.COMPLETE else None,
        user_attrs={"fail_reason": reason} if reason else {},
    )
    failure = TrialRecord.of(trial).failure
    assert failure == (None if kind is None else FailureKind(kind))


def test_what_a_trial_writes_reads_back_under_the_same_keys():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    writer = TrialWriter(trial)
    writer.set_worker("host:1")
    writer.set_origin("sampler")
    writer.set_start(seed=7, threads=0, device="cpu")
    writer.set_n_params(1000)
    writer.set_history(HISTORY)
    writer.set_epoch_times([100.0, 110.0], [10.0, 9.5])
    writer.set_plan(8, "8 of max 20 epochs planned")
    writer.set_resumed(None, 0, "trial 0 left no checkpoint: started from epoch 1")
    writer.set_stopped_at_deadline(2, 8)
    writer.set_epochs_trained(2)
    writer.set_run(HISTORY, seconds=19.5, worker_rss_mb=800.0, best_epoch=2)
    writer.set_kept_epoch(2)
    live = writer.record()
    assert live.state == TrialState.RUNNING and live.seed == 7 and live.retry_history == ()
    study.tell(trial, 0.6)
    (frozen,) = study.get_trials()
    record = TrialRecord.of(frozen)
    assert record == TrialRecord(
        number=0,
        state=TrialState.COMPLETE,
        value=0.6,
        params=frozen.params,
        history=HISTORY,
        epoch_end=[100.0, 110.0],
        epoch_seconds=[10.0, 9.5],
        epochs=2,
        epochs_trained=2,
        best_epoch=2,
        seconds=19.5,
        worker_rss_mb=800.0,
        worker="host:1",
        seed=7,
        threads=0,
        device="cpu",
        n_params=1000,
        origin="sampler",
        planned_epochs=8,
        plan_note="8 of max 20 epochs planned",
        stopped_at_deadline=StoppedAtDeadline(2, 8),
        resumed_from=Resumed(None, 0),
        restarted="trial 0 left no checkpoint: started from epoch 1",
        kept_epoch=2,
    )
    # The keys a study written today holds are those older versions wrote.
    assert set(frozen.user_attrs) == {
        "worker",
        "origin",
        "seed",
        "threads",
        "device",
        "n_params",
        "history",
        "epoch_end",
        "epoch_seconds",
        "planned_epochs",
        "plan_note",
        "resumed_from",
        "restarted",
        "stopped_at_deadline",
        "epochs_trained",
        "epochs",
        "seconds",
        "worker_rss_mb",
        "best_epoch",
        "kept_epoch",
    }


def test_a_failure_is_stored_with_its_kind_and_a_retry_reads_what_it_repeats():
    study = optuna.create_study()
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    TrialWriter(trial).set_failure(FailureKind.INTERRUPTED, "Interrupted: stopped")
    study.tell(trial, state=TrialState.FAIL)
    requeue(study, trial.number)
    failed, retry = study.get_trials()
    assert failed.user_attrs["fail_kind"] == "interrupted"
    assert TrialRecord.of(failed).failure == FailureKind.INTERRUPTED
    record = TrialRecord.of(retry)
    assert record.state == TrialState.WAITING and record.retry_of == failed.number
    assert record.retry_history == (failed.number,)


def test_queued_attrs_and_the_study_record():
    study = optuna.create_study()
    study.enqueue_trial({"x": 1}, user_attrs=queued_attrs("baseline", baseline="model_0"))
    study.enqueue_trial({"x": 2}, user_attrs=queued_attrs("enqueued export", enqueued_from="a#1"))
    first, second = (TrialRecord.of(t) for t in study.get_trials())
    assert (first.origin, first.baseline, first.enqueued_from) == ("baseline", "model_0", None)
    assert (second.origin, second.enqueued_from) == ("enqueued export", "a#1")
    assert StudyRecord.of(study) == StudyRecord()
    write_description(
        study,
        space="conv",
        dataset="fashion_mnist",
        metric="val_accuracy",
        sampler="TPE",
        pruner="NopPruner()",
        version="0.1.0",
    )
    write_definition(study, {"study": {"name": "s"}})
    write_class_names(study, ["a", "b"])
    assert StudyRecord.of(study) == StudyRecord(
        definition={"study": {"name": "s"}},
        space="conv",
        dataset="fashion_mnist",
        metric="val_accuracy",
        sampler="TPE",
        pruner="NopPruner()",
        search_version="0.1.0",
        class_names=["a", "b"],
    )
    # The study's keys, as older versions wrote them.
    assert set(study.user_attrs) == {
        "definition",
        "space",
        "dataset",
        "metric",
        "sampler",
        "pruner",
        "search_version",
        "class_names",
    }
