"""The state store's reads of its roots and of the chain view; mixed into SqliteStateStore."""

from __future__ import annotations

import sqlite3

from infrastructure.state_rows import (
    ROOT_COLUMNS,
    ChainViewRow,
    EmptyStoreError,
    RootRow,
    root_row,
)


class RootQueries:
    """Root rows by order, by range and by height, and the chain view in one read tx."""

    _conn: sqlite3.Connection

    def latest(self) -> RootRow | None:
        row = self._conn.execute(
            f"SELECT {ROOT_COLUMNS} FROM roots ORDER BY tx_order DESC LIMIT 1"
        ).fetchone()
        return None if row is None else root_row(row)

    def root_at(self, order: int) -> RootRow | None:
        row = self._conn.execute(
            f"SELECT {ROOT_COLUMNS} FROM roots WHERE tx_order = ?", (order,)
        ).fetchone()
        return None if row is None else root_row(row)

    def roots_between(self, lo: int, hi: int) -> list[RootRow]:
        """Roots with lo <= tx_order <= hi, oldest first."""
        rows = self._conn.execute(
            f"SELECT {ROOT_COLUMNS} FROM roots WHERE tx_order BETWEEN ? AND ? ORDER BY tx_order",
            (lo, hi),
        ).fetchall()
        return [root_row(r) for r in rows]

    def block_hash_at(self, height: int) -> bytes | None:
        row = self._conn.execute(
            "SELECT block_hash FROM roots WHERE block_height = ?", (height,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def read_chain_view(self, protection_orders: int | None = None) -> ChainViewRow:
        """Latest order, root, chain metadata, genesis and pinned roots, in ONE read tx.

        In WAL mode a read transaction sees the database as of its first SELECT until it
        ends, whatever writers commit meanwhile; so every field here comes from one state.
        With `protection_orders`, the retained window's roots are read in the same tx.
        """
        conn = self._conn
        conn.execute("BEGIN")
        try:
            latest = conn.execute(
                f"SELECT {ROOT_COLUMNS} FROM roots ORDER BY tx_order DESC LIMIT 1"
            ).fetchone()
            if latest is None:
                raise EmptyStoreError("no committed transaction yet")
            genesis = conn.execute(
                "SELECT state_root FROM roots ORDER BY tx_order LIMIT 1"
            ).fetchone()
            pinned = conn.execute("SELECT state_root FROM pinned_roots ORDER BY state_root")
            pinned_roots = tuple(bytes(r[0]) for r in pinned)
            window: tuple[bytes, ...] = ()
            if protection_orders is not None:
                rows = conn.execute(
                    "SELECT state_root FROM roots WHERE tx_order >= ? ORDER BY tx_order",
                    (latest[0] - protection_orders,),
                )
                window = tuple(bytes(r[0]) for r in rows)
        finally:
            conn.execute("COMMIT")
        order, root, height, block_hash, timestamp, _ = latest
        return ChainViewRow(
            order, root, height, block_hash, timestamp, genesis[0], pinned_roots, window
        )
