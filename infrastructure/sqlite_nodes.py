"""The pruner's view of the SQLite state store: batched lookups, guarded deletes with a
journal in the same transaction, the stale index, and the persisted reach set."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import msgpack

from domain.errors import CorruptJournalError
from domain.ports import MISSING_ROW, Expansion, JournalEntry, StaleEntry
from infrastructure import smt
from infrastructure.delete_txn import _CHUNK, DeleteTransactions, journaled_nodes
from infrastructure.node_index import HashIndex
from infrastructure.node_kids import add_kids_column, ids_by_hash, unpack_id_array, unpack_ids
from infrastructure.pruner_schema import PRUNER_PRAGMAS, ensure_journal, tune_connection
from infrastructure.reach_sets import FileReachStore, RoaringReach
from infrastructure.stale_ids import add_stale_columns

__all__ = [
    "PRUNER_PRAGMAS",
    "FileReachStore",
    "RoaringReach",
    "SqliteNodeStore",
    "ensure_journal",
    "journaled_nodes",
    "tune_connection",
]


class SqliteNodeStore(DeleteTransactions):
    """Implements NodeStorePort on its own connection to the state store file."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        tune_connection(self.conn)
        ensure_journal(self.conn)
        add_kids_column(self.conn)
        add_stale_columns(self.conn)
        self._genesis: bytes | None = None
        self._index: HashIndex | None = None

    @property
    def hash_index(self) -> HashIndex:
        """The node table's layout, read once it exists (a pruner may open the file first)."""
        if self._index is None:
            self._index = HashIndex.read(self.conn)
        return self._index or HashIndex(prefixed=False)

    def close(self) -> None:
        self.conn.close()

    # --- roots ---------------------------------------------------------------------------

    def retained_roots(self, from_order: int, to_order: int) -> list[bytes]:
        c = self.conn
        rows = c.execute(
            "SELECT state_root FROM roots WHERE tx_order BETWEEN ? AND ? "
            "UNION SELECT state_root FROM roots WHERE tx_order = 0 "
            "UNION SELECT state_root FROM pinned_roots",
            (from_order, to_order),
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    def expired_roots(self, below_order: int) -> list[tuple[int, bytes]]:
        rows = self.conn.execute(
            "SELECT tx_order, state_root FROM roots WHERE swept = 0 AND tx_order > 0 "
            "AND tx_order < ? AND state_root NOT IN (SELECT state_root FROM pinned_roots) "
            "ORDER BY tx_order",
            (below_order,),
        ).fetchall()
        return [(int(o), bytes(r)) for o, r in rows]

    # --- nodes ---------------------------------------------------------------------------

    def ids_of(self, hashes: list[bytes]) -> dict[bytes, int]:
        return ids_by_hash(self.conn, self.hash_index, hashes)

    def expand(self, row_ids: list[int]) -> Expansion:
        rows: list[tuple[int, bytes]] = []  # kids is NULL (None) for a row from before it
        execute = self.conn.execute
        ids = sorted(row_ids)  # neighbouring rows share pages
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            sql = f"SELECT id, kids FROM nodes WHERE id IN ({','.join('?' * len(chunk))})"
            rows += execute(sql, chunk).fetchall()
        found = [row_id for row_id, _ in rows]
        try:
            return Expansion(found, unpack_id_array(b"".join([kids for _, kids in rows])))
        except TypeError:  # a NULL kids: a row from before the column
            pass
        known = [(row_id, kids) for row_id, kids in rows if kids is not None]
        children = list(unpack_ids(b"".join(kids for _, kids in known)))
        done = {row_id for row_id, _ in known}
        children += self._children_by_hash([row_id for row_id in found if row_id not in done])
        return Expansion(found, children)

    def _children_by_hash(self, row_ids: list[int]) -> list[int]:
        """Children of rows without `kids`, from their data and the hash index (slow path)."""
        execute = self.conn.execute
        hashes: list[bytes] = []
        for i in range(0, len(row_ids), _CHUNK):
            chunk = row_ids[i : i + _CHUNK]
            sql = f"SELECT data FROM nodes WHERE id IN ({','.join('?' * len(chunk))})"
            hashes.extend(c for (data,) in execute(sql, chunk) for c in smt.children(data))
        found = self.ids_of(list(dict.fromkeys(hashes)))
        return [found.get(h, MISSING_ROW) for h in hashes]

    def delete_guarded(
        self, row_ids: list[int], max_order: int, journal: JournalEntry, swept: list[int]
    ) -> Sequence[tuple[bytes, int]]:
        return self._delete(row_ids, max_order, journal, [], swept)

    def sweep_stale(
        self,
        entries: list[StaleEntry],
        row_ids: list[int],
        max_order: int,
        journal: JournalEntry,
    ) -> Sequence[tuple[bytes, int]]:
        return self._delete(row_ids, max_order, journal, entries, [])

    def stale_entries(self, up_to_order: int, limit: int) -> list[StaleEntry]:
        rows: list[StaleEntry] = self.conn.execute(  # NULL: an entry from before the columns
            "SELECT stale_order, hash, ifnull(node_id, 0), ifnull(node_size, 0) FROM stale "
            "WHERE stale_order <= ? ORDER BY stale_order, hash LIMIT ?",
            (up_to_order, limit),
        ).fetchall()
        return rows

    # --- journal -------------------------------------------------------------------------

    def unlogged_journal(self) -> list[JournalEntry]:
        rows = self.conn.execute(
            "SELECT batch_key, cycle_no, snapshot_id, phase, batch_no, deleted, row_ids, "
            "event_rows FROM sweep_journal WHERE logged = 0 ORDER BY rowid"
        ).fetchall()
        entries = []
        for k, c, s, p, b, d, ids, n in rows:
            try:
                deleted = journaled_nodes(d)
                row_ids = [] if ids is None else [int(i) for i in msgpack.unpackb(ids)]
            except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
                raise CorruptJournalError(
                    f"sweep journal row {k!r} of {self.path} cannot be read "
                    f"({type(exc).__name__}: {exc}); it is "
                    "left in place: restore the state store from a backup, or remove the row "
                    "knowing that its batch's deleted nodes will be missing from the audit"
                ) from None
            entries.append(
                JournalEntry(k, int(c), int(s), str(p), int(b), deleted, row_ids, event_rows=int(n))
            )
        return entries

    def mark_journal_logged(self, batch_key: str) -> None:
        # Logged entries are dropped: the event log now holds the audit.
        self.conn.execute("DELETE FROM sweep_journal WHERE batch_key = ?", (batch_key,))
