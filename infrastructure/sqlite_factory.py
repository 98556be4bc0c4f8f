"""eventsourcing's SQLite persistence with our pragmas. In WAL mode `synchronous=NORMAL` survives
any process crash (kill -9); only a power cut can lose the last commits. Set
PRUNELOG_SQLITE_SYNCHRONOUS=FULL to trade latency for that too."""

from __future__ import annotations

import os

from eventsourcing.sqlite import SQLiteConnection, SQLiteConnectionPool, SQLiteFactory
from eventsourcing.utils import Environment

_SYNC_MODES = {"OFF", "NORMAL", "FULL", "EXTRA"}


def synchronous_mode() -> str:
    mode = os.environ.get("PRUNELOG_SQLITE_SYNCHRONOUS", "NORMAL").upper()
    if mode not in _SYNC_MODES:
        from domain.errors import ConfigError

        raise ConfigError(
            f"PRUNELOG_SQLITE_SYNCHRONOUS={mode!r}; expected one of {sorted(_SYNC_MODES)}"
        )
    return mode


class _Pool(SQLiteConnectionPool):
    def _create_connection(self) -> SQLiteConnection:
        conn = super()._create_connection()
        conn._sqlite_conn.execute(f"PRAGMA synchronous={synchronous_mode()}")
        return conn


class PrunelogSQLiteFactory(SQLiteFactory):
    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        old = self.datastore.pool
        self.datastore.pool = _Pool(db_name=old.db_name, lock_timeout=old.lock_timeout)
        old.close()
