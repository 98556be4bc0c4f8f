"""The `node_id` and `node_size` columns of the stale index: the row id of the node an entry
names and its size (hash and data bytes), recorded by the writer, which has just read that node
(it is on the path the tx replaced). IncrementalSweep then needs no hash lookup to find the row
and no read of it for the audit: only the guard's count in the deleting transaction.

Row ids are never reused (AUTOINCREMENT) and a row never changes hash, so an entry's `node_id`
names either the row that held its hash when the entry was written, or a row that is gone.
A gone row is simply not deleted: if the hash was written again meanwhile, its new row is
garbage only once a later tx replaces it (a new entry, with the new id) or its root expires
(SweepExpired walks it). NULL: an entry from before the columns, or one the writer could not
place; the pruner looks its hash up and reads the row instead, as before."""

from __future__ import annotations

import sqlite3

from infrastructure.node_index import HashIndex
from infrastructure.sqlite_columns import add_missing_columns
from infrastructure.sqlite_txn import write_transaction

_COLUMNS = {
    "node_id": "ALTER TABLE stale ADD COLUMN node_id INTEGER",
    "node_size": "ALTER TABLE stale ADD COLUMN node_size INTEGER",
}
INSERT_STALE = (
    "INSERT OR IGNORE INTO stale(stale_order, hash, node_id, node_size) VALUES (?, ?, ?, ?)"
)


def add_stale_columns(conn: sqlite3.Connection) -> None:
    """A store made before `stale.node_id` / `node_size` gets them (NULL for existing entries)."""
    add_missing_columns(conn, "stale", _COLUMNS)


def backfill_stale_ids(conn: sqlite3.Connection, index: HashIndex, batch: int = 50_000) -> int:
    """Fills `node_id` and `node_size` of entries from before the columns from the row now
    holding their hash (the row the pruner's lookup would find); entries whose hash is gone
    keep NULL. Returns how many it filled. One write transaction per `batch` entries, so a
    writer gets turns."""
    filled, after = 0, (-1, b"")
    while True:
        with write_transaction(conn):
            keys = conn.execute(
                "SELECT stale_order, hash FROM stale WHERE (stale_order, hash) > (?, ?) "
                "AND (node_id IS NULL OR node_size IS NULL) ORDER BY stale_order, hash LIMIT ?",
                (*after, batch),
            ).fetchall()
            if keys:
                same = index.matches("stale", "hash")
                filled += conn.execute(
                    "UPDATE stale SET (node_id, node_size) = (SELECT nodes.id, "
                    f"length(nodes.hash) + length(nodes.data) FROM nodes WHERE {same}) "
                    "WHERE (node_id IS NULL OR node_size IS NULL) AND (stale_order, hash) "
                    f"BETWEEN (?, ?) AND (?, ?) AND EXISTS (SELECT 1 FROM nodes WHERE {same})",
                    (*keys[0], *keys[-1]),
                ).rowcount
        if len(keys) < batch:
            return filled
        after = keys[-1]
