"""Columns added to a table made by an older version, safe when several processes open the
same file at once."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping


def add_missing_columns(conn: sqlite3.Connection, table: str, ddl: Mapping[str, str]) -> None:
    """Runs `ddl[name]` (an ALTER TABLE ... ADD COLUMN) for each column `table` lacks. A table
    that does not exist yet is left alone: its schema will have them."""
    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    if not columns:
        return
    for name, statement in ddl.items():
        if name in columns:
            continue
        try:
            conn.execute(statement)
        except sqlite3.OperationalError as exc:  # another process added it first
            if "duplicate column" not in str(exc):
                raise
