"""The pruner's view of the SQLite state store: batched lookups, guarded deletes with a
journal in the same transaction, the stale index, and the persisted reach set."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from domain.ports import MISSING_ROW, Expansion, JournalEntry, StaleEntry
from infrastructure import smt
from infrastructure.delete_txn import _CHUNK, DeleteTransactions
from infrastructure.node_index import HashIndex
from infrastructure.node_kids import add_kids_column, ids_by_hash, unpack_id_array, unpack_ids
from infrastructure.pruner_schema import PRUNER_PRAGMAS, ensure_journal, tune_connection
from infrastructure.reach_sets import FileReachStore, RoaringReach
from infrastructure.stale_ids import add_stale_columns
from infrastructure.sweep_journal import JournalRows, journaled_nodes, pending_stale_end

__all__ = [
    "PRUNER_PRAGMAS",
    "FileReachStore",
    "RoaringReach",
    "SqliteNodeStore",
    "ensure_journal",
    "journaled_nodes",
    "tune_connection",
]


class SqliteNodeStore(DeleteTransactions, JournalRows):
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
        self._last_read: list[StaleEntry] | None = None  # what stale_entries returned last

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
        # The batch stale_entries returned last, as it returned it: its key range holds it
        # and nothing else, so its rows may stay until it is logged (sweep_journal.py).
        defer = bool(entries) and entries is self._last_read
        self._last_read = None
        return self._delete(row_ids, max_order, journal, entries, [], defer_stale=defer)

    def stale_entries(self, up_to_order: int, limit: int) -> list[StaleEntry]:
        columns = "stale_order, hash, ifnull(node_id, 0), ifnull(node_size, 0)"  # NULL: older
        where = "stale_order <= ?"
        params: tuple[object, ...] = (up_to_order,)
        # Past the rows of batches deleted but not logged yet (their journal rows keep them).
        after = pending_stale_end(self.conn)
        if after is not None:
            where, params = f"(stale_order, hash) > (?, ?) AND {where}", (*after, up_to_order)
        rows: list[StaleEntry] = self.conn.execute(
            f"SELECT {columns} FROM stale WHERE {where} ORDER BY stale_order, hash LIMIT ?",
            (*params, limit),
        ).fetchall()
        self._last_read = rows
        return rows
