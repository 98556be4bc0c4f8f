"""The guarded delete transaction of `SqliteNodeStore`: fence check, guarded DELETE (reading
the rows first, or trusting what their stale entries recorded), stale-index consumption,
swept flags and the journal row, all in one `BEGIN IMMEDIATE` transaction."""

from __future__ import annotations

import sqlite3
from operator import itemgetter

from domain.errors import LockNotHeldError
from domain.ports import DeletedNodes, JournalEntry, StaleEntry
from infrastructure.sqlite_txn import write_transaction
from infrastructure.sweep_journal import StaleRange, insert_journal_row, journal_blob

# Ids per statement: with the guarded DELETE's extra parameter it stays within the 999 bound
# parameters of SQLite before 3.32.
_CHUNK = 998


class _RowsGoneBefore(Exception):
    """A chunk deleted from known rows had rows that were gone before its DELETE."""


class _NotARange(Exception):
    """The key range of a batch of stale entries held other rows than the batch's."""


def _known_rows(stale: list[StaleEntry], row_ids: set[int]) -> dict[int, StaleEntry]:
    """Row id -> its stale entry, in entry order, for those of `row_ids` whose entries recorded
    the row and its size (MISSING_ROW entries record neither: their id is 0, never a row's).
    A row stale at two orders has two equal entries (a row never changes hash or size).
    Built with C-level loops: a comprehension over a million entries cost ~0.3 s more."""
    known = dict(zip(map(itemgetter(2), stale), stale, strict=True))
    for row_id in known.keys() - row_ids:
        del known[row_id]
    if not all(map(itemgetter(3), known.values())):
        # An entry without its size is not trusted (its row is read instead), and a row's
        # place is that of its first entry that has one (as sweep_journal finds them again).
        known = {e[2]: e for e in stale if e[3] and e[2] in row_ids}
    return known


class DeleteTransactions:
    """The delete side of `SqliteNodeStore` (a mixin: it needs `conn`)."""

    conn: sqlite3.Connection

    def _delete(
        self,
        row_ids: list[int],
        max_order: int,
        journal: JournalEntry,
        stale: list[StaleEntry],
        swept: list[int],
        *,
        trust_known: bool = True,
        by_range: bool = True,
        defer_stale: bool = False,
    ) -> DeletedNodes:
        """`defer_stale`: `stale` is the batch `stale_entries` returned, as it returned it, so
        its key range holds it and nothing else; its rows may stay until the journal row is
        logged (infrastructure/sweep_journal.py)."""
        c = self.conn
        hashes: list[bytes] = []
        sizes: list[int] = []
        deleted_ids: list[int] = []
        row_ids = sorted(row_ids)  # one transaction: order is free, and neighbours share pages
        # What stale entries recorded of their rows: a row never changes hash (or size), so
        # a chunk of such rows is deleted without reading them (`_delete_known`).
        todo = set(row_ids)
        known = _known_rows(stale, todo) if trust_known and stale else {}
        all_known = bool(known) and len(known) == len(todo)
        kept: set[int] = set()  # by the guard, in chunks deleted from what their entries say
        try:
            with write_transaction(c):
                self._check_fence(journal)
                for i in range(0, len(row_ids), _CHUNK):
                    chunk = row_ids[i : i + _CHUNK]
                    # The guard: a writer that stamped the hash after the snapshot wins.
                    where = f"id IN ({','.join('?' * len(chunk))}) AND written_order <= ?"
                    params = [*chunk, max_order]
                    if all_known or (known and all(map(known.__contains__, chunk))):
                        # Audited at the end from `known`, in entry order.
                        ids = self._delete_known(c, chunk, where, params)
                        if len(ids) < len(chunk):
                            kept.update(chunk)
                            kept.difference_update(ids)
                        continue
                    for row_id in chunk:  # audited from the rows read below
                        known.pop(row_id, None)
                    # What the guarded DELETE will remove, read first inside the same write
                    # transaction (no writer can commit in between): measurably cheaper than
                    # DELETE ... RETURNING, which costs ~8 us more CPU per row.
                    # ORDER BY id costs no sort (the IN list is walked in rowid order) and pairs
                    # each row with its id: when every id is there and passes the guard, the
                    # ids are the chunk itself.
                    rows = c.execute(
                        f"SELECT hash, length(hash) + length(data) FROM nodes WHERE {where} "
                        "ORDER BY id",
                        params,
                    ).fetchall()
                    if len(rows) == len(chunk):
                        ids = chunk
                    else:
                        sql = f"SELECT id FROM nodes WHERE {where} ORDER BY id"
                        ids = [i for (i,) in c.execute(sql, params)]
                    removed = c.execute(f"DELETE FROM nodes WHERE {where}", params).rowcount
                    if removed != len(rows):  # rolls the transaction back
                        raise sqlite3.DatabaseError(
                            f"guarded delete removed {removed} rows, expected {len(rows)}"
                        )
                    hashes.extend(map(itemgetter(0), rows))
                    sizes.extend(map(itemgetter(1), rows))
                    deleted_ids.extend(ids)
                for row_id in kept:
                    del known[row_id]
                entries = list(known.values())
                stale_range: StaleRange | None = None
                if defer_stale and by_range and entries:
                    # The rows read above are journaled whole; those deleted from their entries
                    # are found again in the stale range, kept until the batch is logged.
                    journaled = journal_blob(hashes, sizes)
                    (first, first_hash, *_), (last, last_hash, *_) = stale[0], stale[-1]
                    stale_range = (first, first_hash, last, last_hash)
                else:
                    self._consume_stale(stale, by_range=by_range)
                hashes += map(itemgetter(1), entries)
                sizes += map(itemgetter(3), entries)
                deleted_ids += known
                swept_rows = [(o,) for o in swept]
                c.executemany("UPDATE roots SET swept = 1 WHERE tx_order = ?", swept_rows)
                if hashes:
                    if stale_range is None:
                        # Columns, not pairs: packing a million 2-tuples cost ~0.4 s more.
                        journaled = journal_blob(hashes, sizes)
                    insert_journal_row(c, journal, journaled, deleted_ids, stale_range)
        except (_RowsGoneBefore, _NotARange) as redo:
            # write_transaction rolled it back: the whole transaction again, reading
            if isinstance(redo, _RowsGoneBefore):  # the rows, or consuming row by row
                trust_known = False
            else:
                by_range = False
            return self._delete(
                row_ids,
                max_order,
                journal,
                stale,
                swept,
                trust_known=trust_known,
                by_range=by_range,
                defer_stale=defer_stale,
            )
        return DeletedNodes.of_columns(hashes, sizes, deleted_ids)

    @staticmethod
    def _delete_known(
        c: sqlite3.Connection, chunk: list[int], where: str, params: list[int]
    ) -> list[int]:
        """Deletes `chunk`, whose rows the stale entries describe, without reading them, and
        returns the ids it deleted. When the guarded DELETE removes fewer rows than the chunk
        has, the rows still there are the ones the guard kept (inside the write transaction
        nothing else changes them), unless some were gone already: then which of the missing
        ones this DELETE removed is unknown, and `_RowsGoneBefore` sends the whole transaction
        back to be redone by reading the rows. (Counting the passing rows first instead cost
        ~1 s per million rows deleted.)"""
        removed = c.execute(f"DELETE FROM nodes WHERE {where}", params).rowcount
        if removed == len(chunk):
            return chunk
        sql = f"SELECT id FROM nodes WHERE id IN ({','.join('?' * len(chunk))})"
        kept = {i for (i,) in c.execute(sql, chunk)}
        if removed + len(kept) != len(chunk):
            raise _RowsGoneBefore
        return [i for i in chunk if i not in kept]

    def _check_fence(self, journal: JournalEntry) -> None:
        """Inside the delete transaction: refuses a holder whose lock a newer holding has
        superseded (its token is lower, or equal but another owner's), else records this one."""
        if not journal.fence_token:
            return
        row = self.conn.execute(
            "SELECT token, owner FROM prune_fence WHERE grp = ?", (journal.group,)
        ).fetchone()
        if row is not None and (
            row[0] > journal.fence_token
            or (row[0] == journal.fence_token and row[1] != journal.owner)
        ):
            raise LockNotHeldError(
                f"{journal.owner}'s lock of group {journal.group!r} (fencing token "
                f"{journal.fence_token}) was superseded by {row[1]} (token {row[0]}); "
                "nothing deleted"
            )
        self.conn.execute(
            "INSERT INTO prune_fence(grp, token, owner) VALUES (?, ?, ?) ON CONFLICT(grp) "
            "DO UPDATE SET token = excluded.token, owner = excluded.owner",
            (journal.group, journal.fence_token, journal.owner),
        )

    def _consume_stale(self, entries: list[StaleEntry], *, by_range: bool) -> None:
        """Deletes the stale rows of a batch. A batch from `stale_entries` is a prefix of the
        table in key order: one range delete (measured ~20 s less over 1M rows than a
        DELETE per row), kept if it deleted exactly as many rows as the batch has. No writer
        adds a row inside the range (its orders are above every existing root) and only the
        fenced lock holder removes any, so a range holding as many rows as the batch (whose
        entries are distinct and in key order, as the port requires) holds the batch.
        Otherwise `_NotARange` rolls the whole transaction back, to be redone row by row
        (`by_range=False`): rarer and cheaper than a savepoint around every range delete
        (~0.1 s per million entries), or than counting the range first (~0.2 s)."""
        if not entries:
            return
        c = self.conn
        if not by_range:
            keys = [(order, h) for order, h, *_ in entries]
            c.executemany("DELETE FROM stale WHERE stale_order = ? AND hash = ?", keys)
            return
        # Entries come in key order, as the port requires, so the first and the last bound
        # them (out of order, the range misses some: the count below differs).
        (first, first_hash, *_), (last, last_hash, *_) = entries[0], entries[-1]
        removed = c.execute(
            "DELETE FROM stale WHERE (stale_order, hash) >= (?, ?) "
            "AND (stale_order, hash) <= (?, ?)",
            (first, first_hash, last, last_hash),
        ).rowcount
        if removed != len(entries):
            raise _NotARange
