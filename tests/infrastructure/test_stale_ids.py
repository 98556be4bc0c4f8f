"""`stale.node_id`: the row id the writer records with each stale-index entry, what the pruner's
`stale_entries` reports of it, and the upgrade of a store from before the column."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.ports import MISSING_ROW
from infrastructure.sqlite_nodes import SqliteNodeStore
from infrastructure.stale_ids import backfill_stale_ids
from infrastructure.state_store import SqliteStateStore, TxSpec
from infrastructure.workload import WorkloadWriter


def ids_by_hash(conn: sqlite3.Connection) -> dict[bytes, int]:
    return {bytes(h): int(i) for h, i in conn.execute("SELECT hash, id FROM nodes")}


def stale_rows(conn: sqlite3.Connection) -> list[tuple[int, bytes, int | None]]:
    return [
        (int(o), bytes(h), i)
        for o, h, i in conn.execute("SELECT stale_order, hash, node_id FROM stale")
    ]


def old_store(path: Path, txs: int) -> None:
    """A store as an older version wrote it: `txs` txs changing two keys, no stale.node_id."""
    with SqliteStateStore.open(path) as store:
        for i in range(txs):
            store.commit_tx({b"k": b"v%d" % i, b"j": b"w%d" % i}, chain_timestamp=i)
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE stale DROP COLUMN node_id")


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([1, 7]))
def test_every_stale_entry_names_the_row_that_held_its_hash_when_the_tx_replaced_it(
    tmp_path_factory: pytest.TempPathFactory, seed: int, batch: int
) -> None:
    # Nothing is pruned here, so the row holding a hash now is the one that held it then.
    path = tmp_path_factory.mktemp("w") / "state.sqlite"
    with SqliteStateStore.open(path) as store:
        WorkloadWriter(store, seed, keys=40, ops_per_tx=6).run(60, batch=batch)
        ids = ids_by_hash(store.connection)
        rows = stale_rows(store.connection)
    assert rows
    assert all(node_id is not None and node_id == ids[h] for _, h, node_id in rows)


def test_entries_for_nodes_written_earlier_in_the_same_batch_get_those_rows_ids(
    store: SqliteStateStore,
) -> None:
    store.commit_tx({b"genesis": b"g"}, chain_timestamp=0)
    # tx 1 writes the object's field tree; tx 2 (same SQLite transaction) drops the object.
    store.commit_many(
        [
            TxSpec({}, 1, {b"obj": {b"f1": b"a", b"f2": b"b"}}),
            TxSpec({b"other": b"x"}, 2, {b"obj": None}),
        ]
    )
    ids = ids_by_hash(store.connection)
    dropped = [(h, node_id) for order, h, node_id in stale_rows(store.connection) if order == 2]
    assert len(dropped) >= 3  # the object's leaf, its field root and its fields
    assert all(node_id == ids[h] for h, node_id in dropped)


def test_stale_entries_report_the_recorded_row_id(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    for i in range(4):
        store.commit_tx({b"k": b"v%d" % i}, chain_timestamp=i)
    ids = ids_by_hash(store.connection)

    entries = nodes.stale_entries(10**9, 1_000)

    assert entries and all(len(e) == 3 for e in entries)
    assert all(row_id == ids[h] for _, h, row_id in entries)


def test_a_store_from_before_the_column_gets_it_and_reports_its_entries_as_unplaced(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite"
    old_store(path, 4)

    nodes = SqliteNodeStore(path)
    try:
        entries = nodes.stale_entries(10**9, 1_000)
    finally:
        nodes.close()

    assert entries and all(row_id == MISSING_ROW for _, _, row_id in entries)


def test_backfill_places_old_entries_on_the_row_now_holding_their_hash_and_leaves_gone_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite"
    old_store(path, 6)
    with SqliteStateStore.open(path) as store:
        conn = store.connection
        gone = stale_rows(conn)[0][1]
        conn.execute("DELETE FROM nodes WHERE hash = ?", (gone,))
        total = len(stale_rows(conn))
        gone_entries = sum(1 for _, h, _ in stale_rows(conn) if h == gone)

        filled = store.backfill_stale_ids()
        again = store.backfill_stale_ids()

        ids = ids_by_hash(conn)
        rows = stale_rows(conn)
    assert filled == total - gone_entries and again == 0
    assert all((i is None) if h == gone else (i == ids[h]) for _, h, i in rows)


def test_backfill_works_through_more_entries_than_one_batch(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    old_store(path, 30)
    with SqliteStateStore.open(path) as store:
        total = len(stale_rows(store.connection))
        assert total > 20
        assert backfill_stale_ids(store.connection, batch=7) == total
        ids = ids_by_hash(store.connection)
        assert all(i == ids[h] for _, h, i in stale_rows(store.connection))
