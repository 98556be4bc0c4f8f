"""The sweeps' delete path: the lock check before each delete transaction, the journaled,
fenced, guarded transaction itself with its NodesSwept events, progress checkpoints, and the
journal reconciliation that audits a transaction whose events a crash cut off. Mixed into
PhaseWork (domain/sweeps.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from domain.config import PruneConfig
from domain.cycle import PruneCycle, cycle_uuid
from domain.errors import LockNotHeldError, PrunerStoppedError, SnapshotMismatchError
from domain.manager import AtomicSnapshotManager
from domain.phases import PrunePhase
from domain.ports import EventLog, JournalEntry, NodeStorePort, StaleEntry, bytes_freed
from domain.snapshot import AtomicSnapshot


class DeleteWork:
    """State and wiring come from Pruner.__init__."""

    manager: AtomicSnapshotManager
    log: EventLog
    nodes: NodeStorePort
    config: PruneConfig
    should_stop: Callable[[], bool]

    def _ensure_holding(self, phase: PrunePhase, snap: AtomicSnapshot) -> int:
        """Checked before every delete batch: a pruner whose lock was taken over stops.
        Returns the lock's fencing token, which the delete transaction checks again, so a
        holder deposed between this check and its commit deletes nothing."""
        self.manager.renew_lock(phase)  # raises if the lock is gone; appends only when due
        lock = self.manager.lock_info()
        if not lock.holds(self.manager.owner, phase):
            raise LockNotHeldError(
                f"{self.manager.owner} lost the {phase.value} lock; "
                f"held by {lock.describe_holder()}"
            )
        if lock.current_snapshot_id != snap.snapshot_id:
            raise SnapshotMismatchError(
                f"lock now names snapshot {lock.current_snapshot_id}, cycle uses {snap.snapshot_id}"
            )
        return int(lock.fence_token)

    def _stop_point(self, phase: PrunePhase) -> None:
        """A place where stopping leaves nothing half done: before a phase, or before a delete
        batch (the previous batch committed and logged). Inside a phase, the phase's recovery
        records PhaseFailed (not retried: the error is not transient); run_cycle then frees
        the lock, and the next run resumes the phase through `_interrupted`."""
        if self.should_stop():
            raise PrunerStoppedError(f"stopped on request before the next step of {phase.value}")

    def _now(self) -> datetime:
        return self.manager.clock.now()

    def _cycle(self, snap: AtomicSnapshot) -> PruneCycle:
        return self.log.get(cycle_uuid(snap.group, snap.cycle_no), PruneCycle)

    def _delete(
        self,
        snap: AtomicSnapshot,
        phase: PrunePhase,
        ids: list[int],
        stats: Any,  # PhaseStats (domain/sweeps.py)
        stale: list[StaleEntry] | None = None,
        swept: list[int] | None = None,
    ) -> Sequence[tuple[bytes, int]]:
        """One journaled, fenced, guarded delete transaction and its NodesSwept events;
        returns what it deleted."""
        self._stop_point(phase)
        token = self._ensure_holding(phase, snap)
        self.reconcile_journal()  # a batch whose event failed must be logged before the next
        cycle = self._cycle(snap)
        batch_no = max(cycle.batches_logged, default=0) + 1
        entry = JournalEntry(
            batch_key=f"{snap.group}/{snap.cycle_no}/{batch_no}",
            cycle_no=snap.cycle_no,
            snapshot_id=snap.snapshot_id,
            phase=phase.value,
            batch_no=batch_no,
            deleted=[],
            owner=self.manager.owner,
            fence_token=token,
            group=snap.group,
            event_rows=self.config.delete_batch_size,
        )
        if stale is None:
            deleted = self.nodes.delete_guarded(ids, snap.latest_order, entry, swept or [])
        else:
            deleted = self.nodes.sweep_stale(stale, ids, snap.latest_order, entry)
        stats.kept_by_guard += len(ids) - len(deleted)
        stats.deleted += len(deleted)
        stats.bytes_freed += bytes_freed(deleted)
        if deleted:
            now = self._now()
            for no, part in entry.event_batches(deleted):  # saved together: all or none
                cycle.record_batch(phase, snap.snapshot_id, no, part, now, part.row_ids)
            self.log.save(cycle)
        self.nodes.mark_journal_logged(entry.batch_key)
        return deleted

    def _checkpoint(self, snap: AtomicSnapshot, phase: PrunePhase, point: dict[str, Any]) -> None:
        cycle = self._cycle(snap)
        cycle.progress(phase, point, self._now())
        self.log.save(cycle)

    def reconcile_journal(self) -> int:
        """After a crash between a delete and its event: append the missing NodesSwept events,
        so the audit never lacks a deleted node. Returns how many batches it logged."""
        logged = 0
        for entry in self.nodes.unlogged_journal():
            cycle = self.log.get(cycle_uuid(self.manager.group, entry.cycle_no), PruneCycle)
            parts = [
                (no, part)
                for no, part in entry.event_batches(entry.deleted)
                if no not in cycle.batches_logged
            ]
            if parts:
                phase, now = PrunePhase(entry.phase), self._now()
                # A cycle that moved on (failed, rolled back, finished) still audits them.
                record = (
                    cycle.record_batch
                    if cycle.accepts_batch(phase, entry.snapshot_id)
                    else cycle.record_recovered_batch
                )
                for no, part in parts:
                    record(phase, entry.snapshot_id, no, part, now, part.row_ids)
                self.log.save(cycle)
                logged += len(parts)
            self.nodes.mark_journal_logged(entry.batch_key)
        return logged
