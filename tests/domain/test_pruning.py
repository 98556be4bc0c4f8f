"""The pruner's phases against the real SQLite adapters: the ways Rooch's runtime pruner lost
nodes, each as a regression test, plus the audit and crash-recovery guarantees.

Every scenario builds its state by committing real transactions, runs the real Pruner, and
then checks the store independently (`check_store` re-hashes every protected root)."""

from __future__ import annotations

import contextlib

import pytest

from domain.cycle import PruneCycle, cycle_uuid
from domain.errors import RecoveryExhaustedError, SnapshotMismatchError
from domain.manager import AtomicSnapshotManager
from domain.phases import PrunePhase
from domain.pruning import Pruner
from domain.recovery import ErrorRecoveryManager
from infrastructure import smt
from infrastructure.audit_checks import check_store
from infrastructure.hashing import integrity_hash
from infrastructure.workload import WorkloadWriter
from tests.domain.rig import (
    FAST_RETRIES,
    IS,
    SE,
    K,
    MakeRig,
    Rig,
    assert_whole,
    field_root_of,
    k_was_v1_then_v2,
    leaf_hash,
)
from tests.fakes import (
    FailingAppendLog,
    HookedNodeStore,
    SimulatedCrashError,
    crash_after_first_delete,
    logged_events,
    stored_hashes,
    swept_events,
    swept_hashes,
)

# --- a hash that a writer puts back after the snapshot ------------------------------------------


def test_a_leaf_a_writer_puts_back_between_build_reach_and_the_sweep_is_not_deleted(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(protection_orders=3)
    leaf = k_was_v1_then_v2(rig)
    hooked = HookedNodeStore(rig.rt.nodes)
    # After BuildReach, after SweepExpired collected its garbage, just before its DELETE.
    hooked.before_first("delete_guarded", lambda: rig.commit({K: b"v1"}))

    report = rig.pruner_over(hooked).run_cycle()

    assert report.latest_order == 9
    assert not rig.is_marked(report, leaf)  # garbage at the snapshot...
    row = rig.row(leaf)
    assert row is not None and row[1] == 10  # ...put back at order 10
    # SweepExpired chose it and its guard kept it; IncrementalSweep, whose stale entry names
    # it too, skips the rows SweepExpired handled (the same guard would keep it again).
    assert report.phases[SE.value].kept_by_guard >= 1
    assert report.phases[IS.value].kept_by_guard == 0
    assert leaf not in swept_hashes(rig.rt.log)
    assert rig.store.get(rig.latest_root(), K) == smt.encode_value(b"v1")
    assert_whole(rig, report)
    # It is live now, so the next cycle marks it.
    rig.filler(4)
    again = rig.rt.pruner.run_cycle()
    assert rig.is_marked(again, leaf)
    assert_whole(rig, again)


def test_a_whole_old_root_that_a_revert_writes_again_during_the_sweep_is_not_deleted(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(protection_orders=0)
    old_root = rig.commit({K: b"v1"}).state_root
    rig.commit({K: b"v2"})
    hooked = HookedNodeStore(rig.rt.nodes)
    hooked.before_first("delete_guarded", lambda: rig.commit({K: b"v1"}))

    report = rig.pruner_over(hooked).run_cycle()

    assert report.latest_order == 2
    assert rig.root_at(3) == old_root  # the same root as order 1, written again
    assert not rig.is_marked(report, old_root)
    assert rig.is_stored(old_root) and rig.is_stored(leaf_hash(K, b"v1"))
    assert report.phases[SE.value].kept_by_guard >= 2
    assert rig.store.verify(old_root).ok
    assert_whole(rig, report)


def test_a_leaf_a_writer_puts_back_just_before_incremental_sweeps_delete_is_not_deleted(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(protection_orders=3)
    leaf = k_was_v1_then_v2(rig)
    # Expired roots look swept already, so only the stale index leads to the leaf.
    hooked = HookedNodeStore(rig.rt.nodes, hide_expired_roots=True)
    hooked.before_first("sweep_stale", lambda: rig.commit({K: b"v1"}))

    report = rig.pruner_over(hooked).run_cycle()

    assert report.phases[SE.value].deleted == 0
    assert report.phases[IS.value].deleted > 0  # the rest of the stale garbage went
    assert report.phases[IS.value].kept_by_guard >= 1
    assert not rig.is_marked(report, leaf)
    assert rig.is_stored(leaf)
    assert leaf not in swept_hashes(rig.rt.log)
    assert_whole(rig, report)


# --- the reach set follows nested objects and shared subtrees -----------------------------------


def test_a_field_tree_reachable_only_through_a_leafs_object_root_is_marked_and_kept(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(protection_orders=3)
    rig.commit(objects={b"obj": {b"f0": b"a", b"f1": b"b", b"f2": b"c", b"f3": b"d"}})
    rig.filler(8)
    field_root = field_root_of(rig.store, rig.latest_root(), b"obj")
    field_tree = smt.reachable(rig.store.read_node, field_root)
    assert len(field_tree) >= 5  # an internal node or more, and four leaves

    report = rig.rt.pruner.run_cycle()

    assert report.phases[SE.value].deleted > 0
    assert all(rig.is_marked(report, h) for h in field_tree)
    assert all(rig.is_stored(h) for h in field_tree)
    verified = rig.store.verify(rig.latest_root())
    assert verified.ok and verified.object_roots >= 1
    assert_whole(rig, report)


def test_a_field_tree_shared_by_a_protected_object_and_an_expired_one_survives(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(protection_orders=3)
    fields = {b"f0": b"same", b"f1": b"fields", b"f2": b"here"}
    rig.commit(objects={b"obj-a": fields, b"obj-b": fields})
    first = rig.root_at(1)
    shared_root = field_root_of(rig.store, first, b"obj-a")
    assert field_root_of(rig.store, first, b"obj-b") == shared_root
    value_a = rig.store.get(first, b"obj-a")
    assert value_a is not None
    leaf_a = smt.node_hash(smt.encode_leaf(smt.key_hash(b"obj-a"), value_a))
    shared = smt.reachable(rig.store.read_node, shared_root)
    rig.commit(objects={b"obj-a": None})  # order 2: its leaf and (candidate) field tree go stale
    rig.filler(7)

    report = rig.rt.pruner.run_cycle()

    assert not rig.is_stored(leaf_a)  # the sweep did walk into obj-a's expired leaf
    assert all(rig.is_stored(h) and rig.is_marked(report, h) for h in shared)
    assert not set(shared) & set(swept_hashes(rig.rt.log))
    assert field_root_of(rig.store, rig.latest_root(), b"obj-b") == shared_root
    assert rig.rt.nodes.stale_entries(report.latest_order - 3, 10_000) == []
    assert_whole(rig, report)


# --- one snapshot per cycle --------------------------------------------------------------------


def another_cycle_takes_the_lock_mid_sweep(rig: Rig, hooked: HookedNodeStore) -> list[int]:
    """Arms `hooked` so that, once cycle 1's SweepExpired has started on snapshot 1, the lock
    moves to snapshot 2 of another cycle, and cycle 1 is handed snapshot 2 directly: it must
    refuse it for any step and append nothing. Returns the log heads seen then."""
    heads: list[int] = []

    def hand_over() -> None:
        rig.filler(1)
        other = rig.rt.manager.create_snapshot(SE)
        assert (other.snapshot_id, other.cycle_no) == (2, 2)
        heads.append(rig.rt.log.head())
        cycle = rig.rt.log.get(cycle_uuid("default", 1), PruneCycle)
        assert (cycle.state, cycle.snapshot_id) == (SE.value, 1)
        now = rig.clock.now()
        with pytest.raises(SnapshotMismatchError, match="refusing snapshot 2"):
            cycle.record_batch(SE, 2, 1, [(b"\x01" * 32, 40)], now)
        with pytest.raises(SnapshotMismatchError, match="refusing snapshot 2"):
            cycle.start_phase(IS, 2, now)
        assert list(cycle.pending_events) == []
        heads.append(rig.rt.log.head())

    hooked.before_first("expired_roots", hand_over)
    return heads


def test_a_cycle_handed_another_cycles_snapshot_refuses_it_and_never_deletes_on_it(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(protection_orders=3)
    k_was_v1_then_v2(rig)
    hooked = HookedNodeStore(rig.rt.nodes)
    heads = another_cycle_takes_the_lock_mid_sweep(rig, hooked)

    # The sweep refuses to delete under a lock that names another snapshot; whatever the
    # recovery then does (roll back onto a fresh snapshot, or stop), nothing is lost.
    with contextlib.suppress(RecoveryExhaustedError):
        rig.pruner_over(hooked).run_cycle()

    assert len(heads) == 2 and heads[0] == heads[1]
    assert 1 not in {j.snapshot_id for j in hooked.journals}
    assert all(e.snapshot_id != 1 for e in swept_events(rig.rt.log))
    check = check_store(rig.store, rig.latest_order() - 3)
    assert check.violations == 0, check


def test_a_sweep_that_refuses_another_cycles_snapshot_logs_snapshot_mismatch_as_the_cause(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(protection_orders=3)
    k_was_v1_then_v2(rig)
    hooked = HookedNodeStore(rig.rt.nodes)
    another_cycle_takes_the_lock_mid_sweep(rig, hooked)

    with contextlib.suppress(RecoveryExhaustedError):
        rig.pruner_over(hooked).run_cycle()

    failures = [
        e.event
        for e in logged_events(rig.rt.log)
        if e.topic == "prunelog:PruneCycle.PhaseFailed" and e.event.phase == SE.value
    ]
    assert failures, "the refused sweep left no PhaseFailed event"
    assert failures[0].error_type == "SnapshotMismatchError", failures[0].message


# --- IncrementalSweep and a reused hash ----------------------------------------------------------


def test_incremental_sweep_keeps_a_stale_indexed_hash_that_a_retained_root_reuses(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(protection_orders=3)
    leaf = leaf_hash(K, b"v1")
    rig.commit({K: b"v1"})  # 1
    rig.commit({K: b"v2"})  # 2: stale (2, leaf)
    rig.commit({K: b"v1"})  # 3: the same leaf again, written at 3
    rig.filler(4)  # 4..7
    rig.commit({K: b"v3"})  # 8: stale (8, leaf); only roots 3..7 hold it
    rig.filler(1)  # 9: the window is 6..9
    assert (2, leaf) in {e[:2] for e in rig.rt.nodes.stale_entries(6, 10_000)}
    row = rig.row(leaf)
    assert row is not None and row[1] <= 9  # written before the snapshot: the guard lets it go

    report = rig.rt.pruner.run_cycle()

    assert report.phases[IS.value].visited > 0
    assert (2, leaf) not in {e[:2] for e in rig.rt.nodes.stale_entries(6, 10_000)}  # consumed
    assert rig.is_stored(leaf) and rig.is_marked(report, leaf)
    assert leaf not in swept_hashes(rig.rt.log)
    assert rig.store.get(rig.root_at(6), K) == smt.encode_value(b"v1")
    assert_whole(rig, report)


# --- a crash between a delete and its event ------------------------------------------------------


@pytest.mark.parametrize("phase", [SE, IS], ids=lambda p: p.value)
def test_a_batch_deleted_but_not_logged_before_a_crash_is_logged_once_by_reconcile(
    make_rig: MakeRig, phase: PrunePhase
) -> None:
    rig = make_rig(protection_orders=4, delete_batch_size=16)
    writer = WorkloadWriter(rig.store, 3, keys=120)
    writer.run(60)
    at_start = stored_hashes(rig.store.connection)
    hooked = HookedNodeStore(rig.rt.nodes, hide_expired_roots=phase is IS)
    hooked.after_delete.append(crash_after_first_delete())

    with pytest.raises(SimulatedCrashError):
        rig.pruner_over(hooked).run_cycle()

    crashed = hooked.deleted
    assert crashed and not {h for h, _ in crashed} & stored_hashes(rig.store.connection)
    (journaled,) = rig.rt.nodes.unlogged_journal()
    assert journaled.phase == phase.value and journaled.deleted == crashed
    assert swept_events(rig.rt.log) == []
    head = rig.rt.log.head()

    # One transaction journaled several audit batches of delete_batch_size rows each.
    batches = -(-len(crashed) // 16)
    assert batches > 1
    assert rig.rt.pruner.reconcile_journal() == batches

    events = swept_events(rig.rt.log)
    assert [bytes(h) for e in events for h in e.hashes] == [h for h, _ in crashed]
    assert all(e.phase == phase.value and e.snapshot_id == 1 for e in events)
    assert [e.batch_no for e in events] == [journaled.batch_no + i for i in range(batches)]
    assert [e.count for e in events][:-1] == [16] * (batches - 1)
    assert sum(e.bytes_freed for e in events) == sum(n for _, n in crashed)
    assert rig.rt.log.head() == head + batches
    assert rig.rt.nodes.unlogged_journal() == []
    assert rig.rt.pruner.reconcile_journal() == 0
    assert rig.rt.log.head() == head + batches

    # Nothing was stranded: the next cycles finish the job, and the audit has every node.
    for _ in range(2):
        report = rig.rt.pruner.run_cycle()
    check = rig.check(report)
    assert check.violations == 0 and check.unreachable_stored == 0, check
    hashes = swept_hashes(rig.rt.log)
    assert len(hashes) == len(set(hashes))
    assert set(hashes) == at_start - stored_hashes(rig.store.connection)


def test_a_failed_nodes_swept_append_after_a_committed_delete_loses_no_audit_and_wedges_nothing(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(protection_orders=4, delete_batch_size=16)
    WorkloadWriter(rig.store, 3, keys=120).run(60)
    at_start = stored_hashes(rig.store.connection)
    rt = rig.rt
    # The event store refuses one append (busy, full disk) right after a batch's DELETE
    # committed: the batch is in the journal, not yet in the log.
    flaky = FailingAppendLog(rt.log, "NodesSwept")
    manager = AtomicSnapshotManager(
        flaky,
        rt.chain,
        rig.clock,
        integrity_hash,
        rt.settings.snapshot,
        owner=rt.manager.owner,
        protection_orders=rig.protection_orders,
    )
    recovery = ErrorRecoveryManager(manager, FAST_RETRIES, sleep=lambda _s: None)
    pruner = Pruner(manager, rt.nodes, rt.reach_store, rt.settings.prune, recovery=recovery)

    # The recovery may retry, roll back or give this cycle up...
    with contextlib.suppress(RecoveryExhaustedError):
        pruner.run_cycle()
    assert flaky.failed == 1

    # ...but the next cycles run, and the audit gets every deleted node exactly once.
    for _ in range(2):
        report = rt.pruner.run_cycle()
    assert rt.nodes.unlogged_journal() == []
    hashes = swept_hashes(rt.log)
    assert len(hashes) == len(set(hashes))
    assert set(hashes) == at_start - stored_hashes(rig.store.connection)
    check = rig.check(report)
    assert check.violations == 0 and check.unreachable_stored == 0, check


# --- the audit: every deleted node is in exactly one NodesSwept event ----------------------------


@pytest.mark.parametrize("only_stale_index", [False, True], ids=["both-sweeps", "stale-index"])
def test_the_nodes_swept_events_of_each_cycle_name_exactly_the_nodes_it_deleted(
    make_rig: MakeRig, only_stale_index: bool
) -> None:
    rig = make_rig(protection_orders=5, delete_batch_size=32)
    hooked = HookedNodeStore(rig.rt.nodes, hide_expired_roots=only_stale_index)
    pruner = rig.pruner_over(hooked)
    writer = WorkloadWriter(rig.store, 11, keys=150)
    writer.run(80)
    total = 0
    for _ in range(4):
        before = stored_hashes(rig.store.connection)
        logged = len(swept_events(rig.rt.log))

        report = pruner.run_cycle()

        after = stored_hashes(rig.store.connection)
        events = swept_events(rig.rt.log)[logged:]
        hashes = [bytes(h) for e in events for h in e.hashes]
        assert len(hashes) == len(set(hashes))
        assert after <= before
        assert set(hashes) == before - after
        assert all(e.count == len(e.hashes) and e.snapshot_id == report.snapshot_id for e in events)
        assert sum(e.count for e in events) == sum(p.deleted for p in report.phases.values())
        assert len({e.batch_no for e in events}) == len(events)
        assert_whole(rig, report)
        total += len(hashes)
        writer.run(25)
    assert total > 500

    # Liveness: with the writer stopped, two cycles leave no unreachable node stored.
    for _ in range(2):
        report = pruner.run_cycle()
    check = rig.check(report)
    assert check.violations == 0 and check.unreachable_stored == 0, check
