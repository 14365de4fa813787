"""Checks the throwaway PostgreSQL server that storage tests run against."""

from __future__ import annotations

import socket

import optuna
import pytest
import sqlalchemy
from pgserver import PostgresServer
from sqlalchemy.engine import Engine


def select_one(engine: Engine) -> int:
    """Run `SELECT 1` on a new connection of engine."""
    with engine.connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT 1")).scalar_one()


def test_server_serves_restarts_and_holds_a_study() -> None:
    """The server accepts the URL's login, survives a restart and stores an Optuna study."""
    with PostgresServer() as pg:
        root = pg.directory
        # Connections are pooled: a restart leaves the pool with dead ones to replace.
        engine = sqlalchemy.create_engine(pg.url, pool_pre_ping=True)
        assert select_one(engine) == 1
        # Listens on loopback only, as the URL says.
        assert engine.url.host == "127.0.0.1"

        port = pg.port
        pg.restart()
        # Same address after a restart, so that clients can reconnect to it.
        assert pg.port == port
        assert select_one(engine) == 1
        engine.dispose()

        storage = optuna.storages.RDBStorage(pg.url)
        optuna.create_study(study_name="probe", storage=storage, direction="maximize")
        assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["probe"]
        storage.remove_session()
        storage.engine.dispose()
    # Cleanup: the data directory is gone once the block ends.
    assert not root.exists()


def test_cleanup_after_a_failing_block() -> None:
    """The server is stopped and its files removed even when the test body raises."""
    server = PostgresServer()
    try:
        with server:
            root, port = server.directory, server.port
            raise KeyError("boom")
    except KeyError:
        pass
    assert not root.exists()
    # Stopped: nothing listens on its port any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
