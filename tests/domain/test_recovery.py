"""ErrorRecoveryManager: retries with exponential backoff (sync and async twins), snapshot
creation with recovery, rollback, giving up, and the spec's RecoveryConfig defaults.

Each test runs on the SQLite log and on the in-memory log. Failures come from operations and
ports that really fail (`FailNTimes`, `FaultyChain`); sleeps are recorded, never slept."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

from domain.config import RecoveryConfig
from domain.cycle import PruneCycle, cycle_uuid
from domain.errors import (
    LockContendedError,
    SnapshotIntegrityError,
    TransientError,
)
from domain.manager import AtomicSnapshotManager
from domain.phases import FAILED, ROLLED_BACK, PrunePhase
from domain.recovery import ErrorRecoveryManager, Recovery, is_transient, recovery_uuid
from infrastructure.clock import ManualClock
from infrastructure.eventlog import EventsourcingLog
from infrastructure.hashing import integrity_hash
from tests.conftest import MakeManager
from tests.fakes import FailNTimes, FakeChain, Fault, FaultyChain, logged_events

BR, SE, IS = PrunePhase.BUILD_REACH, PrunePhase.SWEEP_EXPIRED, PrunePhase.INCREMENTAL_SWEEP

# base 100 ms, x2, capped at 250 ms: 100, 200, 250, 250, ...
CAPPED = RecoveryConfig(
    max_phase_retries=5, base_retry_delay_ms=100, backoff_multiplier=2.0, max_retry_delay_ms=250
)


def kinds(events: list[Any]) -> list[str]:
    return [type(e).__qualname__ for e in events]


def cycle_events(log: EventsourcingLog, cycle_no: int = 1) -> list[Any]:
    wanted = str(cycle_uuid("default", cycle_no))
    return [e.event for e in logged_events(log) if e.originator_id == wanted]


def recovery_events(log: EventsourcingLog) -> list[Any]:
    wanted = str(recovery_uuid("default"))
    return [e.event for e in logged_events(log) if e.originator_id == wanted]


def start_cycle(manager: AtomicSnapshotManager, phase: PrunePhase = BR) -> PruneCycle:
    """Snapshot + cycle, walked legally into `phase` (its predecessors completed)."""
    snap = manager.create_snapshot(BR)
    now = manager.clock.now()
    cycle = PruneCycle(manager.group, snap.cycle_no, snap.snapshot_id, now)
    for p in (BR, SE, IS):
        if p is not BR:
            manager.lock_snapshot(p)
        cycle.start_phase(p, snap.snapshot_id, now)
        if p is phase:
            break
        cycle.complete_phase(p, {}, now)
    manager.log.save(cycle)
    return cycle


def reload(manager: AtomicSnapshotManager, cycle_no: int = 1) -> PruneCycle:
    return manager.log.get(cycle_uuid(manager.group, cycle_no), PruneCycle)


# --- retries: the sync twin ------------------------------------------------------------------


def test_an_operation_that_fails_n_times_then_succeeds_records_fail_retry_resume_n_times(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    sleeps: list[float] = []
    recovery = ErrorRecoveryManager(manager, CAPPED, sleep=sleeps.append)
    start_cycle(manager, BR)
    op = FailNTimes(4, "marked")

    assert recovery.run_phase_with_recovery(BR, op.call) == "marked"

    assert op.calls == 5
    assert sleeps == [0.1, 0.2, 0.25, 0.25]  # base, base*2, then capped at max_retry_delay_ms
    events = cycle_events(log)
    assert kinds(events) == [
        "PruneCycle.Created",
        "PruneCycle.PhaseStarted",
        *["PruneCycle.PhaseFailed", "PruneCycle.RetryScheduled", "PruneCycle.PhaseResumed"] * 4,
    ]
    failed = [e for e in events if type(e).__qualname__ == "PruneCycle.PhaseFailed"]
    assert {(e.phase, e.error_type, e.message) for e in failed} == {
        ("BuildReach", "OperationalError", "database is locked")
    }
    retries = [e for e in events if type(e).__qualname__ == "PruneCycle.RetryScheduled"]
    assert [(e.phase, e.attempt, e.delay_ms) for e in retries] == [
        ("BuildReach", 2, 100),
        ("BuildReach", 3, 200),
        ("BuildReach", 4, 250),
        ("BuildReach", 5, 250),
    ]
    resumed = [e for e in events if type(e).__qualname__ == "PruneCycle.PhaseResumed"]
    assert {(e.phase, e.snapshot_id) for e in resumed} == {("BuildReach", 1)}

    # ... and the phase then completes, on the same snapshot.
    cycle = reload(manager)
    assert cycle.state == "BuildReach" and cycle.attempts["BuildReach"] == 5
    cycle.complete_phase(BR, {"visited": 1}, manager.clock.now())
    log.save(cycle)
    assert kinds(cycle_events(log))[-1] == "PruneCycle.PhaseCompleted"


def test_an_operation_that_succeeds_first_time_records_nothing_and_never_sleeps(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    sleeps: list[float] = []
    recovery = ErrorRecoveryManager(manager, CAPPED, sleep=sleeps.append)
    start_cycle(manager, SE)

    assert recovery.run_phase_with_recovery("sweep-expired", FailNTimes(0, 7).call) == 7

    assert sleeps == []
    assert kinds(cycle_events(log))[-1] == "PruneCycle.PhaseStarted"


def test_the_default_config_backs_off_one_two_four_seconds(
    manager: AtomicSnapshotManager,
) -> None:
    sleeps: list[float] = []
    recovery = ErrorRecoveryManager(manager, sleep=sleeps.append)  # RecoveryConfig()
    start_cycle(manager, BR)

    recovery.run_phase_with_recovery(BR, FailNTimes(3, None).call)

    assert sleeps == [1.0, 2.0, 4.0]


def test_the_backoff_is_capped_at_max_retry_delay_ms_with_the_default_base(
    manager: AtomicSnapshotManager,
) -> None:
    sleeps: list[float] = []
    config = RecoveryConfig(max_phase_retries=7)
    recovery = ErrorRecoveryManager(manager, config, sleep=sleeps.append)
    start_cycle(manager, BR)

    recovery.run_phase_with_recovery(BR, FailNTimes(7, None).call)

    assert sleeps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_failure_that_outlasts_the_retries_reraises_after_max_retries_plus_one_attempts(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    sleeps: list[float] = []
    config = RecoveryConfig(max_phase_retries=3, base_retry_delay_ms=100, max_retry_delay_ms=250)
    recovery = ErrorRecoveryManager(manager, config, sleep=sleeps.append)
    start_cycle(manager, SE)
    op = FailNTimes(None, None)

    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        recovery.run_phase_with_recovery(SE, op.call)

    assert op.calls == 4
    assert sleeps == [0.1, 0.2, 0.25]
    tail = kinds(cycle_events(log))[-10:]
    assert tail == [
        *["PruneCycle.PhaseFailed", "PruneCycle.RetryScheduled", "PruneCycle.PhaseResumed"] * 3,
        "PruneCycle.PhaseFailed",
    ]
    cycle = reload(manager)
    assert cycle.state == FAILED and cycle.failed_phase == "SweepExpired"


def test_a_prunelog_error_is_deterministic_and_not_retried(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    sleeps: list[float] = []
    recovery = ErrorRecoveryManager(manager, CAPPED, sleep=sleeps.append)
    start_cycle(manager, SE)

    def tampered() -> Exception:
        return SnapshotIntegrityError("snapshot 1: integrity hash does not match its fields")

    op = FailNTimes(None, None, error=tampered)

    with pytest.raises(SnapshotIntegrityError):
        recovery.run_phase_with_recovery(SE, op.call)

    assert op.calls == 1 and sleeps == []
    last = cycle_events(log)[-1]
    assert type(last).__qualname__ == "PruneCycle.PhaseFailed"
    assert last.error_type == "SnapshotIntegrityError"


def test_a_transient_error_is_retried_even_though_it_is_a_prunelog_error(
    manager: AtomicSnapshotManager,
) -> None:
    sleeps: list[float] = []
    recovery = ErrorRecoveryManager(manager, CAPPED, sleep=sleeps.append)
    start_cycle(manager, IS)

    def busy() -> Exception:
        return TransientError("store busy")

    assert recovery.run_phase_with_recovery(IS, FailNTimes(2, "ok", error=busy).call) == "ok"
    assert sleeps == [0.1, 0.2]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (OSError("disk I/O error"), True),
        (TransientError("busy"), True),
        (SnapshotIntegrityError("tampered"), False),
        (LockContendedError("held"), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_only_outside_errors_and_transient_errors_count_as_transient(
    error: BaseException, transient: bool
) -> None:
    assert is_transient(error) is transient


# --- retries: the async twin -----------------------------------------------------------------


def test_the_async_twin_records_the_same_events_and_the_same_backoff(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    sleeps: list[float] = []

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    recovery = ErrorRecoveryManager(
        manager, CAPPED, sleep=lambda s: pytest.fail("sync sleep used"), async_sleep=record_sleep
    )
    start_cycle(manager, SE)
    op = FailNTimes(3, "swept")

    result = asyncio.run(recovery.execute_phase_with_recovery(SE, op.acall))

    assert result == "swept"
    assert op.calls == 4
    assert sleeps == [0.1, 0.2, 0.25]
    events = cycle_events(log)
    assert kinds(events)[-9:] == [
        *["PruneCycle.PhaseFailed", "PruneCycle.RetryScheduled", "PruneCycle.PhaseResumed"] * 3
    ]
    retries = [e for e in events if type(e).__qualname__ == "PruneCycle.RetryScheduled"]
    assert [(e.phase, e.attempt, e.delay_ms) for e in retries] == [
        ("SweepExpired", 2, 100),
        ("SweepExpired", 3, 200),
        ("SweepExpired", 4, 250),
    ]
    failed = [e for e in events if type(e).__qualname__ == "PruneCycle.PhaseFailed"]
    assert {(e.error_type, e.message) for e in failed} == {
        ("OperationalError", "database is locked")
    }
    assert reload(manager).state == "SweepExpired"


def test_the_async_twin_reraises_when_the_retries_run_out(
    manager: AtomicSnapshotManager,
) -> None:
    sleeps: list[float] = []

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    config = RecoveryConfig(max_phase_retries=2, base_retry_delay_ms=100, max_retry_delay_ms=250)
    recovery = ErrorRecoveryManager(manager, config, sleep=lambda s: None, async_sleep=record_sleep)
    start_cycle(manager, BR)
    op = FailNTimes(None, None)

    with pytest.raises(sqlite3.OperationalError):
        asyncio.run(recovery.execute_phase_with_recovery(BR, op.acall))

    assert op.calls == 3 and sleeps == [0.1, 0.2]
    assert reload(manager).state == FAILED


# --- snapshot creation with recovery ---------------------------------------------------------


def faulty_manager(
    log: EventsourcingLog, clock: ManualClock, fault: Fault, owner: str = "node-a"
) -> AtomicSnapshotManager:
    manager = AtomicSnapshotManager(
        log, FaultyChain(FakeChain(), fault), clock, integrity_hash, owner=owner
    )
    manager.initialize()
    return manager


def test_snapshot_creation_is_retried_and_every_failure_is_a_recovery_event(
    log: EventsourcingLog, clock: ManualClock
) -> None:
    manager = faulty_manager(log, clock, Fault(times=2))
    sleeps: list[float] = []
    recovery = ErrorRecoveryManager(manager, CAPPED, sleep=sleeps.append)

    snap = recovery.create_snapshot_with_recovery()

    assert snap.snapshot_id == 1 and snap.created_phase is BR
    assert sleeps == [0.1, 0.2]
    events = recovery_events(log)
    assert kinds(events) == [
        "Recovery.Created",
        "Recovery.SnapshotCreationFailed",
        "Recovery.SnapshotCreationFailed",
    ]
    assert {(e.error_type, e.message) for e in events[1:]} == {
        ("OperationalError", "database is locked")
    }
    assert manager.lock_info().holds("node-a", BR)


def test_snapshot_creation_that_keeps_failing_reraises_after_max_retries_plus_one(
    log: EventsourcingLog, clock: ManualClock
) -> None:
    fault = Fault(times=None)
    manager = faulty_manager(log, clock, fault)
    recovery = ErrorRecoveryManager(manager, RecoveryConfig(), sleep=lambda s: None)

    with pytest.raises(sqlite3.OperationalError):
        recovery.create_snapshot_with_recovery()

    assert fault.calls == 4
    assert kinds(recovery_events(log)).count("Recovery.SnapshotCreationFailed") == 4
    assert manager.current_snapshot is None


def test_a_contended_lock_is_not_retried_by_snapshot_creation(
    make_manager: MakeManager, log: EventsourcingLog
) -> None:
    make_manager("node-b").create_snapshot(BR)
    sleeps: list[float] = []
    recovery = ErrorRecoveryManager(make_manager("node-a"), CAPPED, sleep=sleeps.append)

    with pytest.raises(LockContendedError):
        recovery.create_snapshot_with_recovery()

    assert sleeps == []


# --- rollback, giving up, success ------------------------------------------------------------


def test_roll_back_invalidates_the_snapshot_and_restarts_the_cycle_on_a_fresh_one(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    recovery = ErrorRecoveryManager(manager, CAPPED, sleep=lambda s: None)
    start_cycle(manager, SE)
    old = manager.get_snapshot(1)
    head = log.head()

    fresh = recovery.roll_back(old, OSError("disk I/O error"))

    assert (fresh.snapshot_id, fresh.cycle_no) == (2, 1)
    new = [(e.topic.removeprefix("prunelog:"), e.event) for e in logged_events(log)[head:]]
    names = [t for t, _ in new]
    assert names == [
        "Recovery.Created",
        "Recovery.Started",
        "Snapshot.Invalidated",
        "PhaseLock.Released",
        "PhaseLock.Locked",
        "Snapshot.Created",
        "Snapshot.Validated",
        "PruneCycle.PhaseFailed",
        "PruneCycle.RolledBack",
        "Recovery.SnapshotRecreated",
    ]
    by = dict(new)
    assert (by["Recovery.Started"].phase, by["Recovery.Started"].error_type) == (
        "SweepExpired",
        "OSError",
    )
    assert "disk I/O error" in by["Snapshot.Invalidated"].reason
    assert by["Snapshot.Created"].cycle_no == 1
    assert by["PruneCycle.RolledBack"].new_snapshot_id == 2
    assert by["PruneCycle.RolledBack"].phase == "SweepExpired"
    recreated = by["Recovery.SnapshotRecreated"]
    assert (recreated.cycle_no, recreated.old_snapshot_id, recreated.new_snapshot_id) == (1, 1, 2)

    cycle = reload(manager)
    assert cycle.state == ROLLED_BACK and cycle.snapshot_id == 2 and cycle.snapshots_used == [1, 2]
    assert manager.lock_info().holds("node-a", BR)
    assert recovery.ledger().active_cycle == 1
    assert manager.get_snapshot(1).status == "invalidated"


def test_give_up_stops_the_cycle_in_failed_and_records_exhaustion(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    recovery = ErrorRecoveryManager(manager, CAPPED, sleep=lambda s: None)
    start_cycle(manager, SE)

    recovery.give_up(manager.get_snapshot(1), OSError("disk full"))

    assert kinds(cycle_events(log))[-2:] == [
        "PruneCycle.PhaseFailed",
        "PruneCycle.RecoveryExhausted",
    ]
    exhausted = cycle_events(log)[-1]
    assert exhausted.phase == "SweepExpired" and "OSError: disk full" in exhausted.reason
    ledger = recovery_events(log)[-1]
    assert type(ledger).__qualname__ == "Recovery.Exhausted"
    assert (ledger.cycle_no, ledger.phase) == (1, "SweepExpired")
    cycle = reload(manager)
    assert cycle.finished and cycle.state == FAILED


def test_success_is_recorded_only_for_a_cycle_that_was_recovering(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    recovery = ErrorRecoveryManager(manager, CAPPED, sleep=lambda s: None)
    start_cycle(manager, SE)
    recovery.succeeded(1)
    assert recovery_events(log) == []

    recovery.roll_back(manager.get_snapshot(1), OSError("x"))
    recovery.succeeded(1)
    recovery.succeeded(1)

    assert kinds(recovery_events(log))[-1] == "Recovery.Succeeded"
    assert kinds(recovery_events(log)).count("Recovery.Succeeded") == 1
    assert recovery.ledger().active_cycle is None
    assert isinstance(log.get(recovery_uuid("default"), Recovery), Recovery)


# --- configuration ---------------------------------------------------------------------------


def test_recovery_config_defaults_equal_the_spec() -> None:
    assert RecoveryConfig() == RecoveryConfig(
        max_phase_retries=3,
        base_retry_delay_ms=1000,  # 1 second
        max_retry_delay_ms=30_000,  # 30 seconds
        backoff_multiplier=2.0,
        enable_snapshot_recovery=True,
        snapshot_recovery_timeout_secs=300,  # 5 minutes
        enable_phase_rollback=True,
        min_healthy_cycles=3,
    )


def test_a_recovery_manager_without_a_config_uses_the_spec_defaults(
    manager: AtomicSnapshotManager,
) -> None:
    assert ErrorRecoveryManager(manager, sleep=lambda s: None).config == RecoveryConfig()
