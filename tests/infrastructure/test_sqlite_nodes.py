"""SqliteNodeStore and FileReachStore: the guarded delete, its journal, the stale index, the
root queries the phases rely on, and the persisted reach set."""

from __future__ import annotations

import hashlib
import sqlite3
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from pyroaring import BitMap

from domain.errors import LockNotHeldError, ReachSetCorruptError
from domain.ports import DeletedNodes, JournalEntry, bytes_freed, hashes_of, row_ids_of
from infrastructure import smt
from infrastructure.sqlite_nodes import FileReachStore, RoaringReach, SqliteNodeStore
from infrastructure.state_store import SqliteStateStore
from infrastructure.workload import WorkloadWriter
from tests.fakes import stored_hashes


def entry(batch_key: str = "default/1/1", batch_no: int = 1) -> JournalEntry:
    return JournalEntry(
        batch_key=batch_key,
        cycle_no=1,
        snapshot_id=1,
        phase="SweepExpired",
        batch_no=batch_no,
        deleted=[],
    )


def leaf_hash(key: bytes, raw: bytes) -> bytes:
    return smt.node_hash(smt.encode_leaf(smt.key_hash(key), smt.encode_value(raw)))


def node_rows(store: SqliteStateStore) -> dict[bytes, tuple[int, int, bytes]]:
    """hash -> (row id, written_order, data)"""
    rows = store.connection.execute("SELECT hash, id, written_order, data FROM nodes")
    return {bytes(h): (int(i), int(w), bytes(d)) for h, i, w, d in rows}


def swept_orders(store: SqliteStateStore) -> set[int]:
    rows = store.connection.execute("SELECT tx_order FROM roots WHERE swept = 1")
    return {int(r[0]) for r in rows}


def commit_keys(store: SqliteStateStore, count: int) -> None:
    for i in range(count):
        store.commit_tx({b"key-%d" % i: b"value-%d" % i}, chain_timestamp=i)


# --- the guarded delete --------------------------------------------------------------------


def test_a_guarded_delete_keeps_rows_written_after_max_order_and_journals_exactly_the_rest(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    commit_keys(store, 6)
    before = node_rows(store)
    older = {h for h, (_, w, _) in before.items() if w <= 2}
    newer = set(before) - older
    assert older and newer

    deleted = nodes.delete_guarded(
        [i for i, _, _ in before.values()], 2, entry("default/1/7", 7), []
    )

    assert {h for h, _ in deleted} == older
    assert len(deleted) == len(older)
    assert stored_hashes(store.connection) == newer
    # What a batch frees is the hash and the data of each row it deleted.
    assert all(n == len(h) + len(before[h][2]) for h, n in deleted)
    # ...and the row ids of the same nodes, pair by pair (the reach set's unit).
    row_ids = row_ids_of(deleted)
    assert [before[h][0] for h, _ in deleted] == row_ids
    (journaled,) = nodes.unlogged_journal()
    assert journaled == JournalEntry("default/1/7", 1, 1, "SweepExpired", 7, deleted, row_ids)


def fenced(owner: str, token: int, batch_no: int) -> JournalEntry:
    return JournalEntry(
        f"default/1/{batch_no}",
        1,
        1,
        "SweepExpired",
        batch_no,
        [],
        owner=owner,
        fence_token=token,
        group="default",
    )


def test_a_delete_under_a_superseded_fencing_token_deletes_and_journals_nothing(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    commit_keys(store, 6)
    ids = [i for i, _, _ in node_rows(store).values()]
    # "b" took the lock over (token 2) and deleted; "a", deposed after its own lock check,
    # then tries to commit a batch under its older token 1.
    nodes.delete_guarded(ids[:2], 10**9, fenced("b", 2, 1), [])
    nodes.mark_journal_logged("default/1/1")
    before = node_rows(store)

    with pytest.raises(LockNotHeldError, match="superseded by b"):
        nodes.delete_guarded(ids[2:4], 10**9, fenced("a", 1, 2), [])
    with pytest.raises(LockNotHeldError):  # the same token is b's, not a's
        nodes.delete_guarded(ids[2:4], 10**9, fenced("a", 2, 2), [])

    assert node_rows(store) == before
    assert nodes.unlogged_journal() == []
    nodes.delete_guarded(ids[2:4], 10**9, fenced("b", 2, 2), [])  # the holder goes on
    nodes.delete_guarded(ids[4:5], 10**9, fenced("b", 3, 3), [])  # ... into its next phase
    assert len(node_rows(store)) == len(before) - 3


def test_a_node_re_stamped_after_its_row_id_was_chosen_is_kept_by_the_guard(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    store.commit_tx({b"genesis": b"g"}, chain_timestamp=0)
    store.commit_tx({b"k": b"v1", b"j": b"w1"}, chain_timestamp=1)
    store.commit_tx({b"k": b"v2", b"j": b"w2"}, chain_timestamp=2)
    old_leaf, other_leaf = leaf_hash(b"k", b"v1"), leaf_hash(b"j", b"w1")
    garbage_root = store.root_at(1)
    assert garbage_root is not None
    victims = (old_leaf, other_leaf, garbage_root.state_root)
    chosen = [node_rows(store)[h][0] for h in victims]
    # A writer reverts k after the pruner chose its victims: the leaf is stamped again.
    store.commit_tx({b"k": b"v1"}, chain_timestamp=3)
    assert node_rows(store)[old_leaf][1] == 3

    deleted = nodes.delete_guarded(chosen, 2, entry(), [])

    assert {h for h, _ in deleted} == {other_leaf, garbage_root.state_root}
    assert old_leaf in stored_hashes(store.connection)
    latest = store.latest()
    assert latest is not None and store.verify(latest.state_root).ok


def test_swept_roots_are_marked_in_the_same_transaction_even_when_nothing_is_deleted(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    commit_keys(store, 4)
    ids = [i for i, _, _ in node_rows(store).values()]

    deleted = nodes.delete_guarded(ids, -1, entry(), [1, 2])

    assert deleted == []
    assert swept_orders(store) == {1, 2}
    assert len(node_rows(store)) == len(ids)
    # An empty batch leaves nothing for the audit to reconcile.
    assert nodes.unlogged_journal() == []


def test_a_failed_delete_transaction_rolls_back_its_deletes_swept_marks_and_journal(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    commit_keys(store, 4)
    rows = node_rows(store)
    first, *rest = sorted(i for i, _, _ in rows.values())
    nodes.delete_guarded([first], 10, entry("default/1/1"), [])
    remaining = stored_hashes(store.connection)

    # The journal insert fails (the batch key is taken) after the DELETE ran: all or nothing.
    with pytest.raises(sqlite3.IntegrityError):
        nodes.delete_guarded(rest, 10, entry("default/1/1"), [1, 2, 3])

    assert stored_hashes(store.connection) == remaining
    assert swept_orders(store) == set()
    assert [e.batch_key for e in nodes.unlogged_journal()] == ["default/1/1"]
    assert not nodes.conn.in_transaction


def test_a_delete_of_more_ids_than_one_statement_can_bind_deletes_every_one(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    WorkloadWriter(store, 5, keys=400).run(60)
    rows = node_rows(store)
    assert len(rows) > 1_200
    gone = max(i for i, _, _ in rows.values()) + 1_000  # ids that exist no more are ignored

    deleted = nodes.delete_guarded([*(i for i, _, _ in rows.values()), gone], 10**9, entry(), [])

    assert {h for h, _ in deleted} == set(rows)
    assert store.node_count() == 0
    (journaled,) = nodes.unlogged_journal()
    assert sorted(journaled.deleted) == sorted(deleted)


def test_a_hash_deleted_and_written_again_gets_a_new_row_id_so_no_old_reach_set_covers_it(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    store.commit_tx({b"genesis": b"g"}, chain_timestamp=0)
    store.commit_tx({b"k": b"v1"}, chain_timestamp=1)
    store.commit_tx({b"k": b"v2"}, chain_timestamp=2)
    old_leaf = leaf_hash(b"k", b"v1")
    old_id = node_rows(store)[old_leaf][0]
    assert nodes.delete_guarded([old_id], 2, entry(), []) != []
    top_id = max(i for i, _, _ in node_rows(store).values())

    store.commit_tx({b"k": b"v1"}, chain_timestamp=3)

    new_id = node_rows(store)[old_leaf][0]
    assert new_id != old_id and new_id > top_id


# --- the stale index and the journal --------------------------------------------------------


def test_sweep_stale_consumes_every_entry_it_is_given_and_no_other(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    store.commit_tx({b"genesis": b"g"}, chain_timestamp=0)
    for i in range(1, 6):
        store.commit_tx({b"k": b"v%d" % i}, chain_timestamp=i)
    entries = nodes.stale_entries(3, 1_000)
    assert entries and all(order <= 3 for order, *_ in entries)
    later = set(nodes.stale_entries(10**9, 1_000)) - set(entries)
    assert later
    kept_hash = entries[0][1]
    rows = node_rows(store)
    ids = [rows[h][0] for _, h, *_ in entries if h != kept_hash and h in rows]

    deleted = nodes.sweep_stale(entries, ids, 5, entry())

    # Consumed even where the pruner chose not to delete: the index is a candidate list.
    assert set(nodes.stale_entries(10**9, 1_000)) == later
    assert kept_hash in stored_hashes(store.connection)
    assert {h for h, _ in deleted} == {h for _, h, *_ in entries if h != kept_hash and h in rows}


@pytest.mark.parametrize(
    "order",
    [
        # Not a prefix: a range delete would take the ones between.
        "with gaps",
        # Reversed, the first and last entries bound an empty range.
        "out of key order",
    ],
)
def test_sweep_stale_given_entries_that_are_no_sorted_prefix_consumes_exactly_those_entries(
    store: SqliteStateStore, nodes: SqliteNodeStore, order: str
) -> None:
    store.commit_tx({b"genesis": b"g"}, chain_timestamp=0)
    for i in range(1, 8):
        store.commit_tx({b"k": b"v%d" % i, b"j": b"w%d" % i}, chain_timestamp=i)
    everything = nodes.stale_entries(10**9, 1_000)
    assert len(everything) >= 6
    half = len(everything) // 2
    batch, left = (
        (everything[::2], everything[1::2])
        if order == "with gaps"
        else (everything[:half][::-1], everything[half:])
    )

    # The range DELETE's count differs from the batch's, so the batch goes row by row.
    nodes.sweep_stale(batch, [], 0, entry())

    assert nodes.stale_entries(10**9, 1_000) == left


def test_stale_entries_come_oldest_first_and_stop_at_the_limit_and_the_order(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    store.commit_tx({b"genesis": b"g"}, chain_timestamp=0)
    for i in range(1, 9):
        store.commit_tx({b"k": b"v%d" % i, b"j": b"w%d" % i}, chain_timestamp=i)

    entries = nodes.stale_entries(6, 5)

    assert len(entries) == 5
    assert [o for o, *_ in entries] == sorted(o for o, *_ in entries)
    assert all(o <= 6 for o, *_ in entries)
    assert entries == nodes.stale_entries(6, 1_000)[:5]


def test_a_journal_row_written_as_hash_size_pairs_by_an_older_version_is_still_read(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    commit_keys(store, 3)
    hashes = sorted(node_rows(store))[:2]
    nodes.conn.execute(
        "INSERT INTO sweep_journal(batch_key, cycle_no, snapshot_id, phase, batch_no, deleted, "
        "row_ids, event_rows) VALUES ('default/1/1', 1, 1, 'SweepExpired', 1, ?, ?, 0)",
        (msgpack.packb([[h, 70] for h in hashes], use_bin_type=True), msgpack.packb([4, 9])),
    )

    (journaled,) = nodes.unlogged_journal()

    assert journaled.deleted == [(h, 70) for h in hashes]
    assert journaled.row_ids == [4, 9]
    ((no, part),) = journaled.event_batches(journaled.deleted)
    assert (no, part.hashes, part.sizes, part.row_ids) == (1, hashes, [70, 70], [4, 9])


def test_deleted_nodes_are_hash_size_pairs_kept_as_columns() -> None:
    pairs = [(b"a" * 32, 90), (b"b" * 32, 120), (b"c" * 32, 60)]
    nodes = DeletedNodes(pairs, [7, 8, 9])

    assert nodes == pairs and list(nodes) == pairs and len(nodes) == 3
    assert (nodes.hashes, nodes.sizes) == ([h for h, _ in pairs], [90, 120, 60])
    assert nodes[1] == pairs[1]
    assert (nodes[1:], nodes[1:].row_ids) == (pairs[1:], [8, 9])
    assert bytes_freed(nodes) == bytes_freed(pairs) == 270
    assert hashes_of(nodes) == hashes_of(pairs) == [h for h, _ in pairs]
    with pytest.raises(ValueError, match="3 hashes but 2 sizes"):
        DeletedNodes.of_columns(nodes.hashes, [1, 2])


def test_marking_a_batch_logged_drops_only_that_journal_entry(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    commit_keys(store, 4)
    ids = sorted(i for i, _, _ in node_rows(store).values())
    nodes.delete_guarded(ids[:1], 10, entry("default/1/1", 1), [])
    nodes.delete_guarded(ids[1:2], 10, entry("default/1/2", 2), [])

    nodes.mark_journal_logged("default/1/1")
    nodes.mark_journal_logged("default/1/9")  # unknown: nothing to drop

    assert [(e.batch_key, e.batch_no) for e in nodes.unlogged_journal()] == [("default/1/2", 2)]


# --- roots and lookups ------------------------------------------------------------------------


def test_retained_roots_are_the_window_plus_genesis_and_pinned_roots(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    commit_keys(store, 10)
    root = {o: r.state_root for o in range(10) if (r := store.root_at(o)) is not None}
    store.pin_root(root[2])

    retained = nodes.retained_roots(6, 8)

    assert sorted(retained) == sorted({root[0], root[2], root[6], root[7], root[8]})


def test_expired_roots_skip_genesis_pinned_swept_and_protected_roots_in_order(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    commit_keys(store, 10)
    root = {o: r.state_root for o in range(10) if (r := store.root_at(o)) is not None}
    store.pin_root(root[3])
    nodes.delete_guarded([], 0, entry(), [1])

    expired = nodes.expired_roots(7)

    assert expired == [(o, root[o]) for o in (2, 4, 5, 6)]


def test_ids_of_returns_the_row_ids_of_the_stored_ones_among_many_and_leaves_out_missing(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    WorkloadWriter(store, 8, keys=300).run(120)
    rows = node_rows(store)
    assert len(rows) > 2 * 998  # several SQL chunks
    missing = [smt.sha256(b"missing-%d" % i) for i in range(3)]

    ids = nodes.ids_of([*missing[:1], *rows, *missing[1:]])

    assert ids == {h: i for h, (i, _, _) in rows.items()}


# --- the persisted reach set ------------------------------------------------------------------


@pytest.fixture
def reach_store(tmp_path: Path) -> FileReachStore:
    return FileReachStore(tmp_path / "reach")


def saved_reach(reach_store: FileReachStore) -> tuple[set[int], str, Path]:
    row_ids = {*range(1, 5_000, 3), 70_000, 2**31}
    reach = reach_store.new()
    reach.add_new(row_ids)
    digest = reach_store.save(4, reach)
    return row_ids, digest, reach_store.path(4, digest)


class ListedIds(list[int]):
    """A ReachSet that is no bitmap: `unless_in` must work with any."""

    def absent(self, row_ids: Iterable[int], *, unless_in: object = None) -> list[int]:
        return sorted(set(row_ids) - set(self))


@pytest.mark.parametrize("other", [RoaringReach([3, 9]), ListedIds([3, 9])])
def test_a_reach_set_adds_and_reports_only_ids_in_neither_set_once_each_ascending(
    other: Any,
) -> None:
    reach = RoaringReach([1, 2])
    ids = array("I", [9, 5, 2, 3, 5, 7, 1])

    assert reach.absent(ids, unless_in=other) == [5, 7]
    assert reach.absent(ids) == [3, 5, 7, 9]
    assert list(reach) == [1, 2]
    assert reach.add_new(ids, unless_in=other) == [5, 7]
    assert list(reach) == [1, 2, 5, 7]
    assert reach.add_new([7, 8]) == [8]


def test_a_reach_set_round_trips_through_its_file(reach_store: FileReachStore) -> None:
    reach, digest, path = saved_reach(reach_store)

    loaded = reach_store.load(4, digest)

    assert path.exists() and not path.with_suffix(".tmp").exists()
    assert isinstance(loaded, BitMap) and set(loaded) == reach
    assert 70_000 in loaded and 2 not in loaded
    assert len(loaded) == len(reach)


def test_a_truncated_reach_set_file_raises_reach_set_corrupt(reach_store: FileReachStore) -> None:
    _, digest, path = saved_reach(reach_store)
    path.write_bytes(path.read_bytes()[:-7])

    with pytest.raises(ReachSetCorruptError, match="digest is"):
        reach_store.load(4, digest)


def test_an_altered_reach_set_file_raises_reach_set_corrupt(reach_store: FileReachStore) -> None:
    _, digest, path = saved_reach(reach_store)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(ReachSetCorruptError, match="digest is"):
        reach_store.load(4, digest)


def test_a_reach_set_loaded_with_another_digest_raises_reach_set_corrupt(
    reach_store: FileReachStore,
) -> None:
    _, digest, _ = saved_reach(reach_store)
    # Same file name (it keeps the first 32 hex digits), different full digest.
    other = digest[:32] + ("0" if digest[32] != "0" else "1") + digest[33:]

    with pytest.raises(ReachSetCorruptError, match="expected"):
        reach_store.load(4, other)


def test_a_missing_reach_set_file_raises_reach_set_corrupt(reach_store: FileReachStore) -> None:
    _, digest, _ = saved_reach(reach_store)

    with pytest.raises(ReachSetCorruptError, match="cannot be read"):
        reach_store.load(5, digest)


def test_bytes_that_match_their_digest_but_are_no_bitmap_raise_reach_set_corrupt(
    reach_store: FileReachStore,
) -> None:
    junk = b"not a roaring bitmap at all"
    digest = hashlib.blake2b(junk, digest_size=32).hexdigest()
    reach_store.path(6, digest).write_bytes(junk)

    with pytest.raises(ReachSetCorruptError, match="does not decode"):
        reach_store.load(6, digest)


def test_the_pruner_connection_does_not_scrub_deleted_rows_whatever_the_build_default(
    nodes: SqliteNodeStore,
) -> None:
    # secure_delete (on in Debian's build) zeroes and rewrites every freed page.
    assert nodes.conn.execute("PRAGMA secure_delete").fetchone()[0] == 0
