"""The node table's hash index (`node_index`): a new store finds nodes through an 8-byte prefix
index and keeps hashes unique with a trigger; a store made before keeps `hash UNIQUE`, and
`rebuild_nodes` moves it to the prefix index. Both layouts must find, write, prune and verify
the same nodes, and prefixes that collide must never be mistaken for one another."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.config import PruneConfig, RecoveryConfig
from domain.ports import JournalEntry
from infrastructure import smt
from infrastructure.audit_checks import check_store
from infrastructure.clock import ManualClock
from infrastructure.eventlog import STATE_FILE
from infrastructure.node_index import PREFIX_BYTES, HashIndex
from infrastructure.node_kids import write_nodes
from infrastructure.runtime import Runtime, Settings
from infrastructure.sqlite_nodes import SqliteNodeStore
from infrastructure.state_store import SqliteStateStore
from infrastructure.workload import WorkloadWriter
from tests.infrastructure.test_kids import dump

# The nodes table of a store made before the prefix index.
OLD_NODES_DDL = (
    "CREATE TABLE nodes (id INTEGER PRIMARY KEY AUTOINCREMENT, hash BLOB NOT NULL UNIQUE, "
    "data BLOB NOT NULL, written_order INTEGER NOT NULL, kids BLOB)"
)
INSERT = "INSERT INTO nodes(hash, data, written_order) VALUES (?, ?, ?)"
LAYOUTS = ("new", "old")
SEED, KEYS = 23, 120
Dump = tuple[list[tuple[object, ...]], ...]


def open_store(path: Path, layout: str) -> SqliteStateStore:
    """A state store; "old" makes the node table as it was before the prefix index first."""
    if layout == "old":
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute(OLD_NODES_DDL)
    return SqliteStateStore.open(path)


def roots(conn: sqlite3.Connection) -> list[bytes]:
    return [bytes(r[0]) for r in conn.execute("SELECT state_root FROM roots ORDER BY tx_order")]


def indexes(conn: sqlite3.Connection) -> dict[str, str]:
    """name -> origin ("c": CREATE INDEX, "u": a UNIQUE constraint) of the node table's indexes"""
    return {str(r[1]): str(r[3]) for r in conn.execute("PRAGMA index_list(nodes)")}


def plan(conn: sqlite3.Connection, sql: str, params: Sequence[bytes] = ()) -> str:
    return " | ".join(str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


def ids_where(conn: sqlite3.Connection, clause: tuple[str, Sequence[bytes]]) -> list[int]:
    """Row ids of the nodes a `HashIndex` condition selects."""
    where, params = clause
    found = conn.execute(f"SELECT id FROM nodes WHERE {where} ORDER BY id", params)
    return [int(r[0]) for r in found]


# --- the layout -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "index", "origin"),
    [("new", "nodes_by_prefix", "c"), ("old", "sqlite_autoindex_nodes_1", "u")],
)
def test_each_layout_has_one_index_on_hashes_and_every_lookup_by_hash_searches_it(
    tmp_path: Path, layout: str, index: str, origin: str
) -> None:
    with open_store(tmp_path / "state.sqlite", layout) as store:
        store.commit_tx({b"k%d" % i: b"v" for i in range(50)}, chain_timestamp=0)
        store.commit_tx({b"k1": b"w"}, chain_timestamp=1)
        conn, by_hash = store.connection, store.hash_index
        assert by_hash == HashIndex.of(conn) == HashIndex(prefixed=layout == "new")
        assert indexes(conn) == {index: origin}  # a new store: no UNIQUE index on hash
        triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        assert [r[0] for r in triggers] == (["nodes_hash_unique"] if layout == "new" else [])
        hashes = [bytes(r[0]) for r in conn.execute("SELECT hash FROM nodes LIMIT 7")]
        plans = [
            plan(conn, f"SELECT hash, data FROM nodes WHERE {where}", params)
            for where, params in (by_hash.one(hashes[0]), by_hash.any_of(hashes))
        ]
        join = by_hash.matches("stale", "hash")
        plans.append(plan(conn, f"SELECT nodes.id FROM stale JOIN nodes ON {join}"))
    for found in plans:
        assert "SEARCH nodes USING " in found and f"INDEX {index} " in found, found
        assert "SCAN nodes" not in found, found


# --- prefixes that collide --------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hashes_sharing_their_first_8_bytes_are_each_found_as_their_own_row(
    tmp_path: Path, layout: str
) -> None:
    prefix = b"\x5a" * PREFIX_BYTES
    hashes = [prefix + smt.sha256(b"%d" % i)[PREFIX_BYTES:] for i in range(5)]
    absent = prefix + bytes(32 - PREFIX_BYTES)
    data = {h: b"data-%d" % i for i, h in enumerate(hashes)}
    with open_store(tmp_path / "state.sqlite", layout) as store:
        store.commit_tx({b"k%d" % i: b"v" for i in range(20)}, chain_timestamp=0)
        conn, by_hash = store.connection, store.hash_index
        conn.executemany(INSERT, [(h, d, 0) for h, d in data.items()])
        ids = {h: int(i) for h, i in conn.execute("SELECT hash, id FROM nodes") if h in data}
        nodes = SqliteNodeStore(store.path)
        try:
            assert nodes.ids_of([*hashes, absent]) == ids
            assert nodes.ids_of([absent]) == {}
            for h in hashes:
                assert store.read_node(h) == data[h]
                assert ids_where(conn, by_hash.one(h)) == [ids[h]]
            assert ids_where(conn, by_hash.one(absent)) == []
            with pytest.raises(smt.MissingNodeError):
                store.read_node(absent)
            asked = [hashes[3], absent, hashes[1], hashes[3]]
            assert store.fetch_nodes(asked) == {h: data[h] for h in (hashes[1], hashes[3])}
            some = by_hash.any_of([hashes[4], absent, hashes[0]])
            assert ids_where(conn, some) == sorted([ids[hashes[0]], ids[hashes[4]]])

            journal = JournalEntry("default/1/1", 1, 1, "SweepExpired", 1, [])
            deleted = nodes.delete_guarded([ids[hashes[2]]], 0, journal, [])

            assert list(deleted) == [(hashes[2], 32 + len(data[hashes[2]]))]
            kept = [h for h in hashes if h != hashes[2]]
            assert nodes.ids_of(hashes) == {h: ids[h] for h in kept}
            assert store.fetch_nodes(hashes) == {h: data[h] for h in kept}
        finally:
            nodes.close()


# --- uniqueness and the write barrier ---------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_inserting_a_stored_hash_fails_and_a_rollback_loses_nothing_committed_before(
    tmp_path: Path, layout: str
) -> None:
    with open_store(tmp_path / "state.sqlite", layout) as store:
        WorkloadWriter(store, SEED, keys=KEYS).run(10)
        conn = store.connection
        before, count = dump(conn), store.node_count()
        stored, stored_data = conn.execute("SELECT hash, data FROM nodes LIMIT 1").fetchone()
        with pytest.raises(sqlite3.IntegrityError, match=r"nodes\.hash"):
            conn.execute(INSERT, (stored, b"another", 99))
        assert dump(conn) == before
        fresh_data = smt.encode_leaf(smt.key_hash(b"fresh"), smt.encode_value(b"x"))
        fresh = smt.node_hash(fresh_data)

        conn.execute("BEGIN IMMEDIATE")
        written = {fresh: fresh_data, stored: stored_data}  # `stored` not known to be stored
        with pytest.raises(sqlite3.IntegrityError, match=r"nodes\.hash"):
            write_nodes(conn, store.hash_index, written, 99, {}, set())
        assert conn.in_transaction and fresh in store.fetch_nodes([fresh])  # it had written
        conn.execute("ROLLBACK")

        assert dump(conn) == before and store.node_count() == count
        assert store.fetch_nodes([fresh]) == {}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_tx_that_writes_earlier_nodes_again_stamps_their_rows_instead_of_inserting(
    tmp_path: Path, layout: str
) -> None:
    with open_store(tmp_path / "state.sqlite", layout) as store:
        conn = store.connection
        first = store.commit_tx({b"k%d" % i: b"v0" for i in range(40)}, chain_timestamp=0)
        ids = dict(conn.execute("SELECT hash, id FROM nodes"))
        store.commit_tx({b"k7": b"v1"}, chain_timestamp=1)
        count = store.node_count()

        back = store.commit_tx({b"k7": b"v0"}, chain_timestamp=2)

        assert back.state_root == first.state_root  # the whole old path is written again
        stamped = dict(conn.execute("SELECT hash, id FROM nodes WHERE written_order = 2"))
        assert store.node_count() == count  # ...by stamping its rows, not inserting
        assert first.state_root in stamped
        assert len(stamped) == back.nodes_reused == back.nodes_written
        assert stamped == {h: ids[h] for h in stamped}  # the same row ids
        (dupes,) = conn.execute("SELECT COUNT(*) - COUNT(DISTINCT hash) FROM nodes").fetchone()
        assert dupes == 0
        assert store.verify(back.state_root).ok


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([1, 5]))
def test_a_seeded_workload_writes_the_same_rows_and_roots_on_both_layouts_and_all_verify(
    tmp_path_factory: pytest.TempPathFactory, seed: int, batch: int
) -> None:
    dumps: list[Dump] = []
    for layout in LAYOUTS:
        path = tmp_path_factory.mktemp(layout) / "state.sqlite"
        with open_store(path, layout) as store:
            assert store.hash_index.prefixed == (layout == "new")
            WorkloadWriter(store, seed, keys=80, ops_per_tx=6).run(40, batch=batch)
            report = store.verify_roots(roots(store.connection))
            assert (report.missing, report.corrupt) == ([], [])
            dumps.append(dump(store.connection))
    assert dumps[0] == dumps[1]


# --- rebuild_nodes ----------------------------------------------------------------------------


def test_rebuild_moves_an_old_store_to_the_prefix_index_keeping_every_row_and_the_sequence(
    tmp_path: Path,
) -> None:
    with open_store(tmp_path / "old.sqlite", "old") as store:
        writer, conn = WorkloadWriter(store, SEED, keys=KEYS), store.connection
        for run in range(2):  # garbage amid and above the live rows, deleted as a sweep would
            writer.run(20)
            garbage = [smt.sha256(b"garbage %d %d" % (run, i)) for i in range(5)]
            conn.executemany(INSERT, [(h, b"g", -1) for h in garbage])
        conn.execute("DELETE FROM nodes WHERE written_order = -1")
        (top,) = conn.execute("SELECT MAX(id) FROM nodes").fetchone()
        before, old_ids = dump(conn), {int(r[0]) for r in conn.execute("SELECT id FROM nodes")}
        assert len(old_ids) < top  # ids have gaps
        assert before[3] == [("nodes", top + 5)] and max(old_ids) == top
        assert indexes(conn) == {"sqlite_autoindex_nodes_1": "u"}

        assert store.rebuild_nodes() is True

        assert store.hash_index.prefixed and HashIndex.of(conn).prefixed
        assert dump(conn) == before  # ids, hashes, data, orders, kids and the sequence
        assert indexes(conn) == {"nodes_by_prefix": "c"}
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
        assert "nodes_before_prefix" not in tables and "nodes_hash_unique" in tables
        with pytest.raises(sqlite3.IntegrityError, match=r"nodes\.hash"):
            conn.execute(INSERT, (before[0][0][1], b"again", 99))

        writer.run(30)  # the writer carries on over the rebuilt table

        new_ids = {int(r[0]) for r in conn.execute("SELECT id FROM nodes")} - old_ids
        assert new_ids and min(new_ids) > top + 5  # ids are never reused
        assert store.verify_roots(roots(conn)).ok
        assert store.rebuild_nodes() is False
        rebuilt_roots = roots(conn)
    with open_store(tmp_path / "new.sqlite", "new") as fresh:
        WorkloadWriter(fresh, SEED, keys=KEYS).run(70)
        assert roots(fresh.connection) == rebuilt_roots


def break_rebuild(conn: sqlite3.Connection, failure: str) -> str:
    """Makes the next rebuild fail; returns what its error says."""
    if failure == "its temporary name is taken":
        conn.execute("CREATE TABLE nodes_before_prefix (x)")
        return "already another table"
    if failure == "the disk fills up":  # room for two more pages: the copy cannot finish
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        return "full"
    copying: list[bool] = []  # interrupted during the copy: SQLite rolls back by itself

    def authorize(action: int, table: str | None, *_: str | None) -> int:
        copying.append(action == sqlite3.SQLITE_INSERT and table == "nodes")
        return sqlite3.SQLITE_OK

    conn.set_authorizer(authorize)
    conn.set_progress_handler(lambda: any(copying), 100)
    return "^interrupted$"


@pytest.mark.parametrize(
    "failure",
    [
        "its temporary name is taken",
        "the disk fills up",
        "it is interrupted",
    ],
)
def test_a_rebuild_that_fails_raises_its_error_and_leaves_the_old_table_with_all_its_rows(
    tmp_path: Path, failure: str
) -> None:
    with open_store(tmp_path / "old.sqlite", "old") as store:
        WorkloadWriter(store, SEED, keys=KEYS).run(30)
        conn = store.connection
        before = dump(conn)
        schema = conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
        expected = break_rebuild(conn, failure)

        with pytest.raises(sqlite3.OperationalError, match=expected):
            store.rebuild_nodes()

        conn.set_authorizer(None)
        conn.set_progress_handler(None, 0)
        assert not conn.in_transaction and not store.hash_index.prefixed
        assert dump(conn) == before
        after = conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
        assert [row for row in after if row[0] != "nodes_before_prefix"] == schema
        latest = store.latest()
        assert latest is not None and store.verify(latest.state_root).ok


# --- a pruner cycle ---------------------------------------------------------------------------


def prune_twice(data_dir: Path, layout: str) -> tuple[int, set[bytes]]:
    """Two pruner cycles over a seeded workload; (nodes deleted, hashes left)."""
    data_dir.mkdir()
    with open_store(data_dir / STATE_FILE, layout) as store:
        WorkloadWriter(store, SEED, keys=KEYS).run(60)
        prune = PruneConfig(protection_orders=5, delete_batch_size=64)
        recovery = RecoveryConfig(base_retry_delay_ms=1, max_retry_delay_ms=5)
        with Runtime(
            Settings(data_dir, prune=prune, recovery=recovery), clock=ManualClock(), owner="p"
        ) as rt:
            assert rt.nodes.hash_index.prefixed == (layout == "new")
            reports = [rt.pruner.run_cycle() for _ in range(2)]
        check = check_store(store, reports[-1].latest_order - prune.protection_orders)
        assert (check.missing, check.corrupt) == (0, 0), check
        latest = store.latest()
        assert latest is not None and store.verify(latest.state_root).ok
        deleted = sum(p.deleted for r in reports for p in r.phases.values())
        return deleted, {bytes(r[0]) for r in store.connection.execute("SELECT hash FROM nodes")}


def test_a_pruner_deletes_the_same_nodes_on_both_layouts_and_every_retained_root_verifies(
    tmp_path: Path,
) -> None:
    new = prune_twice(tmp_path / "new", "new")
    old = prune_twice(tmp_path / "old", "old")
    assert new[0] > 0
    assert new == old
