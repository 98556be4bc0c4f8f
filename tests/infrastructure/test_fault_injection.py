"""Whole prune cycles on a real SQLite store with faults injected through the real ports:
transient errors retried inside a phase, permanent errors that exhaust recovery, snapshot
faults (tampered event row, corrupted reach set, chain reorg) detected and recovered by a
rollback to BuildReach on a fresh snapshot, and health returning only after
`min_healthy_cycles` clean cycles. No reachable node is ever lost (`check_store`)."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from domain.config import RecoveryConfig
from domain.cycle import PruneCycle, cycle_uuid
from domain.errors import LockContendedError, RecoveryExhaustedError
from domain.health import HealthStatus, health_from
from domain.manager import AtomicSnapshotManager
from domain.phases import FAILED, PrunePhase
from domain.pruning import CycleReport
from domain.snapshot import snapshot_uuid
from domain.validation import ValidationResult
from domain.validator import SnapshotValidator, quick_health_check
from infrastructure.audit_checks import check_store
from infrastructure.eventlog import STATE_FILE
from infrastructure.state_store import SqliteStateStore
from tests.fakes import (
    FAST_RECOVERY,
    SMALL_PRUNE,
    Fault,
    PrunerRig,
    open_rig,
    stored_hashes,
    write_chain,
)

TXS = 150
LOCKED = ("OperationalError", "database is locked")


@pytest.fixture(scope="module")
def chain_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded chain, written once per module; every test prunes its own copy."""
    path = tmp_path_factory.mktemp("chain") / STATE_FILE
    write_chain(path, TXS)
    return path


def copy_chain(template: Path, data_dir: Path) -> Path:
    data_dir.mkdir(parents=True)
    shutil.copyfile(template, data_dir / STATE_FILE)
    return data_dir


@pytest.fixture
def data_dir(tmp_path: Path, chain_template: Path) -> Path:
    return copy_chain(chain_template, tmp_path / "data")


@pytest.fixture
def rig(data_dir: Path) -> Iterator[PrunerRig]:
    opened = open_rig(data_dir)
    try:
        yield opened
    finally:
        opened.close()


# --- reading the log -------------------------------------------------------------------------


def kind(e: Any) -> str:
    return type(e).__qualname__


def kinds(events: list[Any]) -> list[str]:
    return [kind(e) for e in events]


def of(events: list[Any], name: str) -> list[Any]:
    return [e for e in events if kind(e) == name]


def cycle_events(rig: PrunerRig, cycle_no: int) -> list[Any]:
    wanted = cycle_uuid("default", cycle_no)
    return [e for e in rig.events() if e.originator_id == wanted]


def cycle(rig: PrunerRig, cycle_no: int) -> PruneCycle:
    return rig.rt.log.get(cycle_uuid("default", cycle_no), PruneCycle)


def position(events: list[Any], name: str, **fields: Any) -> int:
    """Index of the first event of kind `name` whose attributes equal `fields`."""
    for i, e in enumerate(events):
        if kind(e) == name and all(getattr(e, k) == v for k, v in fields.items()):
            return i
    raise AssertionError(f"no {name} with {fields} in {kinds(events)}")


def assert_no_reachable_node_lost(rig: PrunerRig, report: CycleReport) -> None:
    since = max(0, report.latest_order - rig.pruner.config.protection_orders)
    with SqliteStateStore.open(rig.data_dir / STATE_FILE) as store:
        checked = check_store(store, since)
    assert checked.roots_checked > 0
    assert (checked.missing, checked.corrupt) == (0, 0), checked


def health(rig: PrunerRig) -> HealthStatus:
    return health_from(rig.events(), rig.recovery.config).overall


# --- transient faults: retried inside the phase ----------------------------------------------


def test_a_lookup_that_fails_twice_is_retried_inside_build_reach_and_the_cycle_completes(
    rig: PrunerRig,
) -> None:
    rig.nodes.fail("ids_of", Fault(times=2))

    report = rig.pruner.run_cycle()

    assert rig.sleeps == [0.1, 0.2]
    events = cycle_events(rig, 1)
    assert kinds(events)[:9] == [
        "PruneCycle.Created",
        "PruneCycle.PhaseStarted",
        *["PruneCycle.PhaseFailed", "PruneCycle.RetryScheduled", "PruneCycle.PhaseResumed"] * 2,
        "PruneCycle.PhaseCompleted",
    ]
    assert {(e.phase, e.error_type, e.message) for e in of(events, "PruneCycle.PhaseFailed")} == {
        ("BuildReach", *LOCKED)
    }
    retries = of(events, "PruneCycle.RetryScheduled")
    assert [(e.attempt, e.delay_ms) for e in retries] == [(2, 100), (3, 200)]
    assert kind(events[-1]) == "PruneCycle.Completed"
    assert of(events, "PruneCycle.RolledBack") == []
    assert report.snapshot_id == 1 and report.phases["SweepExpired"].deleted > 0
    assert_no_reachable_node_lost(rig, report)


def test_a_delete_that_fails_three_times_is_retried_and_the_sweep_finishes_its_work(
    data_dir: Path, tmp_path: Path, chain_template: Path
) -> None:
    clean_dir = copy_chain(chain_template, tmp_path / "clean")
    clean = open_rig(clean_dir)
    faulty = open_rig(data_dir)
    try:
        clean.pruner.run_cycle()
        faulty.nodes.fail("delete_guarded", Fault(times=3, after=2))

        report = faulty.pruner.run_cycle()

        assert faulty.sleeps == [0.1, 0.2, 0.25]
        events = cycle_events(faulty, 1)
        assert [e.phase for e in of(events, "PruneCycle.PhaseFailed")] == ["SweepExpired"] * 3
        assert kind(events[-1]) == "PruneCycle.Completed"
        assert of(events, "PruneCycle.RolledBack") == []
        # The retried sweep deletes exactly what a sweep without faults deletes.
        with (
            closing(sqlite3.connect(clean_dir / STATE_FILE)) as a,
            closing(sqlite3.connect(data_dir / STATE_FILE)) as b,
        ):
            assert stored_hashes(a) == stored_hashes(b)
        assert_no_reachable_node_lost(faulty, report)
    finally:
        clean.close()
        faulty.close()


# --- a permanent fault: recovery is exhausted, nothing more is deleted -----------------------


def test_a_sweep_whose_deletes_keep_failing_exhausts_recovery_and_deletes_nothing_more(
    rig: PrunerRig,
) -> None:
    at_failure: list[int] = []
    fault = rig.nodes.fail(
        "delete_guarded",
        Fault(times=None, after=2, on_raise=lambda: at_failure.append(rig.node_count())),
    )
    before = rig.node_count()

    with pytest.raises(RecoveryExhaustedError, match="cycle 1 stopped in Failed"):
        rig.pruner.run_cycle()

    # Two batches went through before the fault; after it, not one node more was deleted.
    assert before > at_failure[0] == rig.node_count()
    assert set(at_failure) == {at_failure[0]}
    assert rig.nodes.calls["sweep_stale"] == 0  # IncrementalSweep never ran
    # Phase retries, then (rollback is on) fresh snapshots, each retried again, then give up.
    retries = FAST_RECOVERY.max_phase_retries
    assert fault.raised == (retries + 1) ** 2
    c = cycle(rig, 1)
    assert c.finished and c.state == FAILED and c.failed_phase == "SweepExpired"
    events = rig.events()
    exhausted = of(events, "PruneCycle.RecoveryExhausted")
    assert [(e.phase, e.reason) for e in exhausted] == [
        ("SweepExpired", "OperationalError: database is locked")
    ]
    ledger = of(events, "Recovery.Exhausted")
    assert [(e.cycle_no, e.reason) for e in ledger] == [(1, "OperationalError: database is locked")]
    assert of(events, "PruneCycle.Completed") == [] and of(events, "Recovery.Succeeded") == []
    # The lock is released, so the next cycle (or another node) can start.
    assert not rig.rt.manager.lock_info().is_held

    report = health_from(events, rig.recovery.config)
    assert report.overall == HealthStatus.UNHEALTHY
    assert "recovery_exhausted" in [a.name for a in report.active_alerts]
    assert report.phases["SweepExpired"].status == HealthStatus.UNHEALTHY


def test_after_exhaustion_health_returns_only_after_min_healthy_cycles_clean_cycles(
    rig: PrunerRig,
) -> None:
    rig.nodes.fail("delete_guarded", Fault(times=None))
    with pytest.raises(RecoveryExhaustedError):
        rig.pruner.run_cycle()
    rig.nodes.faults.clear()
    needed = rig.recovery.config.min_healthy_cycles
    assert needed == 3

    seen: list[HealthStatus] = []
    for _ in range(needed):
        assert health(rig) != HealthStatus.HEALTHY
        report = rig.pruner.run_cycle()
        assert kind(cycle_events(rig, report.cycle_no)[-1]) == "PruneCycle.Completed"
        seen.append(health(rig))

    assert seen == [HealthStatus.UNHEALTHY, HealthStatus.UNHEALTHY, HealthStatus.HEALTHY]
    final = health_from(rig.events(), rig.recovery.config)
    assert final.active_alerts == []
    assert final.successful_cycles_since_trouble == needed
    assert quick_health_check(rig.rt.log, rig.recovery.config) == ValidationResult.Passed(
        "health", "system healthy"
    )
    assert_no_reachable_node_lost(rig, report)


def test_the_recovery_ledger_names_the_phase_that_failed_not_the_failed_state(
    rig: PrunerRig,
) -> None:
    """Recovery.Started and Recovery.Exhausted say which phase broke (here SweepExpired)."""
    rig.nodes.fail("delete_guarded", Fault(times=None))
    with pytest.raises(RecoveryExhaustedError):
        rig.pruner.run_cycle()

    events = rig.events()
    assert {e.phase for e in of(events, "Recovery.Started")} == {"SweepExpired"}
    assert [e.phase for e in of(events, "Recovery.Exhausted")] == ["SweepExpired"]


def test_a_build_reach_that_keeps_failing_exhausts_without_rolling_back(
    rig: PrunerRig,
) -> None:
    """Phase rollback is for sweeps that keep failing: BuildReach has nothing to roll back
    to, so its retries are the whole recovery and the cycle stops on its first snapshot."""
    fault = rig.nodes.fail("ids_of", Fault(times=None))
    before = rig.node_count()

    with pytest.raises(RecoveryExhaustedError):
        rig.pruner.run_cycle()

    events = rig.events()
    assert of(events, "PruneCycle.RolledBack") == []
    assert of(events, "Snapshot.Invalidated") == []
    assert fault.raised == rig.recovery.config.max_phase_retries + 1
    assert [e.phase for e in of(events, "PruneCycle.RecoveryExhausted")] == ["BuildReach"]
    assert rig.node_count() == before


def test_a_lost_lock_stops_the_cycle_without_retries_or_rollback(rig: PrunerRig) -> None:
    manager = rig.rt.manager

    def steal() -> None:  # another node takes the lock (its holder timed out)
        rig.clock.advance(ms=manager.config.lock_timeout_ms + 1)
        thief = AtomicSnapshotManager(
            manager.log, manager.chain, rig.clock, manager.hasher, owner="node-b"
        )
        thief.lock_snapshot(PrunePhase.SWEEP_EXPIRED)

    rig.nodes.before_first("expired_roots", steal)
    before = rig.node_count()

    # The live new holder owns the cycle now: the pruner that lost the lock stops and leaves
    # it alone (no PhaseFailed or RecoveryExhausted of its own in that cycle) and waits.
    with pytest.raises(LockContendedError, match="node-b"):
        rig.pruner.run_cycle()

    assert rig.node_count() == before
    assert rig.sleeps == []
    assert of(rig.events(), "PruneCycle.RolledBack") == []
    assert of(rig.events(), "PruneCycle.RecoveryExhausted") == []
    assert manager.lock_info().owner == "node-b"


# --- snapshot faults: detected, recreated, completed -----------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def reorg_at_snapshot(rig: PrunerRig) -> None:
    snap = rig.rt.manager.current_snapshot
    assert snap is not None
    rig.reorg(snap.chain_metadata.block_height)


Tamper = Callable[[PrunerRig, Path], None]
SNAPSHOT_FAULTS: dict[str, tuple[Tamper, str]] = {
    "tampered-snapshot-row": (lambda rig, _: rig.tamper_snapshot(1), "SnapshotIntegrityError"),
    "reach-set-truncated": (lambda _, path: truncate(path), "ReachSetCorruptError"),
    "reach-set-altered": (lambda _, path: flip_a_byte(path), "ReachSetCorruptError"),
    "chain-reorg": (lambda rig, _: reorg_at_snapshot(rig), "ChainStateMismatchError"),
}


@pytest.mark.parametrize("fault", list(SNAPSHOT_FAULTS))
def test_a_snapshot_fault_after_build_reach_is_detected_recreated_and_the_cycle_completes(
    rig: PrunerRig, fault: str
) -> None:
    tamper, error_type = SNAPSHOT_FAULTS[fault]
    # One-shot: right after BuildReach persisted snapshot 1's reach set.
    rig.reach.once_after_save(lambda path: tamper(rig, path))
    before = rig.node_count()

    report = rig.pruner.run_cycle()

    events = rig.events()
    started = position(events, "Recovery.Started", cycle_no=1, error_type=error_type)
    invalidated = position(
        events, "Snapshot.Invalidated", originator_id=snapshot_uuid("default", 1)
    )
    created = position(events, "Snapshot.Created", snapshot_id=2, cycle_no=1)
    rolled = position(events, "PruneCycle.RolledBack", new_snapshot_id=2)
    recreated = position(
        events, "Recovery.SnapshotRecreated", cycle_no=1, old_snapshot_id=1, new_snapshot_id=2
    )
    completed = position(events, "PruneCycle.Completed")
    succeeded = position(events, "Recovery.Succeeded", cycle_no=1)
    assert started < invalidated < created < rolled < recreated < completed < succeeded
    assert error_type in events[invalidated].reason
    assert (report.cycle_no, report.snapshot_id) == (1, 2)
    # The sweeps ran once, on the fresh snapshot only.
    assert [e.snapshot_id for e in of(events, "PruneCycle.NodesSwept")] == [2] * len(
        of(events, "PruneCycle.NodesSwept")
    )
    assert before > rig.node_count()
    assert_no_reachable_node_lost(rig, report)
    assert cycle(rig, 1).snapshots_used == [1, 2]
    # After recovery the comprehensive validation passes on the fresh snapshot.
    validator = SnapshotValidator(
        rig.rt.manager, rig.recovery, history=rig.rt.log, reach_store=rig.rt.reach_store
    )
    assert validator.run_comprehensive_validation().passed


def test_snapshot_recovery_disabled_turns_a_snapshot_fault_into_exhaustion(
    data_dir: Path,
) -> None:
    rig = open_rig(data_dir, recovery=RecoveryConfig(enable_snapshot_recovery=False))
    try:
        rig.reach.once_after_save(truncate)
        before = rig.node_count()

        with pytest.raises(RecoveryExhaustedError, match="ReachSetCorruptError"):
            rig.pruner.run_cycle()

        assert rig.node_count() == before
        assert of(rig.events(), "PruneCycle.RolledBack") == []
        assert not rig.rt.manager.lock_info().is_held
    finally:
        rig.close()


def test_snapshot_recovery_gives_up_when_it_outlasts_its_timeout(data_dir: Path) -> None:
    config = RecoveryConfig(snapshot_recovery_timeout_secs=60)
    rig = open_rig(data_dir, recovery=config)
    try:

        def slow_corruption(path: Path) -> None:
            rig.clock.advance(seconds=61)
            truncate(path)

        rig.reach.once_after_save(slow_corruption)

        with pytest.raises(RecoveryExhaustedError, match="ReachSetCorruptError"):
            rig.pruner.run_cycle()

        assert of(rig.events(), "PruneCycle.RolledBack") == []
    finally:
        rig.close()


# --- phase rollback mid-SweepExpired ----------------------------------------------------------


def test_a_sweep_that_outlasts_its_retries_once_rolls_back_and_completes_on_a_fresh_snapshot(
    data_dir: Path, tmp_path: Path, chain_template: Path
) -> None:
    clean_dir = copy_chain(chain_template, tmp_path / "clean")
    clean = open_rig(clean_dir)
    rig = open_rig(data_dir)  # enable_phase_rollback=True, max_phase_retries=3
    try:
        clean.pruner.run_cycle()
        attempts = rig.recovery.config.max_phase_retries + 1
        rig.nodes.fail("delete_guarded", Fault(times=attempts, after=1))

        report = rig.pruner.run_cycle()

        events = cycle_events(rig, 1)
        rolled = position(events, "PruneCycle.RolledBack")
        first_try = events[:rolled]
        assert [e.phase for e in of(first_try, "PruneCycle.PhaseFailed")] == [
            "SweepExpired"
        ] * attempts
        assert len(of(first_try, "PruneCycle.RetryScheduled")) == attempts - 1
        assert (events[rolled].phase, events[rolled].new_snapshot_id) == ("SweepExpired", 2)
        assert "database is locked" in events[rolled].reason
        second_try = events[rolled + 1 :]
        assert [(e.phase, e.snapshot_id) for e in of(second_try, "PruneCycle.PhaseStarted")] == [
            ("BuildReach", 2),
            ("SweepExpired", 2),
            ("IncrementalSweep", 2),
        ]
        assert kind(events[-1]) == "PruneCycle.Completed"
        assert rig.sleeps == [0.1, 0.2, 0.25]
        all_events = rig.events()
        position(all_events, "Snapshot.Invalidated", originator_id=snapshot_uuid("default", 1))
        position(all_events, "Recovery.SnapshotRecreated", old_snapshot_id=1, new_snapshot_id=2)
        position(all_events, "Recovery.Succeeded", cycle_no=1)
        assert report.snapshot_id == 2
        # Ends exactly where a cycle without the fault ends.
        with (
            closing(sqlite3.connect(clean_dir / STATE_FILE)) as a,
            closing(sqlite3.connect(data_dir / STATE_FILE)) as b,
        ):
            assert stored_hashes(a) == stored_hashes(b)
        assert_no_reachable_node_lost(rig, report)
    finally:
        clean.close()
        rig.close()


def test_with_phase_rollback_disabled_the_same_sweep_fault_exhausts_recovery(
    data_dir: Path,
) -> None:
    config = RecoveryConfig(
        enable_phase_rollback=False, base_retry_delay_ms=100, max_retry_delay_ms=250
    )
    rig = open_rig(data_dir, recovery=config)
    try:
        attempts = config.max_phase_retries + 1
        fault = rig.nodes.fail("delete_guarded", Fault(times=attempts))
        before = rig.node_count()

        with pytest.raises(RecoveryExhaustedError, match="database is locked"):
            rig.pruner.run_cycle()

        assert fault.raised == attempts
        assert rig.node_count() == before
        events = rig.events()
        assert of(events, "PruneCycle.RolledBack") == []
        assert [e.phase for e in of(events, "PruneCycle.RecoveryExhausted")] == ["SweepExpired"]
        assert not rig.rt.manager.lock_info().is_held
        assert rig.sleeps == [0.1, 0.2, 0.25]

        rig.nodes.faults.clear()  # the fault is gone: the next cycle completes
        report = rig.pruner.run_cycle()
        assert report.phases["SweepExpired"].deleted > 0
        assert_no_reachable_node_lost(rig, report)
    finally:
        rig.close()


def test_the_rig_uses_a_small_protection_window_so_sweeps_have_work(rig: PrunerRig) -> None:
    assert rig.pruner.config == SMALL_PRUNE
    assert rig.pruner.run_cycle().phases["SweepExpired"].deleted > 0


# --- a fault during the recovery itself ------------------------------------------------------


def test_a_transient_chain_error_while_rolling_back_is_retried_and_the_cycle_completes(
    rig: PrunerRig,
) -> None:
    """The rollback's fresh snapshot is a snapshot creation like any other: a locked database
    while reading the chain is retried with backoff, not a crash of the cycle."""

    def corrupt_then_lock_the_chain_once(path: Path) -> None:
        truncate(path)
        rig.chain.fault = Fault(times=1)  # meets the rollback's create_snapshot

    rig.reach.once_after_save(corrupt_then_lock_the_chain_once)

    report = rig.pruner.run_cycle()

    assert (report.cycle_no, report.snapshot_id) == (1, 2)
    events = rig.events()
    assert [(e.error_type, e.message) for e in of(events, "Recovery.SnapshotCreationFailed")] == [
        LOCKED
    ]
    position(events, "PruneCycle.RolledBack", new_snapshot_id=2)
    position(events, "Recovery.Succeeded", cycle_no=1)
    assert rig.sleeps == [0.1]
    assert not rig.rt.manager.lock_info().is_held
    assert_no_reachable_node_lost(rig, report)


def test_a_chain_that_keeps_failing_while_rolling_back_stops_the_cycle_and_frees_the_lock(
    rig: PrunerRig,
) -> None:
    def corrupt_then_break_the_chain(path: Path) -> None:
        truncate(path)
        rig.chain.fault = Fault(times=None)

    rig.reach.once_after_save(corrupt_then_break_the_chain)
    before = rig.node_count()

    with pytest.raises(RecoveryExhaustedError):
        rig.pruner.run_cycle()

    assert rig.node_count() == before
    assert not rig.rt.manager.lock_info().is_held
    c = cycle(rig, 1)
    assert c.finished and c.state == FAILED
    assert len(of(rig.events(), "Recovery.Exhausted")) == 1
