"""IncrementalSweep with the row ids the writer records in the stale index: no hash lookups for
them, hash lookups for entries from before the column, and an entry whose row is gone (its hash
deleted, then written again as a new row) deletes nothing and leaves no garbage behind."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from domain.ports import StaleEntry, row_ids_of
from infrastructure.eventlog import STATE_FILE
from tests.domain.rig import IS, K, MakeRig, assert_whole, k_was_v1_then_v2, leaf_hash
from tests.fakes import HookedNodeStore, swept_events, swept_hashes


class LookupCounter(HookedNodeStore):
    """Counts `ids_of` calls made while IncrementalSweep runs (after its first stale read)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.in_sweep = False
        self.sweep_lookups = 0

    def stale_entries(self, up_to_order: int, limit: int) -> list[tuple[int, bytes, int]]:
        self.in_sweep = True
        return super().stale_entries(up_to_order, limit)

    def ids_of(self, hashes: list[bytes]) -> dict[bytes, int]:
        if self.in_sweep:
            self.sweep_lookups += len(hashes)
        return super().ids_of(hashes)


@pytest.mark.parametrize("entries_from", ["the writer", "an older store"])
def test_incremental_sweep_looks_up_hashes_only_for_entries_without_a_row_id(
    make_rig: MakeRig, entries_from: str
) -> None:
    rig = make_rig(protection_orders=3)
    leaf = k_was_v1_then_v2(rig)
    if entries_from == "an older store":
        rig.store.connection.execute("UPDATE stale SET node_id = NULL")
    counter = LookupCounter(rig.rt.nodes, hide_expired_roots=True)

    report = rig.pruner_over(counter).run_cycle()

    assert (counter.sweep_lookups > 0) == (entries_from == "an older store")
    assert report.phases[IS.value].deleted > 0
    assert not rig.is_stored(leaf) and leaf in swept_hashes(rig.rt.log)
    assert_whole(rig, report)


def test_an_entry_whose_row_is_gone_deletes_nothing_of_the_hash_written_again_and_leaves_no_garbage(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(protection_orders=3)
    leaf = k_was_v1_then_v2(rig)  # stale entry (2, leaf, its row)
    old = rig.row(leaf)
    assert old is not None
    with sqlite3.connect(rig.rt.settings.data_dir / STATE_FILE) as db:  # as SweepExpired would
        db.execute("DELETE FROM nodes WHERE id = ?", (old[0],))
    rig.commit({K: b"v1"})  # the same leaf again: a new row, live in the newest root
    new = rig.row(leaf)
    assert new is not None and new[0] != old[0]

    report = rig.rt.pruner.run_cycle()

    assert rig.row(leaf) == new  # the old entry named a gone row: nothing deleted by it
    assert_whole(rig, report)
    # Once a later tx replaces it and its roots leave the window, it goes (a new entry).
    rig.commit({K: b"v9"})
    rig.filler(5)
    report = rig.rt.pruner.run_cycle()
    assert not rig.is_stored(leaf)
    assert rig.check(report).unreachable_stored == 0
    assert leaf_hash(K, b"v9") not in swept_hashes(rig.rt.log)


def test_a_node_stale_twice_is_deleted_once_and_not_counted_as_kept_by_the_guard(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(protection_orders=3, delete_batch_size=1)  # 8 entries per transaction
    others = [b"other-%d" % i for i in range(10)]
    rig.commit({K: b"v1", **{o: b"a" for o in others}})  # 1
    rig.commit({K: b"v2"})  # 2: stale (2, leaf)
    # 3: the same leaf, the same row, stamped again; and a dozen more entries in between
    rig.commit({K: b"v1", **{o: b"b" for o in others}})
    rig.commit({K: b"v3"})  # 4: stale (4, leaf), the same row id, a later transaction
    rig.filler(8)
    leaf = leaf_hash(K, b"v1")
    ids = {row_id for _, h, row_id, _ in rig.rt.nodes.stale_entries(10**9, 10**6) if h == leaf}
    assert len(ids) == 1  # two entries, one row

    report = rig.pruner_over(HookedNodeStore(rig.rt.nodes, hide_expired_roots=True)).run_cycle()

    assert report.phases[IS.value].kept_by_guard == 0
    assert swept_hashes(rig.rt.log).count(leaf) == 1
    assert_whole(rig, report)


def test_the_audit_of_a_sweep_from_recorded_rows_names_each_deleted_node_and_its_bytes(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(protection_orders=3, delete_batch_size=4)
    for i in range(12):
        rig.commit({K: b"v%d" % i, b"j": b"w%d" % (i % 3)}, objects={b"o": {b"f": b"%d" % i}})
    rig.filler(6)
    before = {
        bytes(h): int(n)
        for h, n in rig.store.connection.execute(
            "SELECT hash, length(hash) + length(data) FROM nodes"
        )
    }

    report = rig.pruner_over(HookedNodeStore(rig.rt.nodes, hide_expired_roots=True)).run_cycle()

    events = swept_events(rig.rt.log)
    gone = {h for h in before if not rig.is_stored(h)}
    assert report.phases[IS.value].deleted == len(gone) > 0
    assert sorted(h for e in events for h in e.hashes) == sorted(gone)
    assert all(e.bytes_freed == sum(before[h] for h in e.hashes) for e in events)
    assert report.phases[IS.value].bytes_freed == sum(before[h] for h in gone)
    assert_whole(rig, report)


class SweepRecorder(HookedNodeStore):
    """Records the rows each sweep's delete transactions were asked to delete, and the row
    ids the stale entries IncrementalSweep consumed name."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.expired_deleted: set[int] = set()
        self.incremental_asked: set[int] = set()
        self.entries_named: set[int] = set()

    def delete_guarded(self, row_ids: list[int], *args: Any) -> list[tuple[bytes, int]]:
        deleted = super().delete_guarded(row_ids, *args)
        self.expired_deleted.update(row_ids_of(deleted))
        return deleted

    def sweep_stale(
        self, entries: list[StaleEntry], row_ids: list[int], *args: Any
    ) -> list[tuple[bytes, int]]:
        self.incremental_asked.update(row_ids)
        self.entries_named.update(row_id for _, _, row_id, _ in entries)
        return super().sweep_stale(entries, row_ids, *args)


def test_incremental_sweep_skips_the_rows_sweep_expired_deleted_in_the_same_run(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(protection_orders=3)
    k_was_v1_then_v2(rig)
    for value in (b"v3", b"v4", b"v5"):
        rig.commit({K: value, b"other": value})
    rig.filler(4)
    recorder = SweepRecorder(rig.rt.nodes)

    report = rig.pruner_over(recorder).run_cycle()

    # The stale index names rows SweepExpired deleted; IncrementalSweep does not ask again.
    assert recorder.entries_named & recorder.expired_deleted
    assert not recorder.incremental_asked & recorder.expired_deleted
    assert report.phases[IS.value].kept_by_guard == 0
    assert_whole(rig, report)
    assert rig.check(report).unreachable_stored == 0
