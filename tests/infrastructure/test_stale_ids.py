"""`stale.node_id`: the row id the writer records with each stale-index entry, what the pruner's
`stale_entries` reports of it, and the upgrade of a store from before the column."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.ports import MISSING_ROW, JournalEntry, row_ids_of
from infrastructure import delete_txn
from infrastructure.sqlite_nodes import SqliteNodeStore
from infrastructure.stale_ids import backfill_stale_ids
from infrastructure.state_store import SqliteStateStore, TxSpec
from infrastructure.workload import WorkloadWriter


def rows_by_hash(conn: sqlite3.Connection) -> dict[bytes, tuple[int, int]]:
    """hash -> (row id, bytes of hash and data), as the stale index should record them"""
    rows = conn.execute("SELECT hash, id, length(hash) + length(data) FROM nodes")
    return {bytes(h): (int(i), int(n)) for h, i, n in rows}


def stale_rows(conn: sqlite3.Connection) -> list[tuple[int, bytes, tuple[int, int] | None]]:
    """(order, hash, (node_id, node_size)), the pair None where either is NULL"""
    rows = conn.execute("SELECT stale_order, hash, node_id, node_size FROM stale")
    return [
        (int(o), bytes(h), None if i is None or n is None else (int(i), int(n)))
        for o, h, i, n in rows
    ]


def old_store(path: Path, txs: int) -> None:
    """A store as an older version wrote it: `txs` txs changing two keys, no stale.node_id
    and node_size."""
    with SqliteStateStore.open(path) as store:
        for i in range(txs):
            store.commit_tx({b"k": b"v%d" % i, b"j": b"w%d" % i}, chain_timestamp=i)
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE stale DROP COLUMN node_id")
        db.execute("ALTER TABLE stale DROP COLUMN node_size")


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([1, 7]))
def test_every_stale_entry_names_the_row_and_size_of_its_node_when_the_tx_replaced_it(
    tmp_path_factory: pytest.TempPathFactory, seed: int, batch: int
) -> None:
    # Nothing is pruned here, so the row holding a hash now is the one that held it then.
    path = tmp_path_factory.mktemp("w") / "state.sqlite"
    with SqliteStateStore.open(path) as store:
        WorkloadWriter(store, seed, keys=40, ops_per_tx=6).run(60, batch=batch)
        nodes = rows_by_hash(store.connection)
        rows = stale_rows(store.connection)
    assert rows
    assert all(recorded == nodes[h] for _, h, recorded in rows)


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
    nodes = rows_by_hash(store.connection)
    dropped = [(h, recorded) for order, h, recorded in stale_rows(store.connection) if order == 2]
    assert len(dropped) >= 3  # the object's leaf, its field root and its fields
    assert all(recorded == nodes[h] for h, recorded in dropped)


def test_stale_entries_report_the_recorded_row_id_and_size(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    for i in range(4):
        store.commit_tx({b"k": b"v%d" % i}, chain_timestamp=i)
    rows = rows_by_hash(store.connection)

    entries = nodes.stale_entries(10**9, 1_000)

    assert entries and all(len(e) == 4 for e in entries)
    assert all((row_id, size) == rows[h] for _, h, row_id, size in entries)


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

    assert entries and all(e[2:] == (MISSING_ROW, 0) for e in entries)


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

        nodes = rows_by_hash(conn)
        rows = stale_rows(conn)
    assert filled == total - gone_entries and again == 0
    assert all((r is None) if h == gone else (r == nodes[h]) for _, h, r in rows)


def test_backfill_works_through_more_entries_than_one_batch(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    old_store(path, 30)
    with SqliteStateStore.open(path) as store:
        total = len(stale_rows(store.connection))
        assert total > 20
        assert backfill_stale_ids(store.connection, store.hash_index, batch=7) == total
        nodes = rows_by_hash(store.connection)
        assert all(r == nodes[h] for _, h, r in stale_rows(store.connection))


@pytest.mark.parametrize(
    ("case", "read_free_chunks"),
    [
        ("the guard passes every row", [True]),
        ("the guard keeps rows written after order 10", [True]),
        # Which of the missing rows the DELETE removed is unknown: the transaction is redone
        # by reading the rows (no chunk completes without reading them).
        ("some rows were gone before", []),
        # Chunks of 4 rows, every other one with a row whose entry recorded no size: those
        # chunks are read, the others are not, and one transaction audits both kinds.
        ("every other chunk of 4 has an entry without its size", None),
    ],
)
def test_a_sweep_of_entries_with_recorded_rows_deletes_and_reports_what_reading_them_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, read_free_chunks: list[bool] | None
) -> None:
    fast = []  # chunks deleted from what the entries recorded, without reading the rows
    read_free = SqliteNodeStore._delete_known

    def counted(*args: Any) -> list[int]:
        done = read_free(*args)
        fast.append(True)
        return done

    monkeypatch.setattr(SqliteNodeStore, "_delete_known", staticmethod(counted))
    mixed = "every other chunk" in case
    if mixed:
        monkeypatch.setattr(delete_txn, "_CHUNK", 4)
    reports = []
    for known in (True, False):
        path = tmp_path / f"{known}.sqlite"
        with SqliteStateStore.open(path) as store:
            WorkloadWriter(store, 5, keys=30, ops_per_tx=5).run(30, batch=5)
            latest = store.connection.execute("SELECT MAX(tx_order) FROM roots").fetchone()[0]
        max_order = 10 if "order 10" in case else latest
        nodes = SqliteNodeStore(path)
        try:
            entries = nodes.stale_entries(latest, 10**6)
            ids = sorted({row_id for _, _, row_id, _ in entries})
            if not known:  # as from an older store: the rows get read
                entries = [(o, h, row_id, 0) for o, h, row_id, _ in entries]
            elif mixed:
                unsized = set(ids[4::8])  # the first row of every other chunk
                entries = [(o, h, i, 0 if i in unsized else n) for o, h, i, n in entries]
                read_free_chunks = [True] * ((len(ids) + 7) // 8)
            if "gone" in case:
                nodes.conn.executemany("DELETE FROM nodes WHERE id = ?", [(i,) for i in ids[::7]])
            deleted = nodes.sweep_stale(
                entries, ids, max_order, JournalEntry("k", 1, 1, "x", 1, [])
            )
            # The same rows, each with its own hash, size and row id (in any order).
            journaled = [
                (e.batch_key, sorted(zip(e.deleted, e.row_ids, strict=True)))
                for e in nodes.unlogged_journal()
            ]
            reports.append((sorted(zip(deleted, row_ids_of(deleted), strict=True)), journaled))
        finally:
            nodes.close()
    assert reports[0] == reports[1] and reports[0][0]
    assert fast == read_free_chunks  # never tried without sizes
