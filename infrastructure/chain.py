"""The ChainStatePort over the state store's `roots` table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from domain.errors import NoSnapshotError
from domain.ports import ChainMetadata, ChainView


class SqliteChainState:
    """Reads the chain view in ONE read transaction: in WAL mode every SELECT inside a single
    BEGIN...COMMIT sees the same database snapshot, whatever the writer commits meanwhile."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA busy_timeout=30000")

    def read_chain_view(self) -> ChainView:
        c = self._conn
        c.execute("BEGIN")
        try:
            row = c.execute(
                "SELECT tx_order, state_root, block_height, block_hash, chain_timestamp "
                "FROM roots ORDER BY tx_order DESC LIMIT 1"
            ).fetchone()
        finally:
            c.execute("COMMIT")
        if row is None:
            raise NoSnapshotError(f"the state store {self.path} has no roots yet")
        order, root, height, block_hash, ts = row
        return ChainView(
            latest_order=int(order),
            state_root=_hex(root),
            chain_metadata=ChainMetadata(
                block_height=int(height),
                chain_timestamp=int(ts),
                latest_block_hash=_hex(block_hash),
            ),
        )

    def block_hash_at(self, height: int) -> str | None:
        row = self._conn.execute(
            "SELECT block_hash FROM roots WHERE block_height = ? ORDER BY tx_order DESC LIMIT 1",
            (height,),
        ).fetchone()
        return None if row is None else _hex(row[0])

    def close(self) -> None:
        self._conn.close()


def _hex(value: bytes | str) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)
