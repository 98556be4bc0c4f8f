"""The PruneCycle aggregate walks PHASE_ORDER: legal paths, illegal triggers that append nothing,
a property test against a reference walk of the table, and replay of a log in an illegal order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.cycle import PruneCycle
from domain.errors import IllegalPhaseOrderError, SnapshotMismatchError
from domain.phases import IDLE, PHASE_ORDER, PrunePhase, resume_trigger, start_trigger
from infrastructure.eventlog import EventsourcingLog

AT = datetime(2026, 1, 1, tzinfo=UTC)
SNAP = 7
OTHER_SNAP = 8

BR, SE, IS = PrunePhase.BUILD_REACH, PrunePhase.SWEEP_EXPIRED, PrunePhase.INCREMENTAL_SWEEP

Step = Callable[[PruneCycle], None]


def new_cycle(cycle_no: int = 1) -> PruneCycle:
    return PruneCycle(group="g", cycle_no=cycle_no, snapshot_id=SNAP, at=AT)


def start(phase: PrunePhase) -> Step:
    return lambda c: c.start_phase(phase, SNAP, AT)


def finish(phase: PrunePhase) -> Step:
    return lambda c: c.complete_phase(phase, {"deleted": 0}, AT)


def progress(phase: PrunePhase) -> Step:
    return lambda c: c.progress(phase, {"cursor": 1}, AT)


def fail(phase: PrunePhase) -> Step:
    return lambda c: c.fail_phase(phase, "OSError", "disk full", AT)


def retry() -> Step:
    return lambda c: c.schedule_retry(1, 1000, AT)


def resume(phase: PrunePhase) -> Step:
    return lambda c: c.resume_phase(phase, SNAP, AT)


def complete_cycle() -> Step:
    return lambda c: c.complete(AT)


def roll_back() -> Step:
    return lambda c: c.roll_back("reach set corrupt", OTHER_SNAP, AT)


def event_names(cycle: PruneCycle) -> list[str]:
    return [type(e).__name__ for e in cycle.collect_events()]


# --- legal paths ----------------------------------------------------------------------------


def test_a_cycle_walks_idle_build_reach_sweep_expired_incremental_sweep_and_back_to_idle() -> None:
    cycle = new_cycle()
    states = [cycle.state]
    for phase in PrunePhase:
        cycle.start_phase(phase, SNAP, AT)
        states.append(cycle.state)
        cycle.progress(phase, {"cursor": 1}, AT)
        cycle.complete_phase(phase, {"deleted": 3}, AT)
    cycle.complete(AT)
    states.append(cycle.state)

    assert states == [IDLE, "BuildReach", "SweepExpired", "IncrementalSweep", IDLE]
    assert cycle.finished
    assert cycle.completed_phases == ["BuildReach", "SweepExpired", "IncrementalSweep"]
    assert event_names(cycle) == [
        "Created",
        *["PhaseStarted", "PhaseProgressed", "PhaseCompleted"] * 3,
        "Completed",
    ]


def test_a_cycle_with_incremental_sweep_disabled_goes_from_sweep_expired_straight_to_idle() -> None:
    cycle = new_cycle()
    for step in (start(BR), finish(BR), start(SE), finish(SE), complete_cycle()):
        step(cycle)
    assert cycle.state == IDLE
    assert cycle.finished
    assert "IncrementalSweep" not in cycle.completed_phases


def test_a_failed_phase_can_be_retried_and_resumed_on_the_same_snapshot() -> None:
    cycle = new_cycle()
    for step in (start(BR), finish(BR), start(SE), fail(SE), retry(), resume(SE)):
        step(cycle)
    assert cycle.state == "SweepExpired"
    assert cycle.attempts["SweepExpired"] == 2
    for step in (finish(SE), complete_cycle()):
        step(cycle)
    assert cycle.state == IDLE


def test_a_rolled_back_cycle_starts_again_from_build_reach_on_its_new_snapshot() -> None:
    cycle = new_cycle()
    for step in (start(BR), fail(BR), roll_back()):
        step(cycle)
    assert cycle.state == "RolledBack"
    assert cycle.snapshot_id == OTHER_SNAP
    cycle.start_phase(BR, OTHER_SNAP, AT)
    assert cycle.state == "BuildReach"
    assert cycle.snapshots_used == [SNAP, OTHER_SNAP]


# --- illegal triggers -----------------------------------------------------------------------

ILLEGAL: dict[str, tuple[list[Step], Step]] = {
    "start SweepExpired before BuildReach started": ([], start(SE)),
    "start SweepExpired before BuildReach completed": ([start(BR)], start(SE)),
    "start IncrementalSweep straight after BuildReach": ([start(BR), finish(BR)], start(IS)),
    "start BuildReach twice": ([start(BR)], start(BR)),
    "start BuildReach again after it completed": ([start(BR), finish(BR)], start(BR)),
    "complete the cycle before any phase": ([], complete_cycle()),
    "complete the cycle mid-phase": ([start(BR), finish(BR), start(SE)], complete_cycle()),
    "complete the cycle after BuildReach only": ([start(BR), finish(BR)], complete_cycle()),
    "complete a phase twice": ([start(BR), finish(BR)], finish(BR)),
    "complete a phase that is not running": ([start(BR)], finish(SE)),
    "progress a phase that is not running": ([start(BR)], progress(SE)),
    "progress a phase after it completed": ([start(BR), finish(BR)], progress(BR)),
    "fail a phase in Idle": ([], fail(BR)),
    "fail a phase that is not running": ([start(BR)], fail(SE)),
    "schedule a retry when nothing failed": ([start(BR)], retry()),
    "resume a phase that did not fail": ([start(BR), fail(BR), retry()], resume(SE)),
    "resume when nothing failed": ([start(BR)], resume(BR)),
    "resume before the retry was scheduled": ([start(BR), fail(BR)], resume(BR)),
    "roll back a running phase": ([start(BR)], roll_back()),
    "start a phase while failed": ([start(BR), fail(BR)], start(BR)),
}


@pytest.mark.parametrize(("setup", "illegal"), ILLEGAL.values(), ids=ILLEGAL.keys())
def test_an_illegal_trigger_raises_illegal_phase_order_error_and_appends_nothing(
    setup: list[Step], illegal: Step
) -> None:
    cycle = new_cycle()
    for step in setup:
        step(cycle)
    state, version, pending = cycle.state, cycle.version, len(cycle.pending_events)

    with pytest.raises(IllegalPhaseOrderError):
        illegal(cycle)

    assert (cycle.state, cycle.version, len(cycle.pending_events)) == (state, version, pending)
    assert len(cycle.collect_events()) == version


def test_an_illegal_trigger_says_what_is_allowed_instead() -> None:
    cycle = new_cycle()
    cycle.start_phase(BR, SNAP, AT)
    with pytest.raises(IllegalPhaseOrderError, match="complete_phase"):
        cycle.start_phase(SE, SNAP, AT)


@pytest.mark.parametrize(
    ("setup", "command"),
    [
        ([], lambda c: c.start_phase(BR, OTHER_SNAP, AT)),
        ([start(BR), finish(BR)], lambda c: c.start_phase(SE, OTHER_SNAP, AT)),
        ([start(BR), finish(BR), start(SE)], lambda c: c.record_batch(SE, OTHER_SNAP, 1, [], AT)),
        ([start(BR), fail(BR), retry()], lambda c: c.resume_phase(BR, OTHER_SNAP, AT)),
    ],
    ids=["start", "next phase", "sweep batch", "resume"],
)
def test_a_phase_handed_another_snapshot_raises_snapshot_mismatch_and_appends_nothing(
    setup: list[Step], command: Step
) -> None:
    cycle = new_cycle()
    for step in setup:
        step(cycle)
    version = cycle.version
    with pytest.raises(SnapshotMismatchError, match=f"refusing snapshot {OTHER_SNAP}"):
        command(cycle)
    assert cycle.version == version
    assert cycle.snapshots_used == [SNAP]


# --- property: the aggregate is the table ---------------------------------------------------


@dataclass
class ReferenceWalk:
    """An independent reading of PHASE_ORDER as plain data: no `transitions`, no PHASE_TABLE."""

    state: str = IDLE
    phase_completed: bool = False
    failed_phase: str | None = None
    snapshot_id: int = SNAP
    finished: bool = False  # a completed or exhausted cycle accepts nothing more

    def target(self, trigger: str) -> str | None:
        if self.finished:
            return None
        flags = {"phase_completed": self.phase_completed}
        for row in PHASE_ORDER:
            sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
            if row["trigger"] != trigger or self.state not in sources:
                continue
            if "conditions" in row and not flags[str(row["conditions"])]:
                continue
            if "unless" in row and flags[str(row["unless"])]:
                continue
            return self.state if row["dest"] is None else str(row["dest"])
        return None

    def allowed(self) -> set[str]:
        triggers = {str(row["trigger"]) for row in PHASE_ORDER}
        return {t for t in triggers if self.target(t) is not None}

    def move(self, trigger: str) -> type[Exception] | None:
        new = self.target(trigger)
        if new is None:
            return IllegalPhaseOrderError
        if new != self.state:
            self.phase_completed = False
        self.state = new
        self.finished = trigger in ("complete_cycle", "give_up")
        return None

    def expect(self, command: tuple[Any, ...]) -> type[Exception] | None:
        """Applies `command` to the reference; returns the error it must raise, if any."""
        name, phase, snapshot_ok = command
        snapshot = self.snapshot_id if snapshot_ok else self.snapshot_id + 1000
        in_phase = phase is not None and self.state == phase.value
        if name == "start":
            if snapshot != self.snapshot_id:
                return SnapshotMismatchError
            return self.move(start_trigger(phase))
        if name in ("progress", "complete_phase", "fail", "batch"):
            if not in_phase:
                return IllegalPhaseOrderError
            if name == "batch" and snapshot != self.snapshot_id:
                return SnapshotMismatchError
            trigger = {"batch": "progress", "fail": "fail"}.get(name, name)
            error = self.move(trigger)
            if error is None and name == "complete_phase":
                self.phase_completed = True
            if error is None and name == "fail":
                self.failed_phase = phase.value
            return error
        if name == "resume":
            if snapshot != self.snapshot_id:
                return SnapshotMismatchError
            if phase.value != self.failed_phase:
                return IllegalPhaseOrderError
            return self.move(resume_trigger(phase))
        if name == "roll_back":
            error = self.move("roll_back")
            if error is None:
                self.snapshot_id += 1
            return error
        return self.move({"retry": "schedule_retry", "complete": "complete_cycle"}.get(name, name))


def run(cycle: PruneCycle, command: tuple[Any, ...], snapshot_id: int) -> None:
    name, phase, snapshot_ok = command
    snapshot = snapshot_id if snapshot_ok else snapshot_id + 1000
    match name:
        case "start":
            cycle.start_phase(phase, snapshot, AT)
        case "progress":
            cycle.progress(phase, {"cursor": 1}, AT)
        case "batch":
            cycle.record_batch(phase, snapshot, 1, [(b"\x01" * 32, 100)], AT)
        case "complete_phase":
            cycle.complete_phase(phase, {}, AT)
        case "fail":
            cycle.fail_phase(phase, "OSError", "boom", AT)
        case "retry":
            cycle.schedule_retry(1, 1000, AT)
        case "resume":
            cycle.resume_phase(phase, snapshot, AT)
        case "roll_back":
            cycle.roll_back("corrupt", snapshot_id + 1, AT)
        case "give_up":
            cycle.give_up("exhausted", AT)
        case "complete":
            cycle.complete(AT)


phases = st.sampled_from(list(PrunePhase))
commands = st.one_of(
    st.tuples(st.sampled_from(["start", "batch", "resume"]), phases, st.booleans()),
    st.tuples(st.sampled_from(["progress", "complete_phase", "fail"]), phases, st.just(True)),
    st.tuples(
        st.sampled_from(["retry", "roll_back", "give_up", "complete"]), st.none(), st.just(True)
    ),
)
ALL_COMMANDS: list[tuple[Any, ...]] = [
    *[(n, p, ok) for n in ("start", "batch", "resume") for p in PrunePhase for ok in (True, False)],
    *[(n, p, True) for n in ("progress", "complete_phase", "fail") for p in PrunePhase],
    *[(n, None, True) for n in ("retry", "roll_back", "give_up", "complete")],
]


@cache
def _legal(state: str, phase_completed: bool, failed_phase: str | None) -> list[tuple[Any, ...]]:
    here = ReferenceWalk(state, phase_completed, failed_phase)
    return [c for c in ALL_COMMANDS if replace(here).expect(c) is None]


def legal_commands(reference: ReferenceWalk) -> list[tuple[Any, ...]]:
    return _legal(reference.state, reference.phase_completed, reference.failed_phase)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_commands_always_leave_the_cycle_where_a_walk_of_phase_order_says(
    data: st.DataObject,
) -> None:
    cycle = new_cycle()
    reference = ReferenceWalk()
    for _ in range(data.draw(st.integers(0, 30), label="length")):
        # Mostly legal steps, so the walk gets deep; the rest are anything at all.
        legal = legal_commands(reference)
        pick_legal = data.draw(st.booleans(), label="legal?")
        if legal and pick_legal:
            command = data.draw(st.sampled_from(legal), label="command")
        else:
            command = data.draw(commands, label="command")
        expected_error = reference.expect(command)
        version = cycle.version
        if expected_error is None:
            run(cycle, command, cycle.snapshot_id)
            assert cycle.version == version + 1, command
        else:
            with pytest.raises(expected_error):
                run(cycle, command, cycle.snapshot_id)
            assert cycle.version == version, command
        assert cycle.state == reference.state, command
        assert cycle.phase_completed == reference.phase_completed, command
        assert cycle.snapshot_id == reference.snapshot_id, command
        assert set(cycle.allowed_triggers()) == reference.allowed(), command

    # Replaying what was appended drives the same table to the same place.
    events = cycle.collect_events()
    assert len(events) == cycle.version
    replayed: Any = None
    for e in events:
        replayed = e.mutate(replayed)
    assert (replayed.state, replayed.phase_completed, replayed.snapshot_id) == (
        cycle.state,
        cycle.phase_completed,
        cycle.snapshot_id,
    )


# --- replay of a hand-made bad log ----------------------------------------------------------


def legal_stored_events(log: EventsourcingLog, cycle_no: int) -> list[StoredEvent]:
    """Created, Started BR, Completed BR, Started SE, Completed SE, cycle Completed."""
    cycle = new_cycle(cycle_no)
    for step in (start(BR), finish(BR), start(SE), finish(SE), complete_cycle()):
        step(cycle)
    return [log.app.mapper.to_stored_event(e) for e in cycle.collect_events()]


def renumbered(events: list[StoredEvent]) -> list[StoredEvent]:
    """Contiguous versions 1..n, so only the ORDER of the events is wrong."""
    return [
        StoredEvent(e.originator_id, version, e.topic, e.state)
        for version, e in enumerate(events, start=1)
    ]


BAD_ORDERS = {
    "SweepExpired started before BuildReach completed": [0, 1, 3],
    "SweepExpired started before BuildReach started": [0, 3],
    "cycle completed mid-phase": [0, 1, 5],
    "BuildReach started again after it completed": [0, 1, 2, 1],
    "a phase completed before it started": [0, 2],
}


@pytest.mark.parametrize("order", BAD_ORDERS.values(), ids=BAD_ORDERS.keys())
def test_replaying_a_log_written_in_an_illegal_order_raises_illegal_phase_order_error(
    log: EventsourcingLog, order: list[int]
) -> None:
    good = legal_stored_events(log, cycle_no=1)
    bad = legal_stored_events(log, cycle_no=2)
    log.app.recorder.insert_events(renumbered(good))
    log.app.recorder.insert_events(renumbered([bad[i] for i in order]))

    assert log.get(PruneCycle.create_id("g", 1), PruneCycle).finished
    with pytest.raises(IllegalPhaseOrderError):
        log.get(PruneCycle.create_id("g", 2), PruneCycle)
