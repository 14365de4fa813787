"""The one place that turns a storage URL into an Optuna storage.

SQLite (the default, one machine) gets WAL mode and a generous busy timeout so a few local
workers and a dashboard never fail with "database is locked". PostgreSQL (many machines)
gets a small pool per worker, pre-ping (a long trial's idle connection may have been
dropped) and a connect timeout. Both get heartbeats: a RUNNING trial whose worker stopped
heartbeating for `grace_period` seconds is failed and retried once with the same params.
"""

from __future__ import annotations

import sqlite3
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from search.failures import retry_callback
from search.settings import DEFAULT_STORAGE, Settings, SettingsError

# What a storage raises while its database is unreachable for a moment (a restart, a network
# blip): Optuna wraps most driver errors, but a failed connect can come through unwrapped.
TRANSIENT_ERRORS = (optuna.exceptions.StorageInternalError, SQLAlchemyError)


def describe_error(e: BaseException) -> str:
    """One line for a storage error: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


class StorageError(ValueError):
    """A storage URL that cannot be used; the message names it and why."""


def storage_url(settings: Settings) -> str:
    """The settings' storage URL, with the password from `storage_password_file` if given.

    A password kept out of the URL (a compose secret, for instance) is read from that file.
    """
    url = settings.storage
    password_file = settings.storage_password_file
    if password_file and not url.startswith("sqlite"):
        try:
            password = Path(password_file).read_text().strip()
        except OSError as e:
            raise StorageError(f"storage password file {password_file}: {e}") from None
        url = make_url(url).set(password=password).render_as_string(hide_password=False)
    return url


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_storage(
    settings: Settings | str | None = None,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
) -> optuna.storages.RDBStorage:
    """Open (creating tables if needed) the storage of `settings`, with heartbeats and retries.

    Args:
        settings: this process's settings, or a storage URL alone (other settings default).
        heartbeat_interval, grace_period: given, they replace the settings' own.

    Heartbeat settings are storage options, not study settings: every process that opens
    the storage (workers, the supervisor's reaper, `search reap`) should use the same, and
    changing them never changes a study. A trial found stale is retried as
    `search.failures.RetryWithProgress` says, with the settings' checkpoints and retries.
    """
    if not isinstance(settings, Settings):
        settings = Settings(storage=settings or DEFAULT_STORAGE)
    try:
        settings = settings.replace(
            heartbeat_interval=heartbeat_interval, grace_period=grace_period
        )
    except SettingsError as e:
        raise StorageError(str(e)) from None
    url = storage_url(settings)
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StorageError(f"storage URL {url!r} is not a database URL ({e})") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine_kwargs = _prepare_sqlite(parsed.database)
    elif backend == "postgresql":
        engine_kwargs = {
            # The heartbeat thread and the trial each hold a connection at times.
            "pool_size": 2,
            "max_overflow": 2,
            "pool_pre_ping": True,
            "pool_recycle": 1800,
            "connect_args": {"connect_timeout": 10},
        }
    else:
        raise StorageError(
            f"storage URL {redact(url)} uses {backend!r}; supported: sqlite, postgresql"
        )
    with warnings.catch_warnings():
        # Heartbeats and their retry callback are marked experimental; we rely on them.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return _Storage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=settings.heartbeat_interval,
                grace_period=settings.grace_period,
                heartbeat_stale_trial_callback=retry_callback(settings),
            )
        except ImportError as e:
            raise StorageError(f"storage URL {redact(url)}: driver missing ({e})") from None


def params_fixed(trial: FrozenTrial) -> bool:
    """Whether the trial's params were fixed before it ran: queued by `enqueue_trial`.

    Optuna keeps them in the private system attribute "fixed_params" (its queue has no
    public reader); `search.prior` asks before it samples.
    """
    return "fixed_params" in trial.system_attrs


class _Storage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, with two holes of its heartbeats and one of its queue closed.

    This is the one place that uses Optuna's private API (`optuna.storages._rdb.models`, the
    tables, `_get_stale_trial_ids`, and the system attribute read by `params_fixed`), each for
    an Optuna behaviour named below.

    Optuna records heartbeats in a thread that dies at its first error (the traceback in
    optuna#4994), so a database restart of a second would leave every running trial without
    heartbeats: reaped after the grace period while its worker still trains it. Here a
    failed heartbeat is skipped and the next one tried; a database gone for longer than the
    grace period still fails the trial, and the worker finds out at its next report.

    Optuna never counts a RUNNING trial as stale before its first heartbeat, so a worker
    that dies between starting a trial and that heartbeat (the database lost at that moment,
    a kill) leaves a trial RUNNING forever, and a study whose budget counts it never ends.
    Here such a trial is stale once this process has seen it without a heartbeat for the
    grace period: timed by this process's clock, so clocks of other machines cannot matter.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Study id -> {trial id: when this process first saw it RUNNING without heartbeat}.
        self._silent_since: dict[int, dict[int, float]] = {}

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        trials = models.TrialModel
        query = sqlalchemy.select(trials.trial_id).where(
            trials.study_id == study_id,
            trials.state == TrialState.RUNNING,
            ~trials.heartbeats.any(),
        )
        with self.engine.connect() as conn:
            silent = conn.execute(query).scalars().all()
        now = time.monotonic()
        before = self._silent_since.get(study_id, {})
        since = self._silent_since[study_id] = {i: before.get(i, now) for i in silent}
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
        return stale + [i for i, t in since.items() if now - t > grace and i not in stale]

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        if state != TrialState.RUNNING or values is not None:
            return super().set_trial_state_values(trial_id, state, values)
        # Claiming a WAITING trial (an enqueued centre, baseline or retry). Optuna reads the
        # state, then writes it; SQLite's driver runs that read outside a transaction, so two
        # workers may both see WAITING and both run the trial (optuna#4621, optuna#4002).
        # One conditional UPDATE claims it atomically on every database.
        trials = models.TrialModel
        claim = (
            sqlalchemy.update(trials)
            .where(trials.trial_id == trial_id, trials.state == TrialState.WAITING)
            .values(state=TrialState.RUNNING, datetime_start=datetime.now())
        )
        with self.engine.begin() as conn:
            claimed = conn.execute(claim).rowcount == 1
        if not claimed:
            # Taken by another worker, or finished: Optuna's contract raises for the latter.
            self.check_trial_is_updatable(trial_id, self.get_trial(trial_id).state)
        return claimed

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except TRANSIENT_ERRORS as e:
            print(
                f"heartbeat of trial id {trial_id} not recorded, trying again:"
                f" {describe_error(e)}",
                file=sys.stderr,
                flush=True,
            )


def _prepare_sqlite(database: str | None) -> dict:
    if not database or database == ":memory:":
        raise StorageError("an SQLite storage must be a file: sqlite:///PATH")
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    # WAL lets readers (status, dashboard) work beside writers; it persists in the file.
    with sqlite3.connect(path, timeout=60) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    return {"connect_args": {"timeout": 60}}
