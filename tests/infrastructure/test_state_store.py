from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from infrastructure import smt
from infrastructure.state_store import (
    EmptyStoreError,
    SqliteStateStore,
    block_hash_for,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteStateStore]:
    with SqliteStateStore.open(db) as opened:
        yield opened


def written_order(store: SqliteStateStore, h: bytes) -> int | None:
    row = store.connection.execute("SELECT written_order FROM nodes WHERE hash = ?", (h,))
    found = row.fetchone()
    return None if found is None else int(found[0])


def leaf_hash(key: bytes, raw: bytes) -> bytes:
    return smt.node_hash(smt.encode_leaf(smt.key_hash(key), smt.encode_value(raw)))


def test_the_first_tx_is_genesis_at_order_zero_and_orders_count_up(
    store: SqliteStateStore,
) -> None:
    assert store.latest() is None
    first = store.commit_tx({b"a": b"1"}, chain_timestamp=100)
    second = store.commit_tx({b"b": b"2"}, chain_timestamp=200)
    assert (first.tx_order, second.tx_order) == (0, 1)
    latest = store.latest()
    assert latest is not None
    assert latest.tx_order == 1 and latest.block_height == 1 and latest.chain_timestamp == 200
    assert latest.block_hash == block_hash_for(1, second.state_root)
    assert store.block_hash_at(0) == block_hash_for(0, first.state_root)
    assert store.block_hash_at(9) is None
    assert [r.tx_order for r in store.roots_between(0, 5)] == [0, 1]
    assert store.root_at(0) is not None and store.root_at(2) is None


def test_get_after_commit_returns_the_plain_encoded_value_and_delete_removes_it(
    store: SqliteStateStore,
) -> None:
    put = store.commit_tx({b"a": b"1", b"b": b"2"}, chain_timestamp=0)
    gone = store.commit_tx({b"a": None}, chain_timestamp=1)
    assert store.get(put.state_root, b"a") == smt.encode_value(b"1")
    assert store.get(gone.state_root, b"a") is None
    assert store.get(gone.state_root, b"b") == smt.encode_value(b"2")


def test_an_object_round_trips_through_its_field_tree(store: SqliteStateStore) -> None:
    tx = store.commit_tx({}, chain_timestamp=0, objects={b"o": {b"x": b"1", b"y": b"2"}})
    raw, field_root = smt.decode_value(store.get(tx.state_root, b"o") or b"")
    assert raw == b"obj" and field_root is not None
    assert store.get(field_root, b"y") == smt.encode_value(b"2")
    deleted = store.commit_tx({}, chain_timestamp=1, objects={b"o": None})
    assert store.get(deleted.state_root, b"o") is None


def test_objects_with_equal_fields_share_one_field_tree(store: SqliteStateStore) -> None:
    fields = {b"f%d" % i: b"same" for i in range(30)}
    tx = store.commit_tx({}, chain_timestamp=0, objects={b"o1": fields, b"o2": dict(fields)})
    _, root1 = smt.decode_value(store.get(tx.state_root, b"o1") or b"")
    _, root2 = smt.decode_value(store.get(tx.state_root, b"o2") or b"")
    assert root1 == root2
    report = store.verify(tx.state_root)
    assert report.ok and report.object_roots == 2 and report.shared_hits == 1
    assert report.nodes == store.node_count()  # the shared tree is stored once


def test_a_key_in_both_changes_and_objects_is_refused(store: SqliteStateStore) -> None:
    with pytest.raises(ValueError, match="both"):
        store.commit_tx({b"k": b"1"}, chain_timestamp=0, objects={b"k": {}})


def test_rewriting_an_existing_hash_bumps_its_written_order(store: SqliteStateStore) -> None:
    store.commit_tx({b"k%d" % i: b"v0" for i in range(50)}, chain_timestamp=0)
    store.commit_tx({b"k7": b"v1"}, chain_timestamp=1)
    old_leaf = leaf_hash(b"k7", b"v0")
    assert written_order(store, old_leaf) == 0
    revert = store.commit_tx({b"k7": b"v0"}, chain_timestamp=2)
    assert written_order(store, old_leaf) == 2
    assert revert.nodes_reused >= 1  # the old path came back and was re-stamped


def test_the_write_barrier_restores_a_node_that_a_pruner_deleted(
    store: SqliteStateStore,
) -> None:
    store.commit_tx({b"k%d" % i: b"v0" for i in range(50)}, chain_timestamp=0)
    store.commit_tx({b"k7": b"v1"}, chain_timestamp=1)
    old_leaf = leaf_hash(b"k7", b"v0")
    store.connection.execute("DELETE FROM nodes WHERE hash = ?", (old_leaf,))
    revert = store.commit_tx({b"k7": b"v0"}, chain_timestamp=2)
    assert written_order(store, old_leaf) == 2
    assert store.verify(revert.state_root).ok


def test_stale_rows_name_the_replaced_nodes_at_the_replacing_order(
    store: SqliteStateStore,
) -> None:
    store.commit_tx({b"k%d" % i: b"v0" for i in range(50)}, chain_timestamp=0)
    tx = store.commit_tx({b"k7": b"v1"}, chain_timestamp=1)
    stale = store.connection.execute("SELECT stale_order, hash FROM stale").fetchall()
    assert {order for order, _ in stale} == {1}
    assert leaf_hash(b"k7", b"v0") in {h for _, h in stale}
    live = smt.reachable(store.read_node, tx.state_root)
    assert not {h for _, h in stale} & set(live)
    assert tx.stale_written == len(stale)


def test_a_deleted_objects_field_tree_is_indexed_as_stale(store: SqliteStateStore) -> None:
    fields = {b"f%d" % i: b"x" for i in range(10)}
    made = store.commit_tx({b"a": b"1"}, chain_timestamp=0, objects={b"o": fields})
    _, field_root = smt.decode_value(store.get(made.state_root, b"o") or b"")
    assert field_root is not None
    store.commit_tx({}, chain_timestamp=1, objects={b"o": None})
    stale = {h for (h,) in store.connection.execute("SELECT hash FROM stale")}
    assert set(smt.reachable(store.read_node, field_root)) <= stale


def test_nodes_root_and_stale_rows_commit_or_fail_together(store: SqliteStateStore) -> None:
    first = store.commit_tx({b"k%d" % i: b"v0" for i in range(50)}, chain_timestamp=0)
    nodes_before = store.node_count()
    # A real SQLite failure at the stale insert, the last write of the transaction.
    store.connection.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON stale BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        store.commit_tx({b"k7": b"v1", b"new": b"n"}, chain_timestamp=1)
    assert store.node_count() == nodes_before
    latest = store.latest()
    assert latest is not None and latest.state_root == first.state_root
    assert written_order(store, leaf_hash(b"new", b"n")) is None
    store.connection.execute("DROP TRIGGER refuse")
    assert store.commit_tx({b"k7": b"v1"}, chain_timestamp=1).tx_order == 1


def test_a_tx_over_a_missing_live_node_fails_and_commits_nothing(
    store: SqliteStateStore,
) -> None:
    first = store.commit_tx({b"k%d" % i: b"v" for i in range(50)}, chain_timestamp=0)
    store.connection.execute("DELETE FROM nodes WHERE hash = ?", (first.state_root,))
    with pytest.raises(smt.MissingNodeError):
        store.commit_tx({b"k1": b"w"}, chain_timestamp=1)
    latest = store.latest()
    assert latest is not None and latest.tx_order == 0


def test_verify_reports_a_deleted_node_as_missing_and_a_tampered_one_as_corrupt(
    store: SqliteStateStore,
) -> None:
    tx = store.commit_tx(
        {b"k%d" % i: b"v" for i in range(200)}, chain_timestamp=0, objects={b"o": {b"f": b"1"}}
    )
    clean = store.verify(tx.state_root)
    assert clean.ok and clean.nodes == store.node_count()
    assert clean.nodes == clean.internal + clean.leaves
    gone = leaf_hash(b"k3", b"v")
    tampered = leaf_hash(b"k4", b"v")
    conn = store.connection
    conn.execute("DELETE FROM nodes WHERE hash = ?", (gone,))
    conn.execute("UPDATE nodes SET data = ? WHERE hash = ?", (b"\x02garbage", tampered))
    report = store.verify(tx.state_root)
    assert report.missing == [gone] and report.corrupt == [tampered]
    assert not report.ok


def test_verify_of_many_roots_visits_shared_nodes_once(store: SqliteStateStore) -> None:
    roots = [store.commit_tx({b"k%d" % i: b"v%d" % i}, chain_timestamp=i) for i in range(20)]
    report = store.verify_roots(r.state_root for r in roots)
    assert report.roots == 20 and report.ok
    assert report.nodes == store.node_count()
    assert report.shared_hits > 0


def test_the_chain_view_on_an_empty_store_is_an_error(store: SqliteStateStore) -> None:
    with pytest.raises(EmptyStoreError):
        store.read_chain_view()


def test_the_chain_view_reports_genesis_pins_and_the_protection_window(
    store: SqliteStateStore,
) -> None:
    txs = [store.commit_tx({b"k": b"%d" % i}, chain_timestamp=10 * i) for i in range(6)]
    store.pin_root(txs[2].state_root)
    view = store.read_chain_view(protection_orders=2)
    assert view.latest_order == 5 and view.state_root == txs[5].state_root
    assert view.genesis_root == txs[0].state_root
    assert view.pinned_roots == (txs[2].state_root,)
    assert view.window_roots == tuple(t.state_root for t in txs[3:])
    store.unpin_root(txs[2].state_root)
    assert store.read_chain_view().pinned_roots == ()


def test_a_concurrent_writer_cannot_mix_fields_of_two_orders_in_one_chain_view(
    db: Path,
) -> None:
    with SqliteStateStore.open(db) as writer:
        writer.commit_tx({b"seed": b"0"}, chain_timestamp=0)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with SqliteStateStore.open(db) as writer:
                i = 1
                while not stop.is_set():
                    writer.commit_tx({b"k%d" % (i % 97): b"%d" % i}, chain_timestamp=7 * i)
                    i += 1
        except BaseException as error:  # surfaced by the assert below
            errors.append(error)

    thread = threading.Thread(target=write)
    thread.start()
    seen: set[int] = set()
    try:
        with SqliteStateStore.open(db) as reader:
            while len(seen) < 40:
                view = reader.read_chain_view(protection_orders=3)
                seen.add(view.latest_order)
                assert view.block_height == view.latest_order
                assert view.chain_timestamp == 7 * view.latest_order
                assert view.block_hash == block_hash_for(view.latest_order, view.state_root)
                assert view.window_roots[-1] == view.state_root
                assert len(view.window_roots) == min(4, view.latest_order + 1)
                row = reader.root_at(view.latest_order)
                assert row is not None and row.state_root == view.state_root
    finally:
        stop.set()
        thread.join()
    assert not errors


def test_node_count_and_total_bytes_measure_the_nodes_table(store: SqliteStateStore) -> None:
    assert (store.node_count(), store.total_bytes()) == (0, 0)
    store.commit_tx({b"a": b"1"}, chain_timestamp=0)
    leaf = smt.encode_leaf(smt.key_hash(b"a"), smt.encode_value(b"1"))
    assert (store.node_count(), store.total_bytes()) == (1, len(leaf) + 32)
