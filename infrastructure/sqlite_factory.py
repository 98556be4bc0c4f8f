"""eventsourcing's SQLite persistence with our pragmas. In WAL mode `synchronous=NORMAL` survives
any process crash (kill -9); only a power cut can lose the last commits. Set
PRUNELOG_SQLITE_SYNCHRONOUS=FULL to trade latency for that too."""

from __future__ import annotations

import os

from eventsourcing.sqlite import SQLiteConnection, SQLiteConnectionPool, SQLiteFactory
from eventsourcing.utils import Environment

_SYNC_MODES = {"OFF", "NORMAL", "FULL", "EXTRA"}

# A sweep logs ~37 MB of NodesSwept events per million nodes. At SQLite's default (a checkpoint
# every 1000 pages, 4 MiB) that is ~10 checkpoints, each fsyncing the WAL and the database:
# saving the events took 0.30-0.66 s of a 6.3 s IncrementalSweep, and 0.15-0.17 s with a
# checkpoint every 16384 pages (64 MiB); that checkpoint then costs ~0.13 s. The WAL file
# stays about that size, and durability is unchanged (the WAL holds every commit).
EVENTS_WAL_PAGES = 16384


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
        conn._sqlite_conn.execute(f"PRAGMA wal_autocheckpoint={EVENTS_WAL_PAGES}")
        return conn


class PrunelogSQLiteFactory(SQLiteFactory):
    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        old = self.datastore.pool
        self.datastore.pool = _Pool(db_name=old.db_name, lock_timeout=old.lock_timeout)
        old.close()
