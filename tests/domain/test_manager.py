"""AtomicSnapshotManager contract tests: each runs on the SQLite log and on the in-memory log."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain.config import SnapshotManagerConfig
from domain.errors import (
    ChainStateMismatchError,
    LockContendedError,
    LockNotHeldError,
    NoSnapshotError,
    SnapshotExpiredError,
    SnapshotIntegrityError,
    SnapshotInvalidatedError,
)
from domain.manager import AtomicSnapshotManager
from domain.phases import PrunePhase
from domain.snapshot import Snapshot
from domain.validation import ValidationResult
from infrastructure.clock import ManualClock
from infrastructure.eventlog import EventsourcingLog
from infrastructure.hashing import integrity_hash
from infrastructure.transcoder import MsgpackTranscoder
from tests.conftest import MakeManager
from tests.fakes import FakeChain, events_db, logged_events, logged_topics

BR, SE, IS = PrunePhase.BUILD_REACH, PrunePhase.SWEEP_EXPIRED, PrunePhase.INCREMENTAL_SWEEP
DEFAULTS = SnapshotManagerConfig()


def by_check(results: list[ValidationResult]) -> dict[str, ValidationResult]:
    return {r.check: r for r in results}


# --- the spec's Basic Usage -----------------------------------------------------------------


def test_the_spec_basic_usage_flow_appends_past_participle_events_in_order(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    created = manager.create_snapshot(PrunePhase.BUILD_REACH)
    locked = manager.lock_snapshot(PrunePhase.SWEEP_EXPIRED)
    manager.release_snapshot(PrunePhase.SWEEP_EXPIRED)

    assert locked.snapshot_id == created.snapshot_id == 1
    assert locked.integrity_hash == created.integrity_hash
    assert logged_topics(log) == [
        "prunelog:PhaseLock.Created",  # initialize()
        "prunelog:PhaseLock.Locked",  # create_snapshot(BuildReach)
        "prunelog:Snapshot.Created",
        "prunelog:Snapshot.Validated",
        "prunelog:PhaseLock.Released",  # lock_snapshot(SweepExpired): BuildReach hands over
        "prunelog:PhaseLock.Locked",
        "prunelog:PhaseLock.Released",  # release_snapshot(SweepExpired)
    ]
    events = [e.event for e in logged_events(log)]
    assert [getattr(e, "phase", None) for e in events] == [
        None,
        "BuildReach",
        None,
        None,
        "BuildReach",
        "SweepExpired",
        "SweepExpired",
    ]
    assert not manager.lock_info().is_held


def test_a_snapshot_is_one_read_of_the_chain_with_a_hash_over_all_its_fields(
    manager: AtomicSnapshotManager, chain: FakeChain, clock: ManualClock
) -> None:
    snapshot = manager.create_snapshot("build-reach")

    assert chain.reads == 1
    assert snapshot.latest_order == chain.latest_order
    assert snapshot.chain_metadata.block_height == chain.height
    assert snapshot.chain_metadata.latest_block_hash == chain.block_hash_at(chain.height)
    assert snapshot.created_at == clock.now()
    assert snapshot.created_phase is BR
    assert snapshot.status == "validated"
    assert snapshot.retained_from_order == chain.latest_order - 100
    assert manager.current_snapshot == snapshot
    assert manager.get_snapshot(snapshot.snapshot_id) == snapshot
    stored = manager.log.get(Snapshot.create_id("default", 1), Snapshot)
    assert stored.integrity_ok(integrity_hash)
    assert snapshot.integrity_hash == integrity_hash(stored.fields_for_hash())


def test_each_new_snapshot_gets_the_next_id_and_becomes_current(
    manager: AtomicSnapshotManager, chain: FakeChain
) -> None:
    first = manager.create_snapshot(BR)
    manager.release_snapshot(BR)
    chain.append_block()
    second = manager.create_snapshot(BR)
    assert (first.snapshot_id, second.snapshot_id) == (1, 2)
    assert second.latest_order > first.latest_order
    assert manager.current_snapshot == second


def test_initialize_is_idempotent_and_a_fresh_group_has_no_current_snapshot(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    head = log.head()
    manager.initialize()
    assert log.head() == head == 1
    assert manager.current_snapshot is None


def test_locking_before_any_snapshot_raises_no_snapshot_and_appends_nothing(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    head = log.head()
    with pytest.raises(NoSnapshotError, match="create one first"):
        manager.lock_snapshot(SE)
    assert log.head() == head


def test_a_manager_of_an_uninitialized_group_says_to_call_initialize(
    log: EventsourcingLog, chain: FakeChain, clock: ManualClock
) -> None:
    manager = AtomicSnapshotManager(log, chain, clock, integrity_hash, owner="a", group="never")
    with pytest.raises(NoSnapshotError, match="initialize"):
        manager.create_snapshot(BR)
    assert log.head() == 0


def test_relocking_the_phase_already_held_appends_nothing(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    manager.create_snapshot(BR)
    head = log.head()
    manager.lock_snapshot(BR)
    assert log.head() == head


# --- release --------------------------------------------------------------------------------


def test_a_release_by_a_phase_that_does_not_hold_the_lock_appends_nothing(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    manager.create_snapshot(BR)
    head = log.head()
    with pytest.raises(LockNotHeldError, match="node-a for BuildReach"):
        manager.release_snapshot(SE)
    assert log.head() == head
    assert manager.lock_info().holds("node-a", BR)


def test_a_release_by_an_owner_that_does_not_hold_the_lock_appends_nothing(
    make_manager: MakeManager, log: EventsourcingLog
) -> None:
    holder, other = make_manager("node-a"), make_manager("node-b")
    holder.create_snapshot(BR)
    head = log.head()
    with pytest.raises(LockNotHeldError, match="node-b does not hold"):
        other.release_snapshot(BR)
    assert log.head() == head
    assert holder.lock_info().holds("node-a", BR)


def test_releasing_twice_fails_the_second_time_and_appends_nothing(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    manager.create_snapshot(BR)
    manager.release_snapshot(BR)
    head = log.head()
    with pytest.raises(LockNotHeldError, match="held by nobody"):
        manager.release_snapshot(BR)
    assert log.head() == head


# --- refusing a snapshot --------------------------------------------------------------------


def test_locking_an_expired_snapshot_raises_snapshot_expired_and_appends_nothing(
    manager: AtomicSnapshotManager, log: EventsourcingLog, clock: ManualClock
) -> None:
    manager.create_snapshot(BR)
    clock.advance(ms=DEFAULTS.max_snapshot_age_ms + 1)
    head = log.head()
    with pytest.raises(SnapshotExpiredError, match="max_snapshot_age_ms"):
        manager.lock_snapshot(SE)
    assert log.head() == head


def test_a_snapshot_exactly_max_age_old_is_still_usable(
    make_manager: MakeManager, clock: ManualClock
) -> None:
    config = SnapshotManagerConfig(lock_timeout_ms=1_000, max_snapshot_age_ms=5_000)
    manager = make_manager(config=config)
    manager.create_snapshot(BR)
    clock.advance(ms=5_000)
    assert manager.lock_snapshot(SE).snapshot_id == 1


def test_validating_an_old_snapshot_records_it_as_expired_and_locking_it_is_refused(
    manager: AtomicSnapshotManager, log: EventsourcingLog, clock: ManualClock
) -> None:
    manager.create_snapshot(BR)
    clock.advance(ms=DEFAULTS.max_snapshot_age_ms + 1)
    results = by_check(manager.validate_snapshot())
    assert not results["age"].ok
    assert results["internal_consistency"].ok and results["chain_state"].ok
    assert logged_topics(log)[-1] == "prunelog:Snapshot.Expired"
    head = log.head()
    with pytest.raises(SnapshotExpiredError):
        manager.lock_snapshot(SE)
    assert log.head() == head


def test_locking_a_snapshot_invalidated_after_a_reorg_raises_and_appends_nothing(
    manager: AtomicSnapshotManager, log: EventsourcingLog, chain: FakeChain
) -> None:
    snapshot = manager.create_snapshot(BR)
    chain.reorg(snapshot.chain_metadata.block_height)

    results = by_check(manager.validate_snapshot())
    assert isinstance(results["chain_state"], ValidationResult.Failed)
    assert f"height {snapshot.chain_metadata.block_height}" in results["chain_state"].message
    assert results["internal_consistency"].ok and results["age"].ok
    assert logged_topics(log)[-1] == "prunelog:Snapshot.Invalidated"
    assert manager.current_snapshot is not None
    assert manager.current_snapshot.status == "invalidated"

    head = log.head()
    with pytest.raises(SnapshotInvalidatedError, match="chain_state"):
        manager.lock_snapshot(SE)
    assert log.head() == head


def test_an_invalidated_snapshot_stays_invalidated_even_if_the_chain_reorgs_back(
    manager: AtomicSnapshotManager, chain: FakeChain
) -> None:
    snapshot = manager.create_snapshot(BR)
    height = snapshot.chain_metadata.block_height
    chain.reorg(height)
    manager.validate_snapshot()
    chain.reorg(height, new_hash=snapshot.chain_metadata.latest_block_hash)
    with pytest.raises(SnapshotInvalidatedError):
        manager.lock_snapshot(SE)


def test_locking_after_a_reorg_without_validating_first_raises_chain_state_mismatch(
    manager: AtomicSnapshotManager, log: EventsourcingLog, chain: FakeChain
) -> None:
    snapshot = manager.create_snapshot(BR)
    chain.append_block()
    chain.append_block()
    assert manager.lock_snapshot(SE).snapshot_id == snapshot.snapshot_id  # growth is fine
    chain.reorg(snapshot.chain_metadata.block_height - 1)
    head = log.head()
    with pytest.raises(ChainStateMismatchError, match="snapshot recorded"):
        manager.lock_snapshot(IS)
    assert log.head() == head


def test_a_snapshot_whose_block_was_orphaned_fails_the_chain_state_check(
    manager: AtomicSnapshotManager, chain: FakeChain
) -> None:
    snapshot = manager.create_snapshot(BR)
    chain.rewind(snapshot.chain_metadata.block_height - 1)
    results = by_check(manager.validate_snapshot())
    assert not results["chain_state"].ok
    assert "None" in results["chain_state"].message


# --- lock timeout and takeover --------------------------------------------------------------


def test_a_second_owner_is_refused_before_the_timeout_and_takes_over_after_it(
    make_manager: MakeManager, log: EventsourcingLog, clock: ManualClock
) -> None:
    first, second = make_manager("node-a"), make_manager("node-b")
    first.create_snapshot(BR)

    head = log.head()
    with pytest.raises(LockContendedError, match="held by node-a for BuildReach"):
        second.lock_snapshot(SE)
    clock.advance(ms=DEFAULTS.lock_timeout_ms - 1)
    with pytest.raises(LockContendedError):
        second.lock_snapshot(SE)
    with pytest.raises(LockContendedError):
        second.create_snapshot(BR)
    assert log.head() == head

    clock.advance(ms=1)
    assert second.lock_snapshot(SE).snapshot_id == 1

    lock = second.lock_info()
    assert lock.holds("node-b", SE)
    assert lock.takeovers == 1
    tail = logged_events(log)[-2:]
    assert [e.topic for e in tail] == ["prunelog:PhaseLock.Expired", "prunelog:PhaseLock.Locked"]
    expired = tail[0].event
    assert (expired.previous_owner, expired.previous_phase, expired.taken_over_by) == (
        "node-a",
        "BuildReach",
        "node-b",
    )
    with pytest.raises(LockNotHeldError):
        first.release_snapshot(BR)


def test_a_holder_that_renews_its_lock_is_not_taken_over_at_the_original_expiry(
    make_manager: MakeManager, log: EventsourcingLog, clock: ManualClock
) -> None:
    first, second = make_manager("node-a"), make_manager("node-b")
    first.create_snapshot(BR)
    clock.advance(ms=DEFAULTS.lock_timeout_ms // 2 - 1)
    head = log.head()
    assert first.renew_lock(BR) is False  # not due yet: nothing appended
    assert log.head() == head
    clock.advance(ms=1)
    assert first.renew_lock(BR) is True
    assert logged_events(log)[-1].topic == "prunelog:PhaseLock.Renewed"

    clock.advance(ms=DEFAULTS.lock_timeout_ms // 2 + 1)  # past the first expiry
    with pytest.raises(LockContendedError):
        second.lock_snapshot(SE)
    clock.advance(ms=DEFAULTS.lock_timeout_ms)
    assert second.lock_snapshot(SE).snapshot_id == 1  # silent too long: taken over


def test_only_the_holder_can_renew_and_an_expired_lock_cannot_be_renewed(
    make_manager: MakeManager, log: EventsourcingLog, clock: ManualClock
) -> None:
    first, second = make_manager("node-a"), make_manager("node-b")
    first.create_snapshot(BR)
    clock.advance(ms=DEFAULTS.lock_timeout_ms // 2)
    head = log.head()
    with pytest.raises(LockNotHeldError, match="node-b cannot renew"):
        second.renew_lock(BR)
    with pytest.raises(LockNotHeldError):
        first.renew_lock(SE)
    clock.advance(ms=DEFAULTS.lock_timeout_ms)
    with pytest.raises(LockNotHeldError, match="expired"):
        first.renew_lock(BR)
    assert log.head() == head


def test_expire_stale_lock_frees_a_lock_only_after_its_timeout(
    make_manager: MakeManager, log: EventsourcingLog, clock: ManualClock
) -> None:
    first, second = make_manager("node-a"), make_manager("node-b")
    first.create_snapshot(BR)
    head = log.head()
    assert second.expire_stale_lock() is False
    assert log.head() == head

    clock.advance(ms=DEFAULTS.lock_timeout_ms)
    assert second.expire_stale_lock() is True
    last = logged_events(log)[-1]
    assert last.topic == "prunelog:PhaseLock.Expired"
    assert last.event.taken_over_by is None
    assert not second.lock_info().is_held
    assert second.lock_snapshot(SE).snapshot_id == 1
    assert second.lock_info().takeovers == 0


def test_locks_of_different_groups_do_not_contend(make_manager: MakeManager) -> None:
    left = make_manager("node-a", group="left")
    right = make_manager("node-b", group="right")
    assert left.create_snapshot(BR).group == "left"
    assert right.create_snapshot(BR).group == "right"
    assert left.lock_info().holds("node-a", BR)
    assert right.lock_info().holds("node-b", BR)


# --- a tampered snapshot (SQLite: the row is edited on disk) --------------------------------


def tamper_with_latest_order(data_dir: Path) -> None:
    transcoder = MsgpackTranscoder(enums=[PrunePhase])
    with events_db(data_dir) as db:
        rowid, state = db.execute(
            "SELECT rowid, state FROM stored_events WHERE topic = 'prunelog:Snapshot.Created'"
        ).fetchone()
        fields = transcoder.decode(state)
        fields["latest_order"] += 1
        db.execute(
            "UPDATE stored_events SET state = ? WHERE rowid = ?", (transcoder.encode(fields), rowid)
        )


def tampered_manager(tmp_path: Path, clock: ManualClock) -> tuple[AtomicSnapshotManager, int]:
    data_dir = tmp_path / "data"
    with EventsourcingLog.open_sqlite(data_dir) as log:
        manager = AtomicSnapshotManager(log, FakeChain(), clock, integrity_hash, owner="node-a")
        manager.initialize()
        manager.create_snapshot(BR)
        manager.release_snapshot(BR)
    tamper_with_latest_order(data_dir)
    log = EventsourcingLog.open_sqlite(data_dir)
    manager = AtomicSnapshotManager(log, FakeChain(), clock, integrity_hash, owner="node-a")
    return manager, log.head()


def test_a_tampered_snapshot_fails_internal_consistency_and_cannot_be_locked(
    tmp_path: Path, clock: ManualClock
) -> None:
    manager, _ = tampered_manager(tmp_path, clock)
    assert isinstance(manager.log, EventsourcingLog)
    try:
        results = by_check(manager.validate_snapshot())
        consistency = results["internal_consistency"]
        assert isinstance(consistency, ValidationResult.Failed)
        assert "integrity hash does not match" in consistency.message
        assert results["age"].ok and results["chain_state"].ok

        head = manager.log.head()
        with pytest.raises(SnapshotIntegrityError, match="integrity hash does not match"):
            manager.lock_snapshot(SE)
        assert manager.log.head() == head
    finally:
        manager.log.close()


def test_a_tampered_snapshot_is_refused_even_before_anyone_validates_it(
    tmp_path: Path, clock: ManualClock
) -> None:
    manager, head = tampered_manager(tmp_path, clock)
    assert isinstance(manager.log, EventsourcingLog)
    try:
        with pytest.raises(SnapshotIntegrityError):
            manager.lock_snapshot(SE)
        assert manager.log.head() == head
    finally:
        manager.log.close()
