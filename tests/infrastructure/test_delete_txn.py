"""The sweep journal's row format (infrastructure/delete_txn.py): what a delete transaction
writes, what `unlogged_journal` reads back, and a row that cannot be read."""

from __future__ import annotations

import msgpack
import pytest

from domain.errors import CorruptJournalError
from infrastructure.delete_txn import journal_blob, journaled_nodes
from infrastructure.sqlite_nodes import SqliteNodeStore
from infrastructure.state_store import SqliteStateStore


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
