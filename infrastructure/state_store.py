"""SQLite storage of the sparse Merkle state: nodes by hash, one root per tx_order.

Safe to share between processes: WAL mode, a 30 s busy timeout, and short transactions.
The writer takes the write lock up front (`BEGIN IMMEDIATE`) and does all of a tx's work
inside it: read the latest root, compute the update, write (or re-stamp) nodes, add the root and the
stale-index rows. A pruner on another connection either sees all of that tx or none of it.

Genesis is the first committed transaction: tx_order 0. An empty store has no roots.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from infrastructure import smt
from infrastructure.node_index import HashIndex, ensure_nodes_table, rebuild_nodes
from infrastructure.node_kids import (
    LOOKUP_CHUNK,
    MAX_ROW_ID,
    add_kids_column,
    backfill_kids,
    chunked,
    ids_by_hash,
    pack_ids,
    read_for_write,
    unpack_ids,
    write_nodes,
)
from infrastructure.root_queries import RootQueries
from infrastructure.sqlite_txn import write_transaction
from infrastructure.stale_ids import INSERT_STALE, add_stale_columns, backfill_stale_ids
from infrastructure.state_rows import (
    ChainViewRow,
    EmptyStoreError,
    RootRow,
    TxResult,
    TxSpec,
    block_hash_for,
)

__all__ = [
    "MAX_ROW_ID",
    "ChainViewRow",
    "EmptyStoreError",
    "RootRow",
    "SqliteStateStore",
    "TxResult",
    "TxSpec",
    "add_kids_column",
    "block_hash_for",
    "pack_ids",
    "unpack_ids",
]

# The node table is node_index.NODES_TABLE.
SCHEMA = """
CREATE TABLE IF NOT EXISTS roots (tx_order INTEGER PRIMARY KEY, state_root BLOB NOT NULL,
    block_height INTEGER NOT NULL, block_hash BLOB NOT NULL, chain_timestamp INTEGER NOT NULL,
    swept INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS stale (stale_order INTEGER NOT NULL, hash BLOB NOT NULL,
    node_id INTEGER, node_size INTEGER, PRIMARY KEY (stale_order, hash)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pinned_roots (state_root BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS roots_by_height ON roots(block_height);
"""

OBJECT_RAW = b"obj"
BUSY_TIMEOUT_S = 30.0
CACHE_KIB = 64 * 1024


class SqliteStateStore(RootQueries):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so transaction edges are exact.
        self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        # The hash index is random-access: a bigger page cache keeps its hot pages around.
        self._conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self._index = ensure_nodes_table(self._conn)
        self._conn.executescript(SCHEMA)
        add_kids_column(self._conn)
        add_stale_columns(self._conn)

    @classmethod
    def open(cls, path: str | Path) -> SqliteStateStore:
        return cls(path)

    @property
    def connection(self) -> sqlite3.Connection:
        return self._conn

    @property
    def hash_index(self) -> HashIndex:
        """How this store's node table is found by hash (`node_index`)."""
        return self._index

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SqliteStateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- writes -----------------------------------------------------------------------------

    def commit_tx(
        self,
        changes: Mapping[bytes, bytes | None],
        *,
        chain_timestamp: int,
        objects: Mapping[bytes, Mapping[bytes, bytes] | None] | None = None,
    ) -> TxResult:
        """Commit one transaction as tx_order = latest + 1 (0 for genesis).

        `changes` maps a key to a raw value (stored as a plain value) or None (delete).
        `objects` maps a key to its fields, built into a fresh field tree, or None (delete).
        Raw values only: a caller cannot embed an arbitrary old root and so graft a subtree
        that the pruner may already consider garbage (the writer rule, DESIGN.md item 4).
        """
        return self.commit_many([TxSpec(changes, chain_timestamp, objects)])[0]

    def commit_many(self, txs: Sequence[TxSpec]) -> list[TxResult]:
        """Bulk mode: consecutive txs in ONE SQLite transaction.

        Each tx keeps its own order, root, node stamps and stale rows, exactly as if
        committed alone; only the SQLite commit is shared. That saves rewriting the same
        random index pages to the WAL once per tx, which dominates the cost of small txs.
        """
        for spec in txs:
            both = spec.changes.keys() & (spec.objects or {}).keys()
            if both:
                raise ValueError(f"keys both in changes and objects: {sorted(both)[:3]}")
        conn = self._conn
        with write_transaction(conn):
            row = conn.execute(
                "SELECT tx_order, state_root FROM roots ORDER BY tx_order DESC LIMIT 1"
            ).fetchone()
            order, root = (0, smt.EMPTY_ROOT) if row is None else (row[0] + 1, row[1])
            results: list[TxResult] = []
            # Nodes written earlier in this SQLite transaction; no one else can change them
            # before COMMIT, and later txs of the batch read the same top of the tree.
            batch_nodes: dict[bytes, bytes] = {}
            batch_ids: dict[bytes, int] = {}  # row ids of those, and of children looked up
            for spec in txs:
                results.append(self._write_tx(order, root, spec, batch_nodes, batch_ids))
                order, root = order + 1, results[-1].state_root
        return results

    def _write_tx(
        self,
        order: int,
        root: bytes,
        spec: TxSpec,
        batch_nodes: dict[bytes, bytes],
        batch_ids: dict[bytes, int],
    ) -> TxResult:
        """One tx's writes; the caller holds the write transaction."""
        seen: dict[bytes, bytes] = {}

        def read(h: bytes) -> bytes:
            data = batch_nodes.get(h)
            if data is None:
                data = read_for_write(self._conn, self._index, h, batch_ids)
            seen[h] = data
            return data

        written: dict[bytes, bytes] = {}
        values: dict[bytes, bytes | None] = {
            k: None if v is None else smt.encode_value(v) for k, v in spec.changes.items()
        }
        for key, fields in (spec.objects or {}).items():
            if fields is None:
                values[key] = None
                continue
            field_root, nodes, _ = smt.update(
                read, smt.EMPTY_ROOT, {f: smt.encode_value(v) for f, v in fields.items()}
            )
            written.update(nodes)
            values[key] = smt.encode_value(OBJECT_RAW, object_root=field_root)
        new_root, nodes, replaced = smt.update(read, root, values)
        written.update(nodes)
        stale = self._stale_candidates(read, seen, replaced, written)
        # Nodes read or written earlier in this SQLite transaction are known to exist.
        # Their row ids are in batch_ids (read_for_write and write_nodes put them there).
        stored = {h for h in written if h in seen or h in batch_nodes}
        found = ids_by_hash(self._conn, self._index, [h for h in written if h not in stored])
        batch_ids.update(found)
        stored.update(found)
        batch_nodes.update(written)
        write_nodes(self._conn, self._index, written, order, batch_ids, stored)
        conn = self._conn
        conn.execute(
            "INSERT INTO roots(tx_order, state_root, block_height, block_hash, "
            "chain_timestamp) VALUES (?, ?, ?, ?, ?)",
            (order, new_root, order, block_hash_for(order, new_root), spec.chain_timestamp),
        )
        # Every candidate was read in this SQLite transaction: its row id and data are known.
        conn.executemany(
            INSERT_STALE,
            [(order, h, batch_ids.get(h), len(h) + len(seen[h])) for h in stale],
        )
        return TxResult(order, new_root, len(written), len(stored), len(stale))

    def backfill_stale_ids(self) -> int:
        """Fills `stale.node_id` and `node_size` of entries from before them (`stale_ids`)."""
        return backfill_stale_ids(self._conn, self._index)

    def backfill_kids(self, batch: int = 20_000) -> int:
        """Fills `kids` of rows written before the column existed; returns how many (see
        `node_kids.backfill_kids`)."""
        return backfill_kids(self._conn, self._index, batch)

    def rebuild_nodes(self) -> bool:
        """Moves a store made before the prefix index to it (`node_index.rebuild_nodes`):
        stop the writer first. Returns False if there was nothing to do."""
        rebuilt = rebuild_nodes(self._conn)
        self._index = HashIndex.of(self._conn)
        return rebuilt

    @staticmethod
    def _stale_candidates(
        read: smt.ReadNode,
        seen: Mapping[bytes, bytes],
        replaced: list[bytes],
        written: Mapping[bytes, bytes],
    ) -> list[bytes]:
        """Replaced path nodes, plus the field trees of objects whose leaf was replaced.

        Only candidates: a field tree may still be shared by another object. The pruner
        deletes a candidate only if it is unmarked and its written_order passes the guard.
        """
        out = dict.fromkeys(replaced)
        dropped = [c for h in replaced if smt.is_leaf(seen[h]) for c in smt.children(seen[h])]
        for field_root in dropped:
            # A missing node here is a live one (the tx's own base state): let it raise.
            if field_root not in written:
                out.update(dict.fromkeys(smt.reachable(read, field_root)))
        return [h for h in out if h not in written]

    def pin_root(self, state_root: bytes) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO pinned_roots(state_root) VALUES (?)", (state_root,)
        )

    def unpin_root(self, state_root: bytes) -> None:
        self._conn.execute("DELETE FROM pinned_roots WHERE state_root = ?", (state_root,))

    # --- reads ------------------------------------------------------------------------------

    def read_node(self, h: bytes) -> bytes:
        where, params = self._index.one(h)
        row = self._conn.execute(f"SELECT data FROM nodes WHERE {where}", params).fetchone()
        if row is None:
            raise smt.MissingNodeError(h)
        data: bytes = row[0]
        return data

    def get(self, root: bytes, key: bytes) -> bytes | None:
        """The encoded value (see `smt.decode_value`) of `key` at `root`, or None."""
        return smt.get(self.read_node, root, key)

    def node_count(self) -> int:
        count: int = self._conn.execute("SELECT COUNT(*) FROM nodes").fetchone()[0]
        return count

    def total_bytes(self) -> int:
        total: int = self._conn.execute(
            "SELECT COALESCE(SUM(LENGTH(data) + LENGTH(hash)), 0) FROM nodes"
        ).fetchone()[0]
        return total

    # --- verification -----------------------------------------------------------------------

    def verify(self, root: bytes) -> smt.VerifyReport:
        """Traverse from `root` (nested object roots included), re-hashing every node."""
        return self.verify_roots([root])

    def verify_roots(self, roots: Iterable[bytes]) -> smt.VerifyReport:
        """Traverse from all `roots` at once; shared nodes are visited once."""
        return smt.verify_walk(self.fetch_nodes, roots, LOOKUP_CHUNK)

    def fetch_nodes(self, hashes: Sequence[bytes]) -> dict[bytes, bytes]:
        """`{hash: data}` for the stored ones among `hashes`, in chunked IN lookups."""
        out: dict[bytes, bytes] = {}
        for chunk in chunked(list(hashes)):
            where, params = self._index.any_of(chunk)
            out.update(self._conn.execute(f"SELECT hash, data FROM nodes WHERE {where}", params))
        return out
