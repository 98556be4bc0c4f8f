"""The sweep journal: the row a delete transaction writes beside its deletes, so that a crash
between the commit and the NodesSwept events loses no audit, and its row format.

An IncrementalSweep batch read by `stale_entries` leaves its stale rows in place until its
events are logged (`mark_journal_logged` then deletes them with the journal row, in one
transaction). Its journal row names their key range instead of holding the hashes: the rows
it deleted from what their stale entries recorded are those entries, found again by row id.
Per million nodes deleted this saves ~0.15 s of packing, and the sweep writes 16 MB less
(942 -> 926 MB, counted as the process's write() bytes on the benchmark's 1M-node store)."""

from __future__ import annotations

import sqlite3
import sys
from array import array
from typing import Any

import msgpack

from domain.errors import CorruptJournalError
from domain.ports import DeletedNodes, JournalEntry
from infrastructure.sqlite_txn import write_transaction

# Sizes in a journal row: unsigned 32-bit, little-endian.
_U32 = next(code for code in "IL" if array(code).itemsize == 4)
# (first stale_order, first hash, last stale_order, last hash) of a batch's stale rows.
StaleRange = tuple[int, bytes, int, bytes]
IN_RANGE = "(stale_order, hash) >= (?, ?) AND (stale_order, hash) <= (?, ?)"


def _u32_bytes(values: list[int]) -> bytes | None:
    try:
        packed = array(_U32, values)
    except OverflowError:  # a node of 4 GiB or more: kept as a msgpack list instead
        return None
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _u32_list(raw: bytes) -> list[int]:
    if len(raw) % 4:
        raise ValueError(f"journal row holds {len(raw)} bytes of sizes, not a multiple of 4")
    values = array(_U32)
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def journal_blob(hashes: list[bytes], sizes: list[int]) -> bytes:
    """A journal row's `deleted`: {"H": the hashes joined, "w": their width, "N": the sizes as
    little-endian uint32}, or {"h": hashes, "n": sizes} as msgpack lists when the hashes'
    widths differ (or a size does not fit). Joined and as bytes, a million of each pack
    ~0.15 s faster than as msgpack lists."""
    widths = set(map(len, hashes))
    raw_sizes = _u32_bytes(sizes) if len(widths) == 1 else None
    if raw_sizes is not None:
        (width,) = widths
        packed: dict[str, object] = {"H": b"".join(hashes), "w": width, "N": raw_sizes}
    else:
        packed = {"h": hashes, "n": sizes}
    return msgpack.packb(packed, use_bin_type=True)  # type: ignore[no-any-return]


def journaled_nodes(blob: bytes) -> DeletedNodes:
    """A journal row's `deleted` (`journal_blob`), or (hash, size) pairs as journals written
    before the columns hold them. Raises ValueError for a row that is none of these."""
    try:
        packed = msgpack.unpackb(blob)
    except Exception as exc:
        raise ValueError(f"journal row is not msgpack: {type(exc).__name__}: {exc}") from None
    if isinstance(packed, dict) and "H" in packed:
        joined, width, sizes = packed["H"], packed["w"], _u32_list(packed["N"])
        if not isinstance(width, int) or width <= 0 or len(joined) != width * len(sizes):
            raise ValueError(
                f"journal row holds {len(joined)} bytes of hashes for {len(sizes)} sizes "
                f"of hashes {width} bytes wide"
            )
        hashes = [joined[i : i + width] for i in range(0, len(joined), width)]
        return DeletedNodes.of_columns(hashes, sizes)
    if isinstance(packed, dict):
        return DeletedNodes.of_columns(
            [bytes(h) for h in packed["h"]], [int(n) for n in packed["n"]]
        )
    if isinstance(packed, list):
        return DeletedNodes((bytes(h), int(n)) for h, n in packed)
    raise ValueError(f"journal row holds a {type(packed).__name__}, not deleted nodes")


def insert_journal_row(
    conn: sqlite3.Connection,
    journal: JournalEntry,
    deleted: bytes,
    row_ids: list[int],
    stale_range: StaleRange | None,
) -> None:
    """`deleted` holds the rows read before deleting; with a `stale_range`, the rows deleted
    from what their stale entries recorded follow them in `row_ids` (in entry order) and are
    found again in that range."""
    conn.execute(
        "INSERT INTO sweep_journal(batch_key, cycle_no, snapshot_id, phase, batch_no, "
        "deleted, row_ids, event_rows, stale_from_order, stale_from_hash, stale_to_order, "
        "stale_to_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            journal.batch_key,
            journal.cycle_no,
            journal.snapshot_id,
            journal.phase,
            journal.batch_no,
            deleted,
            msgpack.packb(row_ids),
            journal.event_rows,
            *(stale_range or (None, None, None, None)),
        ),
    )


def pending_stale_end(conn: sqlite3.Connection) -> tuple[int, bytes] | None:
    """The last key of the stale rows that unlogged journal rows still keep, if any: every
    stale row up to it belongs to a batch already deleted."""
    row = conn.execute(
        "SELECT stale_to_order, stale_to_hash FROM sweep_journal "
        "WHERE logged = 0 AND stale_to_order IS NOT NULL "
        "ORDER BY stale_to_order DESC, stale_to_hash DESC LIMIT 1"
    ).fetchone()
    return None if row is None else (int(row[0]), bytes(row[1]))


class JournalRows:
    """`unlogged_journal` and `mark_journal_logged` of `SqliteNodeStore` (a mixin)."""

    conn: sqlite3.Connection
    path: str

    def unlogged_journal(self) -> list[JournalEntry]:
        rows = self.conn.execute(
            "SELECT batch_key, cycle_no, snapshot_id, phase, batch_no, deleted, row_ids, "
            "event_rows, stale_from_order, stale_from_hash, stale_to_order, stale_to_hash "
            "FROM sweep_journal WHERE logged = 0 ORDER BY rowid"
        ).fetchall()
        entries = []
        for k, c, s, p, b, d, ids, n, *bounds in rows:
            try:
                deleted = journaled_nodes(d)
                row_ids = [] if ids is None else [int(i) for i in msgpack.unpackb(ids)]
                if bounds[0] is not None:
                    deleted = self._with_stale_rows(deleted, row_ids, bounds)
            except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
                raise CorruptJournalError(
                    f"sweep journal row {k!r} of {self.path} cannot be read "
                    f"({type(exc).__name__}: {exc}); it is "
                    "left in place: restore the state store from a backup, or remove the row "
                    "knowing that its batch's deleted nodes will be missing from the audit"
                ) from None
            entries.append(
                JournalEntry(k, int(c), int(s), str(p), int(b), deleted, row_ids, event_rows=int(n))
            )
        return entries

    def _with_stale_rows(
        self, read: DeletedNodes, row_ids: list[int], bounds: list[Any]
    ) -> DeletedNodes:
        """`read`, then the rows deleted from their stale entries: row_ids past `read`, in
        entry order, each taken from its first entry in the range that records its size (as
        the delete did)."""
        wanted = set(row_ids[len(read) :])
        found: dict[int, tuple[bytes, int]] = {}
        for h, row_id, size in self.conn.execute(
            f"SELECT hash, node_id, node_size FROM stale WHERE {IN_RANGE} "
            "ORDER BY stale_order, hash",
            bounds,
        ):
            # As `_known_rows` chose them: an entry without its size was not trusted.
            if size and row_id in wanted and row_id not in found:
                found[row_id] = (bytes(h), int(size))
        if list(found) != row_ids[len(read) :]:
            raise ValueError(
                f"{len(wanted) - len(found)} of the {len(wanted)} stale entries it names are "
                "gone, or in another order"
            )
        hashes = read.hashes + [h for h, _ in found.values()]
        sizes = read.sizes + [n for _, n in found.values()]
        return DeletedNodes.of_columns(hashes, sizes)

    def mark_journal_logged(self, batch_key: str) -> None:
        """Drops the row (the event log now holds the audit) and the stale rows it kept."""
        c = self.conn
        with write_transaction(c):
            bounds = c.execute(
                "SELECT stale_from_order, stale_from_hash, stale_to_order, stale_to_hash "
                "FROM sweep_journal WHERE batch_key = ?",
                (batch_key,),
            ).fetchone()
            if bounds is not None and bounds[0] is not None:
                c.execute(f"DELETE FROM stale WHERE {IN_RANGE}", bounds)
            c.execute("DELETE FROM sweep_journal WHERE batch_key = ?", (batch_key,))
