"""HealthMonitor: health as a fold over the event log, the spec's four alerts, and the rule
that health returns to healthy only after `min_healthy_cycles` consecutive completed cycles.

The events come from the real aggregates and services (on the SQLite and the in-memory log),
with failures injected through ports that really fail."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from domain.config import RecoveryConfig, SnapshotManagerConfig
from domain.cycle import PruneCycle
from domain.health import HealthMonitor, HealthReport, HealthStatus, health_from
from domain.manager import AtomicSnapshotManager
from domain.phases import PrunePhase
from domain.recovery import ErrorRecoveryManager
from domain.validator import SnapshotValidator
from infrastructure.clock import ManualClock
from infrastructure.eventlog import STATE_FILE, EventsourcingLog
from infrastructure.hashing import integrity_hash
from tests.conftest import MakeManager
from tests.fakes import FakeChain, Fault, FaultyChain, open_rig, write_chain

BR, SE, IS = PrunePhase.BUILD_REACH, PrunePhase.SWEEP_EXPIRED, PrunePhase.INCREMENTAL_SWEEP
HEALTHY, DEGRADED, UNHEALTHY = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY
ALERTS = {"snapshot_creation_failures", "lock_timeouts", "validation_failure", "recovery_exhausted"}
NO_SLEEP = RecoveryConfig(base_retry_delay_ms=1, max_retry_delay_ms=1)


def health(log: EventsourcingLog, config: RecoveryConfig | None = None) -> HealthReport:
    return health_from(log.events(), config)


def active(report: HealthReport) -> set[str]:
    return {a.name for a in report.active_alerts}


def alert(report: HealthReport, name: str) -> str:
    return next(a.message for a in report.alerts if a.name == name)


def clean_cycle(manager: AtomicSnapshotManager) -> int:
    """A whole cycle, walked legally to Completed (no store: the fold only reads events)."""
    snap = manager.create_snapshot(BR)
    now = manager.clock.now()
    cycle = PruneCycle(manager.group, snap.cycle_no, snap.snapshot_id, now)
    for phase in (BR, SE, IS):
        cycle.start_phase(phase, snap.snapshot_id, now)
        cycle.complete_phase(phase, {}, now)
    cycle.complete(now)
    manager.log.save(cycle)
    manager.release_snapshot(BR)
    return snap.cycle_no


def exhausted_cycle(manager: AtomicSnapshotManager, phase: PrunePhase = SE) -> int:
    """A cycle that fails in `phase` and gives up, as the pruner does when recovery runs out."""
    recovery = ErrorRecoveryManager(manager, NO_SLEEP, sleep=lambda s: None)
    snap = manager.create_snapshot(BR)
    now = manager.clock.now()
    cycle = PruneCycle(manager.group, snap.cycle_no, snap.snapshot_id, now)
    for p in (BR, SE, IS):
        cycle.start_phase(p, snap.snapshot_id, now)
        if p is phase:
            break
        cycle.complete_phase(p, {}, now)
    manager.log.save(cycle)
    recovery.give_up(snap, sqlite3.OperationalError("disk I/O error"))
    manager.release_snapshot(BR)
    return snap.cycle_no


# --- the fold's starting point ---------------------------------------------------------------


def test_an_empty_log_is_healthy_with_the_four_alerts_all_quiet() -> None:
    report = health_from([])

    assert report.overall == HEALTHY
    assert {a.name for a in report.alerts} == ALERTS
    assert report.active_alerts == []
    assert set(report.phases) == {"BuildReach", "SweepExpired", "IncrementalSweep"}
    assert report.as_dict()["active_alerts"] == []


def test_clean_cycles_keep_health_healthy(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    clean_cycle(manager)
    clean_cycle(manager)

    report = health(log)
    assert report.overall == HEALTHY and report.active_alerts == []
    assert report.successful_cycles_since_trouble == 2
    assert all(p.status == HEALTHY and p.last_success is not None for p in report.phases.values())


# --- alert: snapshot creation failures (> 3 in a row) ----------------------------------------


def failing_chain_manager(
    log: EventsourcingLog, clock: ManualClock, fault: Fault
) -> tuple[AtomicSnapshotManager, FaultyChain]:
    chain = FaultyChain(FakeChain(), fault)
    manager = AtomicSnapshotManager(log, chain, clock, integrity_hash, owner="node-a")
    manager.initialize()
    return manager, chain


def test_more_than_three_consecutive_snapshot_creation_failures_alert_and_are_unhealthy(
    log: EventsourcingLog, clock: ManualClock
) -> None:
    manager, _ = failing_chain_manager(log, clock, Fault(times=None))
    recovery = ErrorRecoveryManager(manager, NO_SLEEP, sleep=lambda s: None)  # 4 attempts

    with pytest.raises(sqlite3.OperationalError):
        recovery.create_snapshot_with_recovery()

    report = health(log)
    assert active(report) == {"snapshot_creation_failures"}
    assert report.overall == UNHEALTHY
    assert alert(report, "snapshot_creation_failures") == (
        "4 consecutive snapshot creation failures (alert above 3)"
    )


def test_three_consecutive_snapshot_creation_failures_degrade_but_do_not_alert(
    log: EventsourcingLog, clock: ManualClock
) -> None:
    manager, _ = failing_chain_manager(log, clock, Fault(times=None))
    config = RecoveryConfig(max_phase_retries=2, base_retry_delay_ms=1, max_retry_delay_ms=1)
    recovery = ErrorRecoveryManager(manager, config, sleep=lambda s: None)  # 3 attempts

    with pytest.raises(sqlite3.OperationalError):
        recovery.create_snapshot_with_recovery()
    report = health(log, config)
    assert active(report) == set() and report.overall == DEGRADED

    with pytest.raises(sqlite3.OperationalError):  # three more in a row: six
        recovery.create_snapshot_with_recovery()
    report = health(log, config)
    assert active(report) == {"snapshot_creation_failures"} and report.overall == UNHEALTHY


def test_a_created_snapshot_ends_the_run_of_creation_failures(
    log: EventsourcingLog, clock: ManualClock
) -> None:
    manager, chain = failing_chain_manager(log, clock, Fault(times=3))
    recovery = ErrorRecoveryManager(manager, NO_SLEEP, sleep=lambda s: None)

    recovery.create_snapshot_with_recovery()  # three failures, then created
    manager.release_snapshot(BR)
    chain.fault = Fault(times=3)
    recovery.create_snapshot_with_recovery()  # three more, then created again

    report = health(log)
    assert "snapshot_creation_failures" not in active(report)
    assert report.overall == DEGRADED  # troubled, but never above the threshold


def test_a_chain_that_raises_during_run_cycle_alerts_and_recovers_once_it_answers(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    write_chain(data / STATE_FILE, 60)
    rig = open_rig(data)
    try:
        rig.chain.fault = Fault(times=None)
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            rig.pruner.run_cycle()
        report = health_from(rig.events(), rig.recovery.config)
        assert "snapshot_creation_failures" in active(report)
        assert report.overall == UNHEALTHY

        rig.chain.fault = None
        statuses = []
        for _ in range(rig.recovery.config.min_healthy_cycles):
            rig.pruner.run_cycle()
            statuses.append(health_from(rig.events(), rig.recovery.config).overall)
        assert statuses == [DEGRADED, DEGRADED, HEALTHY]
        assert health_from(rig.events()).active_alerts == []
    finally:
        rig.close()


# --- alert: lock timeouts (3 within an hour) -------------------------------------------------


def take_over_three_times(make_manager: MakeManager, clock: ManualClock, timeout_ms: int) -> None:
    config = SnapshotManagerConfig(lock_timeout_ms=timeout_ms)
    a, b = make_manager("node-a", config), make_manager("node-b", config)
    a.create_snapshot(BR)
    for taker in (b, a, b):  # each holder stalls past its timeout; the other takes over
        clock.advance(ms=timeout_ms + 1)
        taker.create_snapshot(BR)


def test_three_lock_takeovers_within_an_hour_raise_the_lock_timeouts_alert(
    make_manager: MakeManager, clock: ManualClock, log: EventsourcingLog
) -> None:
    take_over_three_times(make_manager, clock, timeout_ms=10 * 60 * 1000)

    report = health(log)
    assert active(report) == {"lock_timeouts"}
    assert report.overall == DEGRADED
    assert alert(report, "lock_timeouts").startswith("3 lock timeouts within 1:00:00")


def test_lock_takeovers_spread_over_more_than_an_hour_do_not_alert(
    make_manager: MakeManager, clock: ManualClock, log: EventsourcingLog
) -> None:
    take_over_three_times(make_manager, clock, timeout_ms=30 * 60 * 1000)  # 31, 62, 93 min

    report = health(log)
    assert "lock_timeouts" not in active(report)
    assert alert(report, "lock_timeouts").startswith("2 lock timeouts")


def test_two_lock_takeovers_within_an_hour_do_not_alert(
    make_manager: MakeManager, clock: ManualClock, log: EventsourcingLog
) -> None:
    config = SnapshotManagerConfig(lock_timeout_ms=60_000)
    a, b = make_manager("node-a", config), make_manager("node-b", config)
    a.create_snapshot(BR)
    clock.advance(ms=60_001)
    b.create_snapshot(BR)
    clock.advance(ms=60_001)
    a.create_snapshot(BR)

    assert "lock_timeouts" not in active(health(log))


def test_a_monitor_with_a_custom_window_counts_only_takeovers_inside_it(
    make_manager: MakeManager, clock: ManualClock, log: EventsourcingLog
) -> None:
    take_over_three_times(make_manager, clock, timeout_ms=10 * 60 * 1000)

    monitor = HealthMonitor(lock_timeout_window=timedelta(minutes=15))
    report = monitor.apply_all(log.events()).report()
    assert "lock_timeouts" not in active(report)


# --- alert: any validation failure -----------------------------------------------------------


def test_any_failed_check_in_a_recorded_validation_raises_the_validation_failure_alert(
    manager: AtomicSnapshotManager, chain: FakeChain, log: EventsourcingLog
) -> None:
    clean_cycle(manager)
    recovery = ErrorRecoveryManager(manager, NO_SLEEP, sleep=lambda s: None)
    validator = SnapshotValidator(manager, recovery, history=log)
    assert validator.run_comprehensive_validation().passed
    assert health(log).active_alerts == []

    chain.reorg(chain.height)
    assert not validator.run_comprehensive_validation().passed

    report = health(log)
    assert active(report) == {"validation_failure"}
    assert report.overall == DEGRADED
    assert alert(report, "validation_failure").startswith("chain_state: ChainStateMismatchError")


def test_an_invalidated_snapshot_raises_the_validation_failure_alert(
    manager: AtomicSnapshotManager, chain: FakeChain, log: EventsourcingLog
) -> None:
    manager.create_snapshot(BR)
    chain.reorg(chain.height)

    manager.validate_snapshot()

    report = health(log)
    assert active(report) == {"validation_failure"}
    assert "chain_state" in alert(report, "validation_failure")


def test_the_validation_failure_alert_clears_after_min_healthy_cycles(
    manager: AtomicSnapshotManager, chain: FakeChain, log: EventsourcingLog
) -> None:
    manager.create_snapshot(BR)
    chain.reorg(chain.height)
    manager.validate_snapshot()
    manager.release_snapshot(BR)

    clean_cycle(manager)
    clean_cycle(manager)
    assert active(health(log)) == {"validation_failure"}
    clean_cycle(manager)
    assert health(log).active_alerts == [] and health(log).overall == HEALTHY


# --- alert: recovery exhausted, and the way back to healthy ----------------------------------


def test_recovery_exhaustion_raises_its_alert_and_makes_health_unhealthy(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    clean_cycle(manager)
    exhausted_cycle(manager, SE)

    report = health(log)
    assert active(report) == {"recovery_exhausted"}
    assert report.overall == UNHEALTHY
    assert report.phases["SweepExpired"].status == UNHEALTHY
    assert report.phases["BuildReach"].status == HEALTHY
    assert "OperationalError: disk I/O error" in alert(report, "recovery_exhausted")
    assert report.successful_cycles_since_trouble == 0


@pytest.mark.parametrize("needed", [1, 2, 3, 5])
def test_health_returns_to_healthy_only_after_min_healthy_cycles_completed_cycles(
    manager: AtomicSnapshotManager, log: EventsourcingLog, needed: int
) -> None:
    config = RecoveryConfig(min_healthy_cycles=needed)
    exhausted_cycle(manager, SE)

    seen = []
    for _ in range(needed):
        assert health(log, config).overall == UNHEALTHY
        clean_cycle(manager)
        seen.append(health(log, config).overall)

    assert seen == [UNHEALTHY] * (needed - 1) + [HEALTHY]
    assert health(log, config).active_alerts == []


def test_a_failure_during_the_healthy_streak_starts_the_count_again(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    exhausted_cycle(manager, SE)
    clean_cycle(manager)
    clean_cycle(manager)
    exhausted_cycle(manager, BR)
    clean_cycle(manager)
    clean_cycle(manager)

    report = health(log)
    assert report.overall == UNHEALTHY and report.successful_cycles_since_trouble == 2
    clean_cycle(manager)
    assert health(log).overall == HEALTHY


def test_a_phase_failure_that_was_retried_degrades_until_min_healthy_cycles(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    snap = manager.create_snapshot(BR)
    now = manager.clock.now()
    cycle = PruneCycle(manager.group, snap.cycle_no, snap.snapshot_id, now)
    cycle.start_phase(BR, snap.snapshot_id, now)
    cycle.fail_phase(BR, "OperationalError", "database is locked", now)
    cycle.schedule_retry(2, 100, now)
    cycle.resume_phase(BR, snap.snapshot_id, now)
    for phase in (BR, SE, IS):
        if phase is not BR:
            cycle.start_phase(phase, snap.snapshot_id, now)
        cycle.complete_phase(phase, {}, now)
    cycle.complete(now)
    log.save(cycle)
    manager.release_snapshot(BR)

    report = health(log)
    assert report.overall == DEGRADED and report.active_alerts == []
    assert report.phases["BuildReach"].status == HEALTHY  # it completed after the retry
    assert report.phases["BuildReach"].last_error == "OperationalError: database is locked"
    clean_cycle(manager)
    assert health(log).overall == DEGRADED
    clean_cycle(manager)
    assert health(log).overall == HEALTHY


def test_a_phase_is_unhealthy_once_it_failed_more_than_max_phase_retries_times(
    manager: AtomicSnapshotManager, log: EventsourcingLog
) -> None:
    snap = manager.create_snapshot(BR)
    now = manager.clock.now()
    cycle = PruneCycle(manager.group, snap.cycle_no, snap.snapshot_id, now)
    cycle.start_phase(BR, snap.snapshot_id, now)
    statuses = []
    for attempt in range(2, 6):
        cycle.fail_phase(BR, "OSError", "disk I/O error", now)
        log.save(cycle)
        statuses.append(health(log).phases["BuildReach"].status)
        cycle.schedule_retry(attempt, 100, now)
        cycle.resume_phase(BR, snap.snapshot_id, now)

    assert statuses == [DEGRADED, DEGRADED, DEGRADED, UNHEALTHY]  # the 4th failure is > 3
    assert health(log).phases["BuildReach"].consecutive_failures == 4
