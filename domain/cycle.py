"""The PruneCycle aggregate: one cycle's phases, in the legal order, on ONE snapshot."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import IllegalPhaseOrderError, SnapshotMismatchError
from domain.phases import IDLE, PHASE_TABLE, PrunePhase, resume_trigger, start_trigger
from domain.ports import bytes_freed, hashes_of
from domain.snapshot import NAMESPACE


class PruneCycle(Aggregate):
    """Every command asks the phase table first, so an illegal step appends nothing. Every
    event method drives the same table again, so a log in an illegal order fails on replay."""

    @staticmethod
    def create_id(group: str, cycle_no: int) -> UUID:
        return cycle_uuid(group, cycle_no)

    @event("Created")
    def __init__(self, group: str, cycle_no: int, snapshot_id: int, at: datetime) -> None:
        self.group = group
        self.cycle_no = cycle_no
        self.snapshot_id = snapshot_id
        self.snapshots_used = [snapshot_id]
        self.started_at = at
        self.state = IDLE
        self.phase: str | None = None
        self.phase_completed = False
        self.completed_phases: list[str] = []
        self.failed_phase: str | None = None
        self.attempts: dict[str, int] = {}
        self.checkpoints: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, dict[str, Any]] = {}
        self.finished = False
        self.deleted: dict[str, int] = {}
        self.batches_logged: set[int] = set()

    # --- the table ----------------------------------------------------------------------

    def _flags(self) -> dict[str, bool]:
        return {"phase_completed": self.phase_completed}

    def _check(self, trigger: str) -> str:
        if self.finished:
            raise IllegalPhaseOrderError(
                f"cycle {self.cycle_no} is finished ({self.state}); {trigger!r} is not legal"
            )
        return PHASE_TABLE.next_state(self.state, trigger, self._flags())

    def _move(self, trigger: str) -> None:
        new_state = self._check(trigger)
        if new_state != self.state:
            self.phase_completed = False
        self.state = new_state

    def allowed_triggers(self) -> list[str]:
        if self.finished:
            return []
        return PHASE_TABLE.allowed(self.state, self._flags())

    def _same_snapshot(self, snapshot_id: int) -> None:
        if snapshot_id != self.snapshot_id:
            raise SnapshotMismatchError(
                f"cycle {self.cycle_no} runs on snapshot {self.snapshot_id}; "
                f"refusing snapshot {snapshot_id}"
            )

    def _in_phase(self, phase: PrunePhase) -> None:
        if self.state != phase.value:
            raise IllegalPhaseOrderError(
                f"cycle {self.cycle_no} is in {self.state}, not in {phase.value}"
            )

    # --- commands ------------------------------------------------------------------------

    def start_phase(self, phase: PrunePhase, snapshot_id: int, at: datetime) -> None:
        self._same_snapshot(snapshot_id)
        self._check(start_trigger(phase))
        self._phase_started(phase=phase.value, snapshot_id=snapshot_id, at=at)

    def progress(self, phase: PrunePhase, checkpoint: dict[str, Any], at: datetime) -> None:
        self._in_phase(phase)
        self._check("progress")
        self._phase_progressed(phase=phase.value, checkpoint=checkpoint, at=at)

    def complete_phase(self, phase: PrunePhase, stats: dict[str, Any], at: datetime) -> None:
        self._in_phase(phase)
        self._check("complete_phase")
        self._phase_completed(phase=phase.value, stats=stats, at=at)

    def record_batch(
        self,
        phase: PrunePhase,
        snapshot_id: int,
        batch_no: int,
        deleted: Sequence[tuple[bytes, int]],
        at: datetime,
        row_ids: Sequence[int] = (),
    ) -> None:
        """One guarded-delete batch, with every deleted hash and row id, for the audit."""
        self._in_phase(phase)
        self._same_snapshot(snapshot_id)
        self._check("progress")
        self._nodes_swept(**_batch(phase, snapshot_id, batch_no, deleted, at, row_ids))

    def accepts_batch(self, phase: PrunePhase, snapshot_id: int) -> bool:
        return (
            not self.finished
            and self.state == phase.value
            and not self.phase_completed
            and snapshot_id == self.snapshot_id
        )

    def record_recovered_batch(
        self,
        phase: PrunePhase,
        snapshot_id: int,
        batch_no: int,
        deleted: Sequence[tuple[bytes, int]],
        at: datetime,
        row_ids: Sequence[int] = (),
    ) -> None:
        """A batch the store deleted whose NodesSwept never made it into the log (a crash or a
        failed append), found in the journal after the cycle moved on. Legal in any state: it
        records a past fact and moves no phase."""
        if snapshot_id not in self.snapshots_used:
            raise SnapshotMismatchError(
                f"cycle {self.cycle_no} never used snapshot {snapshot_id}; refusing its batch"
            )
        if batch_no in self.batches_logged:
            return
        self._batch_recovered(**_batch(phase, snapshot_id, batch_no, deleted, at, row_ids))

    def fail_phase(self, phase: PrunePhase, error_type: str, message: str, at: datetime) -> None:
        self._in_phase(phase)
        self._check("fail")
        self._phase_failed(phase=phase.value, error_type=error_type, message=message, at=at)

    def schedule_retry(self, attempt: int, delay_ms: int, at: datetime) -> None:
        self._check("schedule_retry")
        self._retry_scheduled(phase=self.failed_phase, attempt=attempt, delay_ms=delay_ms, at=at)

    def resume_phase(self, phase: PrunePhase, snapshot_id: int, at: datetime) -> None:
        self._same_snapshot(snapshot_id)
        if phase.value != self.failed_phase:
            raise IllegalPhaseOrderError(
                f"cycle {self.cycle_no} failed in {self.failed_phase}; cannot resume {phase.value}"
            )
        self._check(resume_trigger(phase))
        self._phase_resumed(phase=phase.value, snapshot_id=snapshot_id, at=at)

    def roll_back(self, reason: str, new_snapshot_id: int, at: datetime) -> None:
        self._check("roll_back")
        self._rolled_back(
            phase=self.failed_phase, reason=reason, new_snapshot_id=new_snapshot_id, at=at
        )

    def give_up(self, reason: str, at: datetime) -> None:
        self._check("give_up")
        self._recovery_exhausted(phase=self.failed_phase, reason=reason, at=at)

    def complete(self, at: datetime) -> None:
        self._check("complete_cycle")
        self._cycle_completed(at=at)

    # --- event methods: mutate only; they run again on every replay -----------------------

    @event("PhaseStarted")
    def _phase_started(self, phase: str, snapshot_id: int, at: datetime) -> None:
        self._move(start_trigger(PrunePhase(phase)))
        self.phase = phase
        self.attempts[phase] = 1

    @event("PhaseProgressed")
    def _phase_progressed(self, phase: str, checkpoint: dict[str, Any], at: datetime) -> None:
        self._move("progress")
        self.checkpoints[phase] = checkpoint

    class NodesSwept(Aggregate.Event):
        """One guarded-delete batch: every deleted hash and row id. Version 2 added row_ids;
        a version 1 event (logged before) replays with row_ids = []."""

        class_version = 2
        phase: str
        snapshot_id: int
        batch_no: int
        count: int
        hashes: list[bytes]
        bytes_freed: int
        at: datetime
        row_ids: list[int]

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["row_ids"] = []

    class BatchRecovered(Aggregate.Event):
        """A deleted batch logged late from the journal, with the same fields as NodesSwept.
        Version 2 added row_ids; a version 1 event replays with row_ids = []."""

        class_version = 2
        phase: str
        snapshot_id: int
        batch_no: int
        count: int
        hashes: list[bytes]
        bytes_freed: int
        at: datetime
        row_ids: list[int]

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["row_ids"] = []

    @event(NodesSwept)
    def _nodes_swept(
        self,
        phase: str,
        snapshot_id: int,
        batch_no: int,
        count: int,
        hashes: list[bytes],
        bytes_freed: int,
        at: datetime,
        row_ids: list[int],
    ) -> None:
        self._move("progress")
        self.deleted[phase] = self.deleted.get(phase, 0) + count
        self.batches_logged.add(batch_no)

    @event(BatchRecovered)
    def _batch_recovered(
        self,
        phase: str,
        snapshot_id: int,
        batch_no: int,
        count: int,
        hashes: list[bytes],
        bytes_freed: int,
        at: datetime,
        row_ids: list[int],
    ) -> None:
        self.deleted[phase] = self.deleted.get(phase, 0) + count
        self.batches_logged.add(batch_no)

    @event("PhaseCompleted")
    def _phase_completed(self, phase: str, stats: dict[str, Any], at: datetime) -> None:
        self._move("complete_phase")
        self.phase_completed = True
        self.completed_phases.append(phase)
        self.stats[phase] = stats

    @event("PhaseFailed")
    def _phase_failed(self, phase: str, error_type: str, message: str, at: datetime) -> None:
        self._move("fail")
        self.failed_phase = phase

    @event("RetryScheduled")
    def _retry_scheduled(
        self, phase: str | None, attempt: int, delay_ms: int, at: datetime
    ) -> None:
        self._move("schedule_retry")

    @event("PhaseResumed")
    def _phase_resumed(self, phase: str, snapshot_id: int, at: datetime) -> None:
        self._move(resume_trigger(PrunePhase(phase)))
        self.phase = phase
        self.attempts[phase] = self.attempts.get(phase, 1) + 1

    @event("RolledBack")
    def _rolled_back(
        self, phase: str | None, reason: str, new_snapshot_id: int, at: datetime
    ) -> None:
        self._move("roll_back")
        self.snapshot_id = new_snapshot_id
        self.snapshots_used.append(new_snapshot_id)
        self.completed_phases.clear()
        self.checkpoints.clear()

    @event("RecoveryExhausted")
    def _recovery_exhausted(self, phase: str | None, reason: str, at: datetime) -> None:
        self._move("give_up")
        self.finished = True

    @event("Completed")
    def _cycle_completed(self, at: datetime) -> None:
        self._move("complete_cycle")
        self.phase = None
        self.finished = True


def _batch(
    phase: PrunePhase,
    snapshot_id: int,
    batch_no: int,
    deleted: Sequence[tuple[bytes, int]],
    at: datetime,
    row_ids: Sequence[int],
) -> dict[str, Any]:
    """The fields of NodesSwept and BatchRecovered: every deleted hash, for the audit, and the
    deleted row ids (the reach set's unit, for `audit --verify`; [] when not known, or when
    they do not pair up with the hashes: a batch must be logged even then)."""
    return {
        "phase": phase.value,
        "snapshot_id": snapshot_id,
        "batch_no": batch_no,
        "count": len(deleted),
        "hashes": hashes_of(deleted),
        "bytes_freed": bytes_freed(deleted),
        "at": at,
        "row_ids": list(row_ids) if len(row_ids) == len(deleted) else [],
    }


def cycle_uuid(group: str, cycle_no: int) -> UUID:
    return uuid5(NAMESPACE, f"prunelog/cycle/{group}/{cycle_no}")
