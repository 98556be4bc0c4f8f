"""How the node table is found by hash.

A store made now indexes an 8-byte prefix of each hash (`prefix`, a STORED generated column,
so it can never disagree with `hash`) instead of the whole 32-byte hash. A sweep's delete
transaction dirties nearly every page of that index (its rows are spread over all hashes),
so the index's size is what each COMMIT writes to the WAL: the prefix index has 41 % of the
pages (4,190 against 10,165 on the 1M-node bench store) and raw deletes of the same rows ran
at ~110k/s instead of ~78k/s. A STORED column rather than an index on `substr(hash, 1, 8)`:
deleting through an expression index measured twice as slow.

Prefixes are not unique (a chain's users choose leaf contents, so they can grind 8-byte
collisions), so every lookup matches the prefix through the index and then the whole hash in
the row. Uniqueness of `hash` is a trigger instead of a UNIQUE index; the writer inserts only
hashes it has checked are absent, and stamps the others (`UPDATE`), in its write transaction.

A store made before keeps `hash UNIQUE` and is read and written through the same `HashIndex`
(whose SQL then names `hash` alone); `rebuild_nodes` moves it to the prefix index."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from infrastructure.sqlite_txn import write_transaction

PREFIX_BYTES = 8
NODES_TABLE = """
CREATE TABLE IF NOT EXISTS nodes (id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash BLOB NOT NULL, data BLOB NOT NULL, written_order INTEGER NOT NULL, kids BLOB,
    prefix BLOB GENERATED ALWAYS AS (substr(hash, 1, 8)) STORED);
"""
_PREFIX_INDEX = (
    "CREATE INDEX IF NOT EXISTS nodes_by_prefix ON nodes(prefix)",
    "CREATE TRIGGER IF NOT EXISTS nodes_hash_unique BEFORE INSERT ON nodes WHEN EXISTS "
    "(SELECT 1 FROM nodes WHERE prefix = substr(NEW.hash, 1, 8) AND hash = NEW.hash) "
    "BEGIN SELECT RAISE(ABORT, 'UNIQUE constraint failed: nodes.hash'); END",
)
_COPY_COLUMNS = "id, hash, data, written_order, kids"


@dataclass(frozen=True, slots=True)
class HashIndex:
    """SQL fragments that find nodes by hash, for the layout of one store."""

    prefixed: bool

    @classmethod
    def read(cls, conn: sqlite3.Connection) -> HashIndex | None:
        """The layout of the store's node table; None while it has none."""
        columns = {row[1] for row in conn.execute("PRAGMA table_xinfo(nodes)")}
        return cls("prefix" in columns) if columns else None

    @classmethod
    def of(cls, conn: sqlite3.Connection) -> HashIndex:
        return cls.read(conn) or cls(prefixed=False)

    def one(self, h: bytes) -> tuple[str, tuple[bytes, ...]]:
        """`WHERE` condition and parameters for the row of hash `h`."""
        if self.prefixed:
            return "prefix = ? AND hash = ?", (h[:PREFIX_BYTES], h)
        return "hash = ?", (h,)

    def any_of(self, hashes: Sequence[bytes]) -> tuple[str, list[bytes]]:
        """`WHERE` condition and parameters for the rows of `hashes` (at most 499 of them:
        the prefixed form binds two parameters per hash)."""
        marks = ",".join("?" * len(hashes))
        if self.prefixed:
            prefixes = list(dict.fromkeys(h[:PREFIX_BYTES] for h in hashes))
            where = f"prefix IN ({','.join('?' * len(prefixes))}) AND hash IN ({marks})"
            return where, [*prefixes, *hashes]
        return f"hash IN ({marks})", list(hashes)

    def matches(self, table: str, column: str) -> str:
        """A join condition: `nodes` row whose hash equals `table.column`."""
        same = f"nodes.hash = {table}.{column}"
        if self.prefixed:
            return f"nodes.prefix = substr({table}.{column}, 1, {PREFIX_BYTES}) AND {same}"
        return same


def ensure_nodes_table(conn: sqlite3.Connection) -> HashIndex:
    """Creates the node table (prefix layout) unless the store has one; returns its layout."""
    conn.executescript(NODES_TABLE)
    index = HashIndex.of(conn)
    if index.prefixed:
        for sql in _PREFIX_INDEX:
            conn.execute(sql)
    return index


def rebuild_nodes(conn: sqlite3.Connection) -> bool:
    """Moves a store made before the prefix index to it: copies the node table into the new
    layout in one write transaction, keeping every row id and the AUTOINCREMENT high-water
    mark, so row ids are still never reused. Run it with the writer and every pruner stopped
    (a pruner keeps the layout it read at start), with the table's size free on disk. Returns
    False if the store has the prefix index already.
    (1M nodes, 426 MB: 15 s.)"""
    if HashIndex.of(conn).prefixed:
        return False
    with write_transaction(conn):
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'nodes'").fetchone()
        conn.execute("ALTER TABLE nodes RENAME TO nodes_before_prefix")
        conn.execute(NODES_TABLE)
        conn.execute(
            f"INSERT INTO nodes({_COPY_COLUMNS}) SELECT {_COPY_COLUMNS} "
            "FROM nodes_before_prefix ORDER BY id"
        )
        conn.execute("DROP TABLE nodes_before_prefix")
        if row is not None:
            conn.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'nodes'", row)
        for sql in _PREFIX_INDEX:
            conn.execute(sql)
    return True
