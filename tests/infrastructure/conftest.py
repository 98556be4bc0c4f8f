"""Fixtures shared by the state-store tests: a fresh state store, and the pruner's view of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infrastructure.sqlite_nodes import SqliteNodeStore
from infrastructure.state_store import SqliteStateStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStateStore]:
    with SqliteStateStore.open(tmp_path / "state.sqlite") as opened:
        yield opened


@pytest.fixture
def nodes(store: SqliteStateStore) -> Iterator[SqliteNodeStore]:
    opened = SqliteNodeStore(store.path)
    try:
        yield opened
    finally:
        opened.close()
