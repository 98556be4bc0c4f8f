"""The sweep journal's row format (infrastructure/sweep_journal.py): what a delete transaction
writes, what `unlogged_journal` reads back, and a row that cannot be read."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import msgpack
import pytest

from domain.errors import CorruptJournalError
from domain.ports import JournalEntry, row_ids_of
from infrastructure import delete_txn
from infrastructure.sqlite_nodes import SqliteNodeStore
from infrastructure.state_store import SqliteStateStore
from infrastructure.sweep_journal import journal_blob, journaled_nodes
from infrastructure.workload import WorkloadWriter


def entry(batch_key: str = "default/1/1") -> JournalEntry:
    return JournalEntry(batch_key, 1, 1, "IncrementalSweep", 1, [])


def insert_journal_row(nodes: SqliteNodeStore, deleted: bytes, row_ids: bytes) -> None:
    nodes.conn.execute(
        "INSERT INTO sweep_journal(batch_key, cycle_no, snapshot_id, phase, batch_no, deleted, "
        "row_ids, event_rows) VALUES ('default/1/1', 1, 1, 'SweepExpired', 1, ?, ?, 0)",
        (deleted, row_ids),
    )


def test_hashes_of_one_width_are_journaled_joined_and_read_back_in_order() -> None:
    hashes = [bytes([i]) * 32 for i in range(5)]
    sizes = [70, 80, 90, 100, 110]

    blob = journal_blob(hashes, sizes)

    assert msgpack.unpackb(blob)["w"] == 32
    assert msgpack.unpackb(blob)["N"] == b"".join(n.to_bytes(4, "little") for n in sizes)
    nodes = journaled_nodes(blob)
    assert (nodes.hashes, nodes.sizes) == (hashes, sizes)


def test_hashes_of_mixed_widths_are_journaled_as_a_list_and_read_back_in_order() -> None:
    hashes = [b"a" * 32, b"b" * 20, b"c" * 44]

    nodes = journaled_nodes(journal_blob(hashes, [1, 2, 3]))

    assert (nodes.hashes, nodes.sizes) == (hashes, [1, 2, 3])


def test_a_size_beyond_32_bits_is_journaled_as_a_list_and_read_back() -> None:
    hashes, sizes = [b"a" * 32, b"b" * 32], [70, 2**32 + 5]

    blob = journal_blob(hashes, sizes)

    assert "n" in msgpack.unpackb(blob)
    nodes = journaled_nodes(blob)
    assert (nodes.hashes, nodes.sizes) == (hashes, sizes)


def test_an_empty_batch_is_journaled_and_read_back_empty() -> None:
    assert list(journaled_nodes(journal_blob([], []))) == []


@pytest.mark.parametrize(
    "deleted",
    [
        b"\xc1not msgpack",
        msgpack.packb({"H": b"x" * 33, "w": 32, "N": b"\x01\0\0\0"}),  # hash bytes cut
        msgpack.packb({"H": b"x" * 32, "w": 0, "N": b""}),  # no width
        msgpack.packb({"H": b"x" * 32, "w": 32, "N": b"\x01\0\0"}),  # size bytes cut
        msgpack.packb("a string"),
        msgpack.packb({"h": [b"x" * 32]}),  # no sizes
    ],
    ids=[
        "not-msgpack",
        "hash-bytes-do-not-match-sizes",
        "zero-width",
        "size-bytes-cut",
        "wrong-type",
        "no-sizes",
    ],
)
def test_an_unreadable_journal_row_raises_corrupt_journal_and_stays_in_place(
    store: SqliteStateStore, nodes: SqliteNodeStore, deleted: bytes
) -> None:
    insert_journal_row(nodes, deleted, msgpack.packb([4]))

    with pytest.raises(CorruptJournalError, match=r"'default/1/1'.*cannot be read"):
        nodes.unlogged_journal()

    assert nodes.conn.execute("SELECT deleted FROM sweep_journal").fetchall() == [(deleted,)]


def test_unreadable_row_ids_in_a_journal_row_raise_corrupt_journal(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    insert_journal_row(nodes, journal_blob([b"x" * 32], [70]), b"\xc1")

    with pytest.raises(CorruptJournalError):
        nodes.unlogged_journal()


# --- a batch whose stale rows stay until it is logged -----------------------------------------


def chain(store: SqliteStateStore, txs: int = 8) -> int:
    WorkloadWriter(store, seed=7, keys=40, ops_per_tx=6).run(txs, batch=4)
    return int(store.connection.execute("SELECT MAX(tx_order) FROM roots").fetchone()[0])


def stale_keys(nodes: SqliteNodeStore) -> list[tuple[int, bytes]]:
    rows = nodes.conn.execute("SELECT stale_order, hash FROM stale ORDER BY stale_order, hash")
    return [(int(o), bytes(h)) for o, h in rows]


def journal_range(nodes: SqliteNodeStore) -> list[tuple[Any, ...]]:
    return list(nodes.conn.execute("SELECT stale_from_order, stale_to_order FROM sweep_journal"))


def sweep_first(nodes: SqliteNodeStore, up_to: int, limit: int) -> tuple[Any, list[Any]]:
    entries = nodes.stale_entries(up_to, limit)
    ids = sorted({row_id for _, _, row_id, _ in entries})
    return nodes.sweep_stale(entries, ids, up_to, entry("default/1/1")), entries


def test_a_batch_read_by_stale_entries_keeps_its_stale_rows_until_logged_and_names_them(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    latest = chain(store)
    before = stale_keys(nodes)

    deleted, entries = sweep_first(nodes, latest, 20)

    assert deleted and stale_keys(nodes) == before  # nothing of the stale index consumed yet
    (journaled,) = nodes.unlogged_journal()
    assert journaled.deleted == deleted and journaled.row_ids == row_ids_of(deleted)
    raw = nodes.conn.execute("SELECT deleted FROM sweep_journal").fetchone()[0]
    assert list(journaled_nodes(raw)) == []  # no hash in the row: they are in the stale rows
    assert journal_range(nodes) == [(entries[0][0], entries[-1][0])]

    nodes.mark_journal_logged("default/1/1")

    assert stale_keys(nodes) == before[len(entries) :]
    assert nodes.unlogged_journal() == []


def test_stale_entries_skip_the_rows_of_a_batch_deleted_but_not_logged_yet(
    store: SqliteStateStore, nodes: SqliteNodeStore, tmp_path: Path
) -> None:
    latest = chain(store)
    before = stale_keys(nodes)
    _, entries = sweep_first(nodes, latest, 20)

    again = nodes.stale_entries(latest, 1_000)
    # As after a restart, from the journal row alone.
    other = SqliteNodeStore(nodes.path)
    try:
        afresh = other.stale_entries(latest, 1_000)
    finally:
        other.close()

    assert [e[:2] for e in again] == [e[:2] for e in afresh] == before[len(entries) :]


def test_a_deferred_batch_that_also_read_rows_journals_them_in_the_order_it_deleted_them(
    store: SqliteStateStore, nodes: SqliteNodeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delete_txn, "_CHUNK", 4)
    latest = chain(store)
    # Entries from before the size column: their rows are read before being deleted.
    nodes.conn.execute(
        "UPDATE stale SET node_size = NULL WHERE node_id % 13 = 0 AND stale_order <= ?", (latest,)
    )

    deleted, _ = sweep_first(nodes, latest, 40)

    (journaled,) = nodes.unlogged_journal()
    raw = nodes.conn.execute("SELECT deleted FROM sweep_journal").fetchone()[0]
    assert 0 < len(journaled_nodes(raw)) < len(deleted)
    assert journaled.deleted == deleted and journaled.row_ids == row_ids_of(deleted)


def test_a_deferred_journal_row_whose_stale_rows_are_gone_raises_corrupt_journal(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    latest = chain(store)
    _, entries = sweep_first(nodes, latest, 20)
    nodes.conn.execute("DELETE FROM stale WHERE stale_order <= ?", (entries[-1][0],))

    with pytest.raises(CorruptJournalError, match="stale entries it names are gone"):
        nodes.unlogged_journal()

    assert journal_range(nodes) == [(entries[0][0], entries[-1][0])]


@pytest.mark.parametrize("how", ["a copy of the batch", "a batch that deletes nothing"])
def test_any_other_batch_is_consumed_in_its_own_transaction_and_journals_its_hashes(
    store: SqliteStateStore, nodes: SqliteNodeStore, how: str
) -> None:
    latest = chain(store)
    before = stale_keys(nodes)
    entries = nodes.stale_entries(latest, 20)
    ids = sorted({row_id for _, _, row_id, _ in entries})
    if how == "a copy of the batch":
        entries = list(entries)
    else:
        ids = []

    deleted = nodes.sweep_stale(entries, ids, latest, entry())

    assert stale_keys(nodes) == before[len(entries) :]
    if deleted:
        raw = nodes.conn.execute("SELECT deleted FROM sweep_journal").fetchone()[0]
        assert journaled_nodes(raw) == deleted
        assert journal_range(nodes) == [(None, None)]
    else:
        assert nodes.unlogged_journal() == []


def test_a_journal_table_from_before_the_stale_range_gains_its_columns_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE sweep_journal (batch_key TEXT PRIMARY KEY, cycle_no INTEGER NOT NULL, "
            "snapshot_id INTEGER NOT NULL, phase TEXT NOT NULL, batch_no INTEGER NOT NULL, "
            "deleted BLOB NOT NULL, logged INTEGER NOT NULL DEFAULT 0, row_ids BLOB, "
            "event_rows INTEGER NOT NULL DEFAULT 0)"
        )
        db.execute(
            "INSERT INTO sweep_journal VALUES ('default/1/1', 1, 1, 'SweepExpired', 1, ?, 0, ?, 0)",
            (journal_blob([b"x" * 32], [70]), msgpack.packb([4])),
        )
        db.commit()
    with SqliteStateStore.open(path):
        pass
    nodes = SqliteNodeStore(path)
    try:
        (journaled,) = nodes.unlogged_journal()
        nodes.mark_journal_logged("default/1/1")
        left = nodes.unlogged_journal()
    finally:
        nodes.close()

    assert (list(journaled.deleted), journaled.row_ids) == ([(b"x" * 32, 70)], [4])
    assert left == []
