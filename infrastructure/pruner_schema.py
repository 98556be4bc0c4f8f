"""The pruner's own tables in the state store (the sweep journal, the fencing row) and the
PRAGMAs of its connections to that file."""

from __future__ import annotations

import sqlite3

from infrastructure.sqlite_columns import add_missing_columns

JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweep_journal (batch_key TEXT PRIMARY KEY, cycle_no INTEGER NOT NULL,
    snapshot_id INTEGER NOT NULL, phase TEXT NOT NULL, batch_no INTEGER NOT NULL,
    stale_from_order INTEGER, stale_from_hash BLOB, stale_to_order INTEGER, stale_to_hash BLOB,
    deleted BLOB NOT NULL, logged INTEGER NOT NULL DEFAULT 0, row_ids BLOB,
    event_rows INTEGER NOT NULL DEFAULT 0);
"""
# The stale_* columns come before the blobs: reading them then skips the blobs' overflow pages.
# The newest lock holding that deleted in each group: a delete under an older fencing token is
# refused inside its own transaction (see JournalEntry.fence_token).
FENCE_SCHEMA = """
CREATE TABLE IF NOT EXISTS prune_fence (grp TEXT PRIMARY KEY, token INTEGER NOT NULL,
    owner TEXT NOT NULL);
"""
# Columns a journal table made by an older version gets (row_ids NULL: "not recorded";
# event_rows 0: one event per entry, as then; stale_* NULL: the row holds every hash).
_JOURNAL_COLUMNS = {
    "row_ids": "ALTER TABLE sweep_journal ADD COLUMN row_ids BLOB",
    "event_rows": "ALTER TABLE sweep_journal ADD COLUMN event_rows INTEGER NOT NULL DEFAULT 0",
    **{
        column: f"ALTER TABLE sweep_journal ADD COLUMN {column} {kind}"
        for column, kind in (
            ("stale_from_order", "INTEGER"),
            ("stale_from_hash", "BLOB"),
            ("stale_to_order", "INTEGER"),
            ("stale_to_hash", "BLOB"),
        )
    },
}


def ensure_journal(conn: sqlite3.Connection) -> None:
    conn.executescript(JOURNAL_SCHEMA + FENCE_SCHEMA)
    add_missing_columns(conn, "sweep_journal", _JOURNAL_COLUMNS)


# The pruner reads the node table at random (hash lookups) and deletes in big batches; measured
# with benchmarks/bench_prune.py on a 1M-node store (390 MB):
PRUNER_PRAGMAS = (
    "journal_mode=WAL",
    "synchronous=NORMAL",
    "busy_timeout=30000",
    # Some builds (Debian's among them) default to secure_delete=ON, which zeroes every deleted
    # cell and writes every freed page to the WAL: about a quarter of a sweep's time on the
    # 1M-node store. Pruned nodes are public chain state, with nothing to scrub.
    "secure_delete=OFF",
    # Hash lookups read pages through a memory map instead of one pread() each; SQLite clamps
    # this to its compile-time maximum. Writes still go through the WAL.
    "mmap_size=2147418112",
    # A delete batch dirties thousands of pages: keep them in the cache until COMMIT.
    "cache_size=-65536",
    # A delete batch dirties ~1 page per deleted row, mostly random pages of the hash index.
    # Checkpointing every 1000 pages (the default) copies the same pages into the database
    # and fsyncs it once per batch; every 64K pages (256 MiB of WAL) amortizes that.
    "wal_autocheckpoint=65536",
    # ...and after a checkpoint the WAL file shrinks back to 512 MiB, not less: truncating the
    # ~300 MiB a sweep leaves cost 150-240 ms each time, four times per 1M-row sweep.
    "journal_size_limit=536870912",
)


def tune_connection(conn: sqlite3.Connection) -> None:
    """Applies PRUNER_PRAGMAS (the benchmark's raw-SQLite baselines use them too)."""
    for pragma in PRUNER_PRAGMAS:
        conn.execute(f"PRAGMA {pragma}")
