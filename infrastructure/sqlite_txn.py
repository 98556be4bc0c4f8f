"""The write transaction every store-side change runs in."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE` (the write lock up front, so no other writer commits in between) ...
    `COMMIT`. Any exception, a failed COMMIT included, rolls back and propagates."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (IOERR, FULL)
            conn.execute("ROLLBACK")
        raise
