"""The `kids` column of the state store's node table: each node's children's row ids, so a
walk steps by row id (one b-tree) instead of by hash (the hash index, then the table).

Written by the writer in the node's own transaction and rewritten by every write of it, so a child
deleted and written again (a new row id: AUTOINCREMENT never reuses one) gets its new id in
every parent the tx writes. NULL: a row from before the column; readers fall back to hashes.
"""

from __future__ import annotations

import sqlite3
import struct
import sys
from array import array
from collections.abc import Iterator, Sequence

from infrastructure import smt
from infrastructure.node_index import HashIndex
from infrastructure.sqlite_columns import add_missing_columns
from infrastructure.sqlite_txn import write_transaction

# The write barrier: a hash that already exists is stamped again (with its `kids`, the
# children's row ids in smt.children order, `pack_ids`, rewritten too); a new one is inserted.
INSERT_NODE = "INSERT INTO nodes(hash, data, written_order, kids) VALUES (?, ?, ?, ?) RETURNING id"
STAMP_NODE = "UPDATE nodes SET written_order = ?, kids = ? WHERE id = ? AND hash = ?"
_ADD_KIDS = "ALTER TABLE nodes ADD COLUMN kids BLOB"
_IDS = struct.Struct("<I")
_NATIVE_IDS = sys.byteorder == "little" and array("I").itemsize == _IDS.size
MAX_ROW_ID = 2**32 - 1  # the reach set is a 32-bit roaring bitmap too

# Hashes per lookup: with the prefixes (node_index.HashIndex.any_of), at most 998 bound
# parameters, under the 999 of SQLite before 3.32.
LOOKUP_CHUNK = 499


def chunked(items: list[bytes], size: int = LOOKUP_CHUNK) -> Iterator[list[bytes]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def pack_ids(row_ids: Sequence[int]) -> bytes:
    """Row ids as little-endian uint32s (the `kids` column)."""
    try:
        return struct.pack(f"<{len(row_ids)}I", *row_ids)
    except struct.error:
        raise OverflowError(
            f"a row id is beyond {MAX_ROW_ID}, the limit of kids and of the reach set"
        ) from None


def unpack_ids(packed: bytes) -> tuple[int, ...]:
    """The inverse of `pack_ids`; also reads several packed lists joined together."""
    return struct.unpack(f"<{len(packed) // _IDS.size}I", packed)


def unpack_id_array(packed: bytes) -> array[int]:
    """`unpack_ids` as an array of uint32s: a copy of the bytes, with no int object per id
    (a walk step reads thousands), which a roaring bitmap takes in as a buffer."""
    if _NATIVE_IDS:
        ids = array("I")
        ids.frombytes(packed)
        return ids
    return array("I", unpack_ids(packed))


def add_kids_column(conn: sqlite3.Connection) -> None:
    """A store made before `kids` gets the column (NULL for its existing rows)."""
    add_missing_columns(conn, "nodes", {"kids": _ADD_KIDS})


def ids_by_hash(
    conn: sqlite3.Connection, index: HashIndex, hashes: list[bytes]
) -> dict[bytes, int]:
    """Row ids of the stored ones among `hashes`."""
    out: dict[bytes, int] = {}
    for chunk in chunked(hashes):
        where, params = index.any_of(chunk)
        out.update(conn.execute(f"SELECT hash, id FROM nodes WHERE {where}", params))
    return out


def read_for_write(
    conn: sqlite3.Connection, index: HashIndex, h: bytes, ids: dict[bytes, int]
) -> bytes:
    """A node the writer reads from its base tree, whose `kids` also give the row ids of its
    children: the siblings the new path nodes will point at, found without a lookup. A live
    node's kids name live rows (a sweep never deletes a child of a retained node), and ids
    already known (written in this transaction) win. The node's own row id goes into `ids`
    too: a node the tx replaces becomes a stale entry with it."""
    where, params = index.one(h)
    row = conn.execute(f"SELECT data, kids, id FROM nodes WHERE {where}", params).fetchone()
    if row is None:
        raise smt.MissingNodeError(h)
    data: bytes = row[0]
    ids[h] = row[2]
    if row[1] is not None:
        for child, row_id in zip(smt.children(data), unpack_ids(row[1]), strict=True):
            ids.setdefault(child, row_id)
    return data


def write_nodes(
    conn: sqlite3.Connection,
    index: HashIndex,
    written: dict[bytes, bytes],
    order: int,
    ids: dict[bytes, int],
    stored: set[bytes],
) -> None:
    """Writes `written`, children first, each with its children's row ids (`kids`), inside
    the caller's write transaction: the hashes in `stored` (which the caller found in this
    transaction, their row ids in `ids`) are stamped, the others inserted. Children the tx
    does not write come from `ids` (filled by `read_for_write` and earlier txs of the batch)
    or are looked up; a missing one is a broken base tree."""
    kids_of = {h: smt.children(d) for h, d in written.items()}
    outside = [c for kids in kids_of.values() for c in kids if c not in ids and c not in written]
    if outside:
        outside = list(dict.fromkeys(outside))
        ids.update(ids_by_hash(conn, index, outside))
        missing = [c for c in outside if c not in ids]
        if missing:
            raise smt.MissingNodeError(missing[0])
    execute = conn.execute

    def put(h: bytes) -> None:
        for child in kids_of[h]:  # smt.update writes children first: this rarely recurses
            if child in written and child not in done:
                put(child)
        kids = pack_ids([ids[c] for c in kids_of[h]])
        if h in stored:
            # The caller saw the row in this transaction: nobody else can delete it.
            if execute(STAMP_NODE, (order, kids, ids[h], h)).rowcount != 1:
                raise RuntimeError(f"node {h.hex()} vanished inside the write transaction")
        else:  # a hash stored after all fails the UNIQUE index or trigger: nothing is lost
            ids[h] = execute(INSERT_NODE, (h, written[h], order, kids)).fetchone()[0]
        done.add(h)

    done: set[bytes] = set()
    for h in written:
        if h not in done:
            put(h)


def backfill_kids(conn: sqlite3.Connection, index: HashIndex, batch: int = 20_000) -> int:
    """Fills `kids` of rows written before the column existed; returns how many. A row whose
    child is gone (garbage a sweep left half deleted) keeps NULL: the pruner's lookups fall
    back to hashes for it."""
    filled, after = 0, 0
    while True:
        with write_transaction(conn):
            rows = conn.execute(
                "SELECT id, data FROM nodes WHERE id > ? AND kids IS NULL ORDER BY id LIMIT ?",
                (after, batch),
            ).fetchall()
            kids_of = {i: smt.children(d) for i, d in rows}
            wanted = list({c for kids in kids_of.values() for c in kids})
            ids = ids_by_hash(conn, index, wanted)
            updates = [
                (pack_ids([ids[c] for c in kids]), i)
                for i, kids in kids_of.items()
                if all(c in ids for c in kids)
            ]
            conn.executemany("UPDATE nodes SET kids = ? WHERE id = ?", updates)
        filled += len(updates)
        if not rows:
            return filled
        after = rows[-1][0]
