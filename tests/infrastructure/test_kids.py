"""The `kids` column: each node row's children as row ids, written by the state store's writer,
filled for old rows by `backfill_kids`, and read back by the pruner's `expand`.

The reference everywhere is an independent lookup by hash: a row's kids must be the row ids of
the rows holding `smt.children(data)`, in that order."""

from __future__ import annotations

import random
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.ports import MISSING_ROW
from infrastructure import smt
from infrastructure.node_kids import unpack_id_array
from infrastructure.sqlite_nodes import SqliteNodeStore
from infrastructure.state_store import (
    MAX_ROW_ID,
    SqliteStateStore,
    TxSpec,
    pack_ids,
    unpack_ids,
)
from infrastructure.workload import WorkloadWriter

# What `SqliteNodeStore.expand` binds per statement; the tests ask for more than that.
EXPAND_CHUNK = 998
# The nodes table as it was before the kids column.
OLD_NODES_DDL = (
    "CREATE TABLE nodes_old (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "hash BLOB NOT NULL UNIQUE, data BLOB NOT NULL, written_order INTEGER NOT NULL)"
)


class Row:
    """One row of the nodes table."""

    __slots__ = ("data", "id", "kids", "written_order")

    def __init__(self, row_id: int, data: bytes, written_order: int, kids: bytes | None) -> None:
        self.id = row_id
        self.data = data
        self.written_order = written_order
        self.kids = kids


def node_table(conn: sqlite3.Connection) -> dict[bytes, Row]:
    """hash -> its row"""
    rows = conn.execute("SELECT hash, id, data, written_order, kids FROM nodes")
    return {
        bytes(h): Row(int(i), bytes(d), int(w), None if k is None else bytes(k))
        for h, i, d, w, k in rows
    }


def by_id(table: dict[bytes, Row]) -> dict[int, Row]:
    return {row.id: row for row in table.values()}


def kids_by_hash(table: dict[bytes, Row], data: bytes) -> list[int]:
    """The independent reference: the row ids holding the node's children, in order
    (MISSING_ROW for a child that no row holds)."""
    return [table[c].id if c in table else MISSING_ROW for c in smt.children(data)]


def wrong_kids(table: dict[bytes, Row], hashes: set[bytes] | None = None) -> list[str]:
    """The rows (all, or those of `hashes`) whose kids disagree with a lookup by hash."""
    wrong: list[str] = []
    for h in table.keys() if hashes is None else hashes:
        row = table[h]
        expected = kids_by_hash(table, row.data)
        actual = None if row.kids is None else list(unpack_ids(row.kids))
        if actual != expected:
            wrong.append(f"row {row.id} ({h.hex()[:12]}): kids {actual}, by hash {expected}")
    return wrong


def expand(nodes: SqliteNodeStore, row_ids: list[int]) -> tuple[list[int], list[int]]:
    """`nodes.expand`, as lists (the port promises sequences)."""
    found, children = nodes.expand(row_ids)
    return list(found), list(children)


def leaf_hash(key: bytes, raw: bytes) -> bytes:
    return smt.node_hash(smt.encode_leaf(smt.key_hash(key), smt.encode_value(raw)))


def field_root_of(store: SqliteStateStore, root: bytes, key: bytes) -> bytes:
    _, field_root = smt.decode_value(store.get(root, key) or b"")
    assert field_root is not None
    return field_root


def replaced_leaf(store: SqliteStateStore) -> bytes:
    """Commits 50 keys, then a new value for k7; returns k7's old leaf (now garbage)."""
    store.commit_tx({b"k%d" % i: b"v0" for i in range(50)}, chain_timestamp=0)
    store.commit_tx({b"k7": b"v1"}, chain_timestamp=1)
    return leaf_hash(b"k7", b"v0")


def top_row_id(conn: sqlite3.Connection) -> int:
    top: int = conn.execute("SELECT MAX(id) FROM nodes").fetchone()[0]
    return top


def dump(conn: sqlite3.Connection) -> tuple[list[tuple[object, ...]], ...]:
    """Every row the writer touches: nodes, roots, stale, and the row id sequence."""
    return tuple(
        [tuple(r) for r in conn.execute(sql)]
        for sql in (
            "SELECT id, hash, data, written_order, kids FROM nodes ORDER BY id",
            "SELECT * FROM roots ORDER BY tx_order",
            "SELECT * FROM stale ORDER BY stale_order, hash",
            "SELECT name, seq FROM sqlite_sequence ORDER BY name",
        )
    )


def strip_kids_column(path: Path) -> None:
    """Turns a store into one made before `kids`: the old nodes table, same rows and ids."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        (seq,) = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'nodes'").fetchone()
        conn.executescript(
            f"""
            BEGIN;
            {OLD_NODES_DDL};
            INSERT INTO nodes_old(id, hash, data, written_order)
                SELECT id, hash, data, written_order FROM nodes;
            DROP TABLE nodes;
            ALTER TABLE nodes_old RENAME TO nodes;
            UPDATE sqlite_sequence SET seq = {int(seq)} WHERE name = 'nodes';
            COMMIT;
            """
        )


def columns(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {str(r[1]) for r in conn.execute("PRAGMA table_info(nodes)")}


# --- the writer's kids ------------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**16), batch=st.sampled_from([1, 6]))
def test_after_a_seeded_workload_every_rows_kids_are_the_row_ids_of_its_childrens_hashes(
    seed: int, batch: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp, SqliteStateStore.open(Path(tmp) / "s.db") as store:
        WorkloadWriter(store, seed, keys=300, ops_per_tx=8).run(60, batch=batch)
        table = node_table(store.connection)

    assert [row.id for row in table.values() if row.kids is None] == []
    assert wrong_kids(table) == []
    # The workload made objects: leaves whose kids are their field tree's root.
    assert any(smt.is_leaf(r.data) and smt.children(r.data) for r in table.values())


def test_a_leaf_deleted_and_written_again_gets_a_new_row_id_in_every_parent_the_tx_writes(
    store: SqliteStateStore,
) -> None:
    old_leaf = replaced_leaf(store)
    old_id = node_table(store.connection)[old_leaf].id
    store.connection.execute("DELETE FROM nodes WHERE hash = ?", (old_leaf,))
    top = top_row_id(store.connection)

    revert = store.commit_tx({b"k7": b"v0"}, chain_timestamp=2)

    table = node_table(store.connection)
    new_id = table[old_leaf].id
    assert new_id > top and new_id != old_id
    parents = [r for r in table.values() if old_leaf in smt.children(r.data)]
    assert parents and all(r.written_order == 2 for r in parents)
    for parent in parents:
        assert parent.kids is not None
        position = smt.children(parent.data).index(old_leaf)
        assert unpack_ids(parent.kids)[position] == new_id
    live = set(smt.reachable(store.read_node, revert.state_root))
    assert old_leaf in live
    assert wrong_kids(table, live) == []


def test_a_garbage_field_tree_leaf_deleted_and_rebuilt_by_another_object_is_relinked(
    store: SqliteStateStore,
) -> None:
    fields = {b"f%d" % i: b"x%d" % i for i in range(20)}
    made = store.commit_tx(
        {b"k%d" % i: b"v" for i in range(30)}, chain_timestamp=0, objects={b"o1": fields}
    )
    field_root = field_root_of(store, made.state_root, b"o1")
    store.commit_tx({}, chain_timestamp=1, objects={b"o1": None})  # the field tree is garbage
    gone = leaf_hash(b"f3", b"x3")
    assert gone in smt.reachable(store.read_node, field_root)
    before = node_table(store.connection)
    store.connection.execute("DELETE FROM nodes WHERE hash = ?", (gone,))
    top = top_row_id(store.connection)

    rebuilt = store.commit_tx({}, chain_timestamp=2, objects={b"o2": dict(fields)})

    table = node_table(store.connection)
    assert field_root_of(store, rebuilt.state_root, b"o2") == field_root
    assert table[gone].id > top
    assert table[field_root].id == before[field_root].id  # an upsert keeps the row id
    parents = [r for r in table.values() if gone in smt.children(r.data)]
    assert parents
    for parent in parents:
        assert parent.kids is not None and table[gone].id in unpack_ids(parent.kids)
    live = set(smt.reachable(store.read_node, rebuilt.state_root))
    assert {field_root, gone} <= live
    assert wrong_kids(table, live) == []


def test_a_leaf_written_again_early_in_a_bulk_commit_is_linked_by_the_later_txs_of_the_batch(
    store: SqliteStateStore,
) -> None:
    old_leaf = replaced_leaf(store)
    store.connection.execute("DELETE FROM nodes WHERE hash = ?", (old_leaf,))
    top = top_row_id(store.connection)
    later = {b"k%d" % i: b"v2" for i in range(50) if i != 7}  # every path but k7's leaf

    *_, last = store.commit_many(
        [TxSpec({b"k7": b"v0"}, 2), TxSpec(later, 3), TxSpec({b"new": b"n"}, 4)]
    )

    table = node_table(store.connection)
    assert table[old_leaf].id > top
    live = set(smt.reachable(store.read_node, last.state_root))
    assert old_leaf in live
    assert wrong_kids(table, live) == []


# --- a store from before the column -----------------------------------------------------------


@pytest.fixture
def old_store(tmp_path: Path) -> tuple[Path, dict[int, bytes]]:
    """A store whose nodes table has no kids column, and the kids the writer had written."""
    path = tmp_path / "old.sqlite"
    with SqliteStateStore.open(path) as writer:
        WorkloadWriter(writer, 11, keys=400, ops_per_tx=8).run(60)
        written = {r.id: r.kids for r in node_table(writer.connection).values()}
    strip_kids_column(path)
    assert "kids" not in columns(path)
    assert all(kids is not None for kids in written.values())
    return path, {row_id: kids for row_id, kids in written.items() if kids is not None}


@pytest.mark.parametrize("opener", [SqliteStateStore, SqliteNodeStore])
def test_a_store_from_before_kids_gets_the_column_on_open_with_null_kids(
    old_store: tuple[Path, dict[int, bytes]], opener: type[SqliteStateStore | SqliteNodeStore]
) -> None:
    path, written = old_store

    opener(path).close()

    assert "kids" in columns(path)
    with closing(sqlite3.connect(path)) as conn:
        table = node_table(conn)
    assert {r.id for r in table.values()} == set(written)
    assert all(r.kids is None for r in table.values())
    opener(path).close()  # opening again finds the column there
    assert "kids" in columns(path)


def test_expand_on_rows_without_kids_finds_each_rows_children_by_hash_in_order(
    old_store: tuple[Path, dict[int, bytes]],
) -> None:
    path, _ = old_store
    nodes = SqliteNodeStore(path)
    try:
        table = node_table(nodes.conn)
        for row in table.values():
            assert expand(nodes, [row.id]) == ([row.id], kids_by_hash(table, row.data))
        ids = sorted(r.id for r in table.values())
        assert len(ids) > EXPAND_CHUNK
        found, children = expand(nodes, ids)
    finally:
        nodes.close()
    assert sorted(found) == ids
    expected = [c for r in table.values() for c in kids_by_hash(table, r.data)]
    assert sorted(children) == sorted(expected)
    assert MISSING_ROW not in children


def test_expand_over_a_mix_of_rows_with_and_without_kids_reports_every_child_once(
    old_store: tuple[Path, dict[int, bytes]],
) -> None:
    path, written = old_store
    nodes = SqliteNodeStore(path)
    try:
        with_kids = sorted(written)[::2]  # every other row has its kids, the rest NULL
        nodes.conn.executemany(
            "UPDATE nodes SET kids = ? WHERE id = ?", [(written[i], i) for i in with_kids]
        )
        table = node_table(nodes.conn)
        found, children = expand(nodes, sorted(written))
    finally:
        nodes.close()
    assert sorted(found) == sorted(written)
    expected = [c for r in table.values() for c in kids_by_hash(table, r.data)]
    assert sorted(children) == sorted(expected)


@pytest.mark.parametrize("batch", [20_000, 7])
def test_backfill_fills_every_old_row_with_what_the_writer_would_have_written(
    old_store: tuple[Path, dict[int, bytes]], batch: int
) -> None:
    path, written = old_store
    with SqliteStateStore.open(path) as store:
        filled = store.backfill_kids(batch)
        again = store.backfill_kids(batch)
        table = node_table(store.connection)

    assert (filled, again) == (len(written), 0)
    assert {r.id: r.kids for r in table.values()} == written
    assert wrong_kids(table) == []


def test_a_row_whose_child_is_gone_keeps_null_after_backfill_and_expand_reports_missing_row(
    old_store: tuple[Path, dict[int, bytes]],
) -> None:
    path, written = old_store
    with SqliteStateStore.open(path) as store:
        before = node_table(store.connection)
        # A leaf that some internal node refers to: garbage a sweep left half deleted.
        gone = next(
            c
            for r in sorted(before.values(), key=lambda r: r.id)
            if not smt.is_leaf(r.data)
            for c in smt.children(r.data)
            if smt.is_leaf(before[c].data)
        )
        store.connection.execute("DELETE FROM nodes WHERE hash = ?", (gone,))
        parents = {r.id for r in before.values() if gone in smt.children(r.data)}

        filled = store.backfill_kids(50)
        table = node_table(store.connection)

    assert filled == len(written) - 1 - len(parents)
    assert {r.id for r in table.values() if r.kids is None} == parents
    rows = by_id(table)
    nodes = SqliteNodeStore(path)
    try:
        for parent in sorted(parents):
            found, children = expand(nodes, [parent])
            hashes = smt.children(rows[parent].data)
            assert found == [parent]
            assert children == kids_by_hash(table, rows[parent].data)
            assert children[hashes.index(gone)] == MISSING_ROW
            assert children.count(MISSING_ROW) == 1
    finally:
        nodes.close()
    assert wrong_kids(table, {h for h, r in table.items() if r.id not in parents}) == []


def test_a_commit_on_an_upgraded_store_writes_kids_for_its_rows_and_finds_old_children_by_hash(
    old_store: tuple[Path, dict[int, bytes]],
) -> None:
    path, _ = old_store
    with SqliteStateStore.open(path) as store:
        tx = store.commit_tx({b"key-000001": b"fresh"}, chain_timestamp=10**15)
        table = node_table(store.connection)

    mine = {h for h, r in table.items() if r.written_order == tx.tx_order}
    assert tx.state_root in mine
    assert wrong_kids(table, mine) == []
    assert all(r.kids is None for h, r in table.items() if h not in mine)


# --- expand -----------------------------------------------------------------------------------


def test_expand_leaves_missing_rows_out_and_reports_children_in_order_across_many_chunks(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    WorkloadWriter(store, 5, keys=400, ops_per_tx=8).run(120)
    table = node_table(store.connection)
    rows = by_id(table)
    ids = sorted(rows)
    assert len(ids) > 2 * EXPAND_CHUNK
    top = ids[-1]
    asked = [*ids, top + 1, top + 10_000, MISSING_ROW]
    random.Random(3).shuffle(asked)

    found, children = expand(nodes, asked)

    assert len(found) == len(ids) and sorted(found) == ids
    recorded = [c for r in found for c in unpack_ids(rows[r].kids or b"")]
    assert children == recorded  # one flat list, the rows' kids in the order of `found`
    for row_id in ids:
        assert expand(nodes, [row_id])[1] == kids_by_hash(table, rows[row_id].data)
    assert expand(nodes, [top + 1, MISSING_ROW]) == ([], [])
    assert expand(nodes, []) == ([], [])


def test_expand_reports_a_deleted_child_as_recorded_and_the_child_itself_as_not_found(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    tx = store.commit_tx({b"k%d" % i: b"v" for i in range(50)}, chain_timestamp=0)
    table = node_table(store.connection)
    root = table[tx.state_root]
    first = smt.children(root.data)[0]
    child_id = table[first].id
    store.connection.execute("DELETE FROM nodes WHERE id = ?", (child_id,))

    found, children = expand(nodes, [root.id, child_id])

    assert found == [root.id]
    assert children == kids_by_hash(table, root.data)
    assert children[0] == child_id


# --- a broken base tree -----------------------------------------------------------------------


def _tree_with_a_deleted_live_sibling(store: SqliteStateStore) -> tuple[bytes, bytes]:
    """A committed tree whose root's child for keys[0] was deleted by hand (store corruption),
    and a key of another subtree; returns (the deleted sibling, that key)."""
    keys = [b"k%d" % i for i in range(50)]
    tx = store.commit_tx(dict.fromkeys(keys, b"v"), chain_timestamp=0)

    def nibble(key: bytes) -> int:
        return smt.key_hash(key)[0] >> 4

    root_kids = smt.decode_internal(store.read_node(tx.state_root))
    sibling = root_kids[nibble(keys[0])]  # a live subtree the next tx does not rewrite
    other = next(k for k in keys if nibble(k) != nibble(keys[0]))
    store.connection.execute("DELETE FROM nodes WHERE hash = ?", (sibling,))
    return sibling, other


def test_a_tx_over_a_deleted_live_sibling_leaves_a_root_the_pruner_and_verify_find_broken(
    store: SqliteStateStore, nodes: SqliteNodeStore
) -> None:
    """The writer trusts its base tree's kids (that is what keeps it from looking every
    sibling up), so corruption below a live root carries into the next root; it is caught
    where it matters: the walk finds the row missing (BuildReach then deletes nothing) and
    verify names the hash."""
    sibling, other = _tree_with_a_deleted_live_sibling(store)

    tx = store.commit_tx({other: b"w"}, chain_timestamp=1)

    assert store.verify(tx.state_root).missing == [sibling]
    root_id = nodes.ids_of([tx.state_root])[tx.state_root]
    _, children = expand(nodes, [root_id])
    found, _ = expand(nodes, children)
    assert len(found) == len(children) - 1  # the sibling's row is gone


def test_on_a_store_without_kids_the_writer_refuses_a_tx_over_a_deleted_live_sibling(
    tmp_path: Path,
) -> None:
    """Rows from before the kids column give no ids, so the writer looks siblings up by hash
    and refuses to build on a missing one, writing nothing."""
    path = tmp_path / "old.sqlite"
    with SqliteStateStore.open(path) as made:
        sibling, other = _tree_with_a_deleted_live_sibling(made)
    strip_kids_column(path)
    with SqliteStateStore.open(path) as store:
        before = dump(store.connection)
        count = store.node_count()

        with pytest.raises(smt.MissingNodeError) as raised:
            store.commit_tx({other: b"w"}, chain_timestamp=1)

        assert raised.value.node_hash == sibling
        assert dump(store.connection) == before
        assert store.node_count() == count


# --- 32-bit row ids ---------------------------------------------------------------------------


def test_pack_ids_round_trips_ids_up_to_32_bits_and_reads_joined_lists() -> None:
    ids = [1, 2, 300, MAX_ROW_ID]
    assert MAX_ROW_ID == 2**32 - 1
    assert unpack_ids(pack_ids(ids)) == tuple(ids)
    assert pack_ids([]) == b"" and unpack_ids(b"") == ()
    assert unpack_ids(pack_ids([5, 6]) + pack_ids([7])) == (5, 6, 7)
    assert pack_ids([1]) == b"\x01\x00\x00\x00"  # little-endian uint32


def test_unpack_id_array_reads_the_same_ids_as_unpack_ids_into_an_array() -> None:
    packed = pack_ids([5, 6, MAX_ROW_ID]) + pack_ids([7])
    ids = unpack_id_array(packed)
    assert ids.typecode == "I" and list(ids) == list(unpack_ids(packed)) == [5, 6, MAX_ROW_ID, 7]
    assert list(unpack_id_array(b"")) == []


def test_pack_ids_of_an_id_beyond_32_bits_raises_overflow_error_naming_the_limit() -> None:
    with pytest.raises(OverflowError, match=f"beyond {MAX_ROW_ID}"):
        pack_ids([1, 2**32])


def test_the_writer_refuses_a_child_row_id_beyond_32_bits_and_commits_nothing(
    store: SqliteStateStore,
) -> None:
    store.commit_tx({b"a": b"1"}, chain_timestamp=0)
    store.connection.execute(
        "UPDATE sqlite_sequence SET seq = ? WHERE name = 'nodes'", (MAX_ROW_ID,)
    )
    before = dump(store.connection)

    with pytest.raises(OverflowError, match=f"beyond {MAX_ROW_ID}"):
        store.commit_tx({b"b": b"2", b"c": b"3"}, chain_timestamp=1)

    assert dump(store.connection) == before
