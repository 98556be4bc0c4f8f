"""A cooperative stop (SIGINT/SIGTERM in `prunelog run`): the pruner stops between two batches
or two phases, records the phase as stopped, releases the lock through an event, and the next
run resumes the same cycle from where it stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domain.cycle import PruneCycle, cycle_uuid
from domain.errors import PrunerStoppedError
from domain.phases import FAILED, PrunePhase
from infrastructure.audit_checks import check_store
from infrastructure.state_store import SqliteStateStore
from tests.fakes import PrunerRig, open_rig, swept_events, write_chain

BR, SE = PrunePhase.BUILD_REACH, PrunePhase.SWEEP_EXPIRED


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[PrunerRig]:
    write_chain(tmp_path / "data" / "state.sqlite", 200)
    opened = open_rig(tmp_path / "data")
    yield opened
    opened.close()


def kinds(events: list[Any]) -> list[str]:
    return [type(e).__qualname__ for e in events]


def cycle_of(rig: PrunerRig, cycle_no: int) -> PruneCycle:
    return rig.rt.log.get(cycle_uuid(rig.rt.manager.group, cycle_no), PruneCycle)


def assert_protected_roots_whole(rig: PrunerRig, latest_order: int) -> None:
    with SqliteStateStore.open(rig.rt.state_path) as store:
        check = check_store(store, latest_order - rig.pruner.config.protection_orders)
    assert check.violations == 0


def test_a_stop_requested_mid_sweep_finishes_the_batch_records_the_phase_and_frees_the_lock(
    rig: PrunerRig,
) -> None:
    rig.pruner.should_stop = lambda: bool(rig.nodes.deleted)  # right after the first batch

    with pytest.raises(PrunerStoppedError, match="SweepExpired"):
        rig.pruner.run_cycle()

    events = rig.events()
    # The transaction in flight committed, and every audit batch it deleted was logged.
    batches = swept_events(rig.rt.log)
    assert sum(b.count for b in batches) == len(rig.nodes.deleted)
    assert all(b.row_ids for b in batches)
    assert rig.rt.nodes.unlogged_journal() == []
    failed = next(e for e in events if type(e).__qualname__ == "PruneCycle.PhaseFailed")
    assert (failed.phase, failed.error_type) == (SE.value, "PrunerStoppedError")
    assert kinds(events)[-2:] == ["PruneCycle.PhaseFailed", "PhaseLock.Released"]
    assert not rig.rt.manager.lock_info().is_held
    cycle = cycle_of(rig, 1)
    assert cycle.state == FAILED and not cycle.finished


def test_the_next_run_resumes_a_stopped_sweep_in_the_same_cycle_and_completes_it(
    rig: PrunerRig,
) -> None:
    rig.pruner.should_stop = lambda: bool(rig.nodes.deleted)
    with pytest.raises(PrunerStoppedError):
        rig.pruner.run_cycle()
    stopped_at = rig.rt.log.head()

    rig.pruner.should_stop = lambda: False
    report = rig.pruner.run_cycle()

    assert report.cycle_no == 1 and report.snapshot_id == 1
    after = kinds(rig.events()[stopped_at:])
    assert "PruneCycle.PhaseResumed" in after and "Snapshot.Created" not in after
    assert cycle_of(rig, 1).finished
    assert [e.batch_no for e in swept_events(rig.rt.log)][:2] == [1, 2]
    assert_protected_roots_whole(rig, report.latest_order)


def test_a_stop_between_phases_frees_the_lock_and_the_next_run_starts_the_next_phase(
    rig: PrunerRig,
) -> None:
    rig.pruner.should_stop = lambda: "Snapshot.ReachBuilt" in kinds(rig.events())

    with pytest.raises(PrunerStoppedError, match="SweepExpired"):
        rig.pruner.run_cycle()

    events = rig.events()
    assert kinds(events)[-2:] == ["PruneCycle.PhaseCompleted", "PhaseLock.Released"]
    assert "PruneCycle.PhaseFailed" not in kinds(events)
    stopped_at = rig.rt.log.head()

    rig.pruner.should_stop = lambda: False
    report = rig.pruner.run_cycle()

    started = [e.phase for e in rig.events()[stopped_at:] if hasattr(e, "phase")]
    assert BR.value not in started and started[0] == SE.value
    assert report.cycle_no == 1 and cycle_of(rig, 1).finished
    assert_protected_roots_whole(rig, report.latest_order)


def test_a_pruner_never_asked_to_stop_runs_whole_cycles(rig: PrunerRig) -> None:
    asked: list[bool] = []

    def never() -> bool:
        asked.append(True)
        return False

    rig.pruner.should_stop = never
    report = rig.pruner.run_cycle()

    assert cycle_of(rig, report.cycle_no).finished
    transactions = rig.nodes.calls["delete_guarded"] + rig.nodes.calls["sweep_stale"]
    assert len(asked) >= transactions + 2  # before every delete transaction and every phase


def test_a_stop_on_request_leaves_health_healthy_because_nothing_failed(rig: PrunerRig) -> None:
    from domain.health import HealthMonitor, HealthStatus

    rig.pruner.should_stop = lambda: bool(rig.nodes.deleted)
    with pytest.raises(PrunerStoppedError):
        rig.pruner.run_cycle()

    report = HealthMonitor().apply_all(rig.events()).report()
    assert report.overall is HealthStatus.HEALTHY
