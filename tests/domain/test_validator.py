"""SnapshotValidator.run_comprehensive_validation and quick_health_check, on a real data dir:
a healthy log, and a log with each kind of fault (tampered snapshot row, chain reorg, corrupted
reach set, a lock held past its timeout, an illegal event order, a phase on another snapshot).
Every run is recorded as a Recovery.ValidationRecorded event."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.domain import Aggregate

from domain.cycle import PruneCycle, cycle_uuid
from domain.errors import RecoveryExhaustedError
from domain.phases import PrunePhase
from domain.validation import ValidationResult
from domain.validator import SnapshotValidator, ValidationReport, quick_health_check
from infrastructure.eventlog import STATE_FILE, EventsourcingLog
from tests.fakes import Fault, PrunerRig, open_rig, write_chain

CHECKS = [
    "internal_consistency",
    "cross_phase_consistency",
    "chain_state",
    "age",
    "lock_integrity",
    "log_legality",
    "reach_set_integrity",
]


@pytest.fixture(scope="module")
def chain_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded chain, written once per module; every test gets its own copy."""
    path = tmp_path_factory.mktemp("chain") / STATE_FILE
    write_chain(path, 80)
    return path


@pytest.fixture
def rig(tmp_path: Path, chain_template: Path) -> Iterator[PrunerRig]:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(chain_template, data / STATE_FILE)
    opened = open_rig(data)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def pruned(rig: PrunerRig) -> PrunerRig:
    """The rig after one clean cycle (snapshot 1, its reach set on disk)."""
    rig.pruner.run_cycle()
    return rig


def validator(rig: PrunerRig, *, recovery: bool = True) -> SnapshotValidator:
    return SnapshotValidator(
        rig.rt.manager,
        rig.recovery if recovery else None,
        history=rig.rt.log,
        reach_store=rig.rt.reach_store,
    )


def by_check(report: ValidationReport) -> dict[str, ValidationResult]:
    return {r.check: r for r in report.results}


def statuses(report: ValidationReport) -> dict[str, str]:
    return {r.check: r.status for r in report.results}


def failed(report: ValidationReport) -> dict[str, str]:
    return {r.check: r.message for r in report.results if r.status == "failed"}


def recorded(rig: PrunerRig) -> list[Any]:
    return [e for e in rig.events() if type(e).__qualname__ == "Recovery.ValidationRecorded"]


def append_by_hand(rig: PrunerRig, event: Aggregate.Event) -> None:
    """Writes one event row straight through the recorder: no aggregate command checks it."""
    app = rig.rt.log.app
    app.recorder.insert_events([app.mapper.to_stored_event(event)])
    rig.rt.log._evict(event.originator_id)


# --- a healthy log ---------------------------------------------------------------------------


def test_a_healthy_log_passes_every_check_and_skips_only_with_a_reason(pruned: PrunerRig) -> None:
    report = validator(pruned).run_comprehensive_validation()

    assert [r.check for r in report.results] == CHECKS
    assert report.passed
    assert statuses(report) == {
        "internal_consistency": "passed",
        "cross_phase_consistency": "passed",
        "chain_state": "passed",
        "age": "skipped",
        "lock_integrity": "passed",
        "log_legality": "passed",
        "reach_set_integrity": "passed",
    }
    results = by_check(report)
    assert results["age"] == ValidationResult.Skipped("age", "snapshot 1 is not in use")
    assert results["internal_consistency"].message == "snapshot 1: hash recomputes"
    assert results["cross_phase_consistency"].message == "1 cycle(s), one snapshot per attempt"
    assert results["reach_set_integrity"].message.endswith("nodes, digest matches")
    assert results["lock_integrity"].message == "one holder at a time; now nobody"
    assert all(r.message for r in report.results)

    assert report.summary() == "PASSED: 6 passed, 0 failed, 1 skipped"
    lines = report.detailed_report().splitlines()
    assert lines[0] == report.summary()
    assert lines[1:] == [str(r) for r in report.results]
    assert lines[1] == "[PASSED ] internal_consistency: snapshot 1: hash recomputes"
    assert lines[4] == "[SKIPPED] age: snapshot 1 is not in use"


def test_a_log_with_no_snapshot_yet_skips_the_snapshot_checks(rig: PrunerRig) -> None:
    report = validator(rig).run_comprehensive_validation()

    assert report.passed
    skipped = {r.check: r.message for r in report.results if r.status == "skipped"}
    assert skipped == {
        "internal_consistency": "no snapshot yet",
        "chain_state": "no snapshot yet",
        "age": "no snapshot yet",
        "reach_set_integrity": "no persisted reach set for the current snapshot",
    }
    assert report.summary() == "PASSED: 3 passed, 0 failed, 4 skipped"


def test_a_snapshot_in_use_has_its_age_checked(pruned: PrunerRig) -> None:
    pruned.rt.manager.create_snapshot(PrunePhase.BUILD_REACH)
    pruned.clock.advance(seconds=90)

    results = by_check(validator(pruned).run_comprehensive_validation())

    assert results["age"] == ValidationResult.Passed("age", "90000 ms old (max 7200000)")


def test_every_run_is_recorded_as_a_validation_recorded_event(pruned: PrunerRig) -> None:
    report = validator(pruned).run_comprehensive_validation()

    events = recorded(pruned)
    assert len(events) == 1
    assert events[0].results == report.as_dicts()
    assert events[0].at == pruned.clock.now()
    assert events[0].results[0] == {
        "check": "internal_consistency",
        "status": "passed",
        "message": "snapshot 1: hash recomputes",
    }


def test_a_run_without_record_or_without_a_recovery_manager_appends_nothing(
    pruned: PrunerRig,
) -> None:
    head = pruned.rt.log.head()

    validator(pruned).run_comprehensive_validation(record=False)
    validator(pruned, recovery=False).run_comprehensive_validation()

    assert pruned.rt.log.head() == head


# --- each kind of fault ----------------------------------------------------------------------


def test_a_tampered_snapshot_fails_internal_consistency(pruned: PrunerRig) -> None:
    pruned.tamper_snapshot(1)

    report = validator(pruned).run_comprehensive_validation()

    assert failed(report) == {"internal_consistency": "snapshot 1: integrity hash mismatch"}
    assert not report.passed
    assert report.summary() == "FAILED: 5 passed, 1 failed, 1 skipped"
    assert "[FAILED ] internal_consistency: snapshot 1: integrity hash mismatch" in (
        report.detailed_report().splitlines()
    )
    assert {"check": "internal_consistency", "status": "failed"}.items() <= (
        recorded(pruned)[-1].results[0].items()
    )


def test_a_chain_reorg_at_the_snapshot_height_fails_chain_state(pruned: PrunerRig) -> None:
    snap = pruned.rt.manager.current_snapshot
    assert snap is not None
    height = snap.chain_metadata.block_height
    pruned.reorg(height)

    report = validator(pruned).run_comprehensive_validation()

    assert list(failed(report)) == ["chain_state"]
    message = failed(report)["chain_state"]
    assert message.startswith(f"ChainStateMismatchError: snapshot 1: block at height {height}")
    assert "ee" * 32 in message
    assert report.summary() == "FAILED: 5 passed, 1 failed, 1 skipped"


@pytest.mark.parametrize("damage", ["truncated", "altered", "deleted"])
def test_a_corrupted_reach_set_fails_reach_set_integrity(pruned: PrunerRig, damage: str) -> None:
    (path,) = list(pruned.rt.reach_store.directory.glob("reach-1-*.roaring"))
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "altered":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        path.unlink()

    report = validator(pruned).run_comprehensive_validation()

    assert list(failed(report)) == ["reach_set_integrity"]
    message = failed(report)["reach_set_integrity"]
    expected = "cannot be read" if damage == "deleted" else "digest is"
    assert path.name in message and expected in message


def test_a_lock_held_past_its_timeout_fails_lock_integrity(pruned: PrunerRig) -> None:
    manager = pruned.rt.manager
    manager.create_snapshot(PrunePhase.BUILD_REACH)
    pruned.clock.advance(ms=manager.config.lock_timeout_ms)

    report = validator(pruned).run_comprehensive_validation()

    assert list(failed(report)) == ["lock_integrity"]
    message = failed(report)["lock_integrity"]
    assert message.startswith("held past its timeout: node-a for BuildReach since")
    assert f"(timeout {manager.config.lock_timeout_ms} ms)" in message
    assert by_check(report)["age"].status == "passed"  # 30 min old, the limit is 2 h


def test_a_lock_within_its_timeout_passes_lock_integrity(pruned: PrunerRig) -> None:
    manager = pruned.rt.manager
    manager.create_snapshot(PrunePhase.BUILD_REACH)
    pruned.clock.advance(ms=manager.config.lock_timeout_ms - 1)

    results = by_check(validator(pruned).run_comprehensive_validation())

    assert results["lock_integrity"].status == "passed"
    assert "now node-a for BuildReach" in results["lock_integrity"].message


def test_a_hand_made_event_in_an_illegal_order_fails_log_legality(pruned: PrunerRig) -> None:
    cycle = pruned.rt.log.get(cycle_uuid("default", 1), PruneCycle)
    assert cycle.finished
    bad = PruneCycle.PhaseStarted(  # type: ignore[attr-defined]
        originator_id=cycle.id,
        originator_version=cycle.version + 1,
        timestamp=pruned.clock.now(),
        phase="BuildReach",
        snapshot_id=1,
        at=pruned.clock.now(),
    )
    append_by_hand(pruned, bad)

    report = validator(pruned).run_comprehensive_validation()

    assert list(failed(report)) == ["log_legality"]
    message = failed(report)["log_legality"]
    assert message.startswith(f"PruneCycle.PhaseStarted v{cycle.version + 1} of {cycle.id}:")
    assert "cycle 1 is finished" in message


def test_a_phase_started_on_another_snapshot_fails_cross_phase_consistency(
    pruned: PrunerRig,
) -> None:
    now = pruned.clock.now()
    cycle = PruneCycle("default", 2, 1, now)  # a real Created event, on snapshot 1
    pruned.rt.log.save(cycle)
    append_by_hand(
        pruned,
        PruneCycle.PhaseStarted(  # type: ignore[attr-defined]
            originator_id=cycle.id,
            originator_version=cycle.version + 1,
            timestamp=now,
            phase="BuildReach",
            snapshot_id=7,
            at=now,
        ),
    )

    report = validator(pruned).run_comprehensive_validation()

    assert failed(report) == {
        "cross_phase_consistency": "PruneCycle.PhaseStarted used snapshot 7, cycle had 1"
    }


def test_a_rollback_names_the_snapshot_the_later_phases_may_use(pruned: PrunerRig) -> None:
    def corrupt(path: Path) -> None:
        path.write_bytes(b"\x00")

    pruned.reach.once_after_save(corrupt)
    pruned.pruner.run_cycle()  # cycle 2 rolls back from snapshot 2 to snapshot 3

    results = by_check(validator(pruned).run_comprehensive_validation())

    assert results["cross_phase_consistency"].status == "passed"
    assert results["cross_phase_consistency"].message == "2 cycle(s), one snapshot per attempt"


# --- quick_health_check ----------------------------------------------------------------------


def test_quick_health_check_is_skipped_on_an_empty_log(tmp_path: Path) -> None:
    with EventsourcingLog.open_sqlite(tmp_path / "empty") as log:
        assert quick_health_check(log) == ValidationResult.Skipped(
            "health", "the event log is empty"
        )


def test_quick_health_check_passes_on_a_healthy_log(pruned: PrunerRig) -> None:
    result = quick_health_check(pruned.rt.log)

    assert result == ValidationResult.Passed("health", "system healthy")
    assert isinstance(result, ValidationResult.Passed)


def test_quick_health_check_fails_with_the_active_alerts_after_exhaustion(
    pruned: PrunerRig,
) -> None:
    pruned.nodes.fail("ids_of", Fault(times=None))
    with pytest.raises(RecoveryExhaustedError):
        pruned.pruner.run_cycle()

    result = quick_health_check(pruned.rt.log)

    assert isinstance(result, ValidationResult.Failed)
    assert result.check == "health"
    assert result.message.startswith("unhealthy: ")
    assert "recovery_exhausted" in result.message.removeprefix("unhealthy: ").split(", ")


def test_quick_health_check_fails_degraded_after_a_failed_validation(pruned: PrunerRig) -> None:
    pruned.tamper_snapshot(1)
    validator(pruned).run_comprehensive_validation()

    result = quick_health_check(pruned.rt.log)

    assert result == ValidationResult.Failed("health", "degraded: validation_failure")


def test_quick_health_check_names_recent_failures_when_no_alert_is_active(
    pruned: PrunerRig,
) -> None:
    pruned.nodes.fail("ids_of", Fault(times=1))
    pruned.pruner.run_cycle()  # one retried failure: degraded, no alert

    result = quick_health_check(pruned.rt.log)

    assert result == ValidationResult.Failed("health", "degraded: recent failures")
    match result:
        case ValidationResult.Failed(check, message):
            assert (check, message) == ("health", "degraded: recent failures")
        case _:
            pytest.fail(f"not a Failed result: {result!r}")
