"""A prune cycle: its three phases in the table's order, all on ONE snapshot and its ONE reach
set, with retries, rollback, resume after a crash and a clean stop. What each phase does is in
domain/sweeps.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import NoReturn

from domain.config import PruneConfig
from domain.cycle import PruneCycle, cycle_uuid
from domain.errors import (
    AggregateNotFoundError,
    ConcurrencyConflictError,
    EventLogUnreachableError,
    IllegalPhaseOrderError,
    LockContendedError,
    LockError,
    MissingNodeError,
    PrunerStoppedError,
    RecoveryExhaustedError,
    SnapshotError,
)
from domain.manager import AtomicSnapshotManager
from domain.phases import FAILED, IDLE, RECOVERING, ROLLED_BACK, PrunePhase
from domain.ports import (
    EventLog,
    NodeStorePort,
    Progress,
    ReachSet,
    ReachStorePort,
)
from domain.recovery import ErrorRecoveryManager
from domain.snapshot import AtomicSnapshot
from domain.sweeps import (  # re-exported: where callers have always found them
    FETCH_BATCH,
    CycleReport,
    PhaseStats,
    PhaseWork,
)

__all__ = ["FETCH_BATCH", "CycleReport", "PhaseStats", "Pruner"]


class Pruner(PhaseWork):
    def __init__(
        self,
        manager: AtomicSnapshotManager,
        nodes: NodeStorePort,
        reach_store: ReachStorePort,
        config: PruneConfig | None = None,
        progress: Progress | None = None,
        recovery: ErrorRecoveryManager | None = None,
    ) -> None:
        self.manager = manager
        self.log: EventLog = manager.log
        self.nodes = nodes
        self.reach_store = reach_store
        self.config = config or PruneConfig()
        self.progress = progress or (lambda phase, done, total: None)
        self.recovery = recovery or ErrorRecoveryManager(manager, sleep=lambda s: None)
        self._reach: ReachSet | None = None
        self._collected: ReachSet | None = None  # rows SweepExpired deleted (or the guard kept)
        self._lock_checked: datetime | None = None
        self._lock_check_every = timedelta(milliseconds=manager.config.lock_timeout_ms / 4)
        # Asked before every phase and every delete batch; True stops the cycle cleanly.
        self.should_stop: Callable[[], bool] = lambda: False

    # --- one whole cycle -----------------------------------------------------------------

    def run_cycle(self) -> CycleReport:
        """One cycle on one snapshot. Transient failures are retried inside a phase; a snapshot
        problem (tampered, expired, off-chain, reach set corrupt) or a sweep that keeps failing
        rolls the cycle back to BuildReach on a fresh snapshot; when that is not allowed or
        keeps failing, the cycle stops in Failed and RecoveryExhaustedError is raised. When
        `should_stop` turns True, the cycle stops before its next phase or delete batch, the
        lock is released, and PrunerStoppedError is raised: the next run resumes the cycle."""
        try:
            self._refuse_if_held()  # before touching the journal: it may be the holder's
            self.reconcile_journal()
            interrupted = self._interrupted()
            if interrupted is not None:
                snap, first, resume = interrupted
            else:
                snap = self.recovery.create_snapshot_with_recovery()
                cycle = PruneCycle(self.manager.group, snap.cycle_no, snap.snapshot_id, self._now())
                self.log.save(cycle)
                first, resume = PrunePhase.BUILD_REACH, False
        except ConcurrencyConflictError:
            # Another node appended first (both saw a dead holder and went to take over).
            raise LockContendedError(
                f"another pruner of group {self.manager.group!r} took over first"
            ) from None
        rcfg = self.recovery.config
        rollbacks = 0
        started = self._now()
        while True:
            report = CycleReport(snap.cycle_no, snap.snapshot_id, snap.latest_order)
            try:
                last = self._run_phases(snap, report, first, resume)
                break
            except PrunerStoppedError:
                self._release_held_lock()  # the phase's PhaseFailed is already recorded
                raise
            except EventLogUnreachableError:
                # No rollback through a log that is not there: the caller waits for it, and
                # the next run_cycle records the phase as failed and resumes it (_interrupted).
                raise
            except (MissingNodeError, LockError, IllegalPhaseOrderError) as exc:
                self._give_up(snap, exc)
            except SnapshotError as exc:
                allowed = rcfg.enable_snapshot_recovery and rollbacks < rcfg.max_phase_retries
                if not allowed or self._recovery_timed_out(started):
                    self._give_up(snap, exc)
                snap = self._roll_back(snap, exc)
                rollbacks += 1
                first, resume = PrunePhase.BUILD_REACH, False
            except Exception as exc:
                in_sweep = self.recovery.failing_phase(snap) != PrunePhase.BUILD_REACH.value
                allowed = rcfg.enable_phase_rollback and in_sweep
                if not allowed or rollbacks >= rcfg.max_phase_retries:
                    self._give_up(snap, exc)
                snap = self._roll_back(snap, exc)
                rollbacks += 1
                first, resume = PrunePhase.BUILD_REACH, False
        cycle = self._cycle(snap)
        cycle.complete(self._now())
        self.log.save(cycle)
        self.manager.release_snapshot(last)
        self.recovery.succeeded(snap.cycle_no)
        return report

    def _order(self) -> list[PrunePhase]:
        phases = [PrunePhase.BUILD_REACH, PrunePhase.SWEEP_EXPIRED]
        if self.config.enable_incremental_sweep:
            phases.append(PrunePhase.INCREMENTAL_SWEEP)
        return phases

    def _run_phases(
        self, snap: AtomicSnapshot, report: CycleReport, first: PrunePhase, resume: bool
    ) -> PrunePhase:
        self._reach = self._collected = None
        phases = self._order()
        bodies = {
            PrunePhase.BUILD_REACH: self._build_reach,
            PrunePhase.SWEEP_EXPIRED: self._sweep_expired,
            PrunePhase.INCREMENTAL_SWEEP: self._incremental_sweep,
        }
        for phase in phases[phases.index(first) :]:
            self._stop_point(phase)  # between phases: the cycle picks up with this one
            self.manager.lock_snapshot(phase)  # validates integrity, age and chain state
            self._phase(snap, phase, report, bodies[phase], resume=resume and phase is first)
        return phases[-1]

    def _interrupted(self) -> tuple[AtomicSnapshot, PrunePhase, bool] | None:
        """The group's last cycle, if a crash left it unfinished: where to pick it up. A phase
        cut short is recorded as failed and resumed (every phase is safe to run again); a
        cycle caught between phases goes on with the next one."""
        lock = self.manager.lock_info()
        if lock.current_snapshot_id is None:
            return None
        self._refuse_if_held()
        snap = self.manager.get_snapshot(lock.current_snapshot_id)
        return self._pick_up(snap)

    def _refuse_if_held(self) -> None:
        lock = self.manager.held_by_live_other()
        if lock is not None:
            # A live holder is running that cycle: touch nothing of it.
            raise LockContendedError(
                f"lock of group {self.manager.group!r} is held by {lock.describe_holder()}"
            )

    def _pick_up(self, snap: AtomicSnapshot) -> tuple[AtomicSnapshot, PrunePhase, bool] | None:
        try:
            cycle = self.log.get(cycle_uuid(snap.group, snap.cycle_no), PruneCycle)
        except AggregateNotFoundError:
            cycle = PruneCycle(snap.group, snap.cycle_no, snap.snapshot_id, self._now())
            self.log.save(cycle)
            return snap, PrunePhase.BUILD_REACH, False
        if cycle.finished:
            return None
        snap = self.manager.get_snapshot(cycle.snapshot_id)
        order = self._order()
        if cycle.state in (IDLE, ROLLED_BACK):
            return snap, PrunePhase.BUILD_REACH, False
        if cycle.state in (FAILED, RECOVERING):
            return snap, PrunePhase(cycle.failed_phase or order[0].value), True
        phase = PrunePhase(cycle.state)
        if cycle.phase_completed:
            if phase is order[-1]:
                return snap, phase, True  # only the cycle's completion is missing
            return snap, order[order.index(phase) + 1], False
        cycle.fail_phase(
            phase, "Interrupted", "the pruner stopped in the middle of it", self._now()
        )
        self.log.save(cycle)
        return snap, phase, True

    def _roll_back(self, snap: AtomicSnapshot, exc: BaseException) -> AtomicSnapshot:
        self._refuse_if_held()  # taken over meanwhile: the cycle is the new holder's
        try:
            return self.recovery.roll_back(snap, exc)
        except Exception as again:
            # Even the fresh snapshot could not be had: stop cleanly and free the lock.
            self._give_up(snap, again)

    def _recovery_timed_out(self, started: datetime) -> bool:
        limit = self.recovery.config.snapshot_recovery_timeout_secs
        return (self._now() - started).total_seconds() > limit

    def _give_up(self, snap: AtomicSnapshot, exc: BaseException) -> NoReturn:
        self._refuse_if_held()  # taken over meanwhile: the cycle is the new holder's
        self.recovery.give_up(snap, exc)
        lock = self.manager.lock_info()
        if lock.owner == self.manager.owner and lock.phase is not None:
            self.manager.release_snapshot(PrunePhase(lock.phase))
        raise RecoveryExhaustedError(
            f"cycle {snap.cycle_no} stopped in Failed: {type(exc).__name__}: {exc}"
        ) from exc

    def _phase(
        self,
        snap: AtomicSnapshot,
        phase: PrunePhase,
        report: CycleReport,
        body: Callable[[AtomicSnapshot, PhaseStats, CycleReport], None],
        *,
        resume: bool = False,
    ) -> None:
        cycle = self._cycle(snap)
        if resume and cycle.state == phase.value and cycle.phase_completed:
            return  # finished before the crash; only its successor was missing
        if resume:
            if cycle.state == FAILED:
                cycle.schedule_retry(cycle.attempts.get(phase.value, 1) + 1, 0, self._now())
            cycle.resume_phase(phase, snap.snapshot_id, self._now())
        else:
            cycle.start_phase(phase, snap.snapshot_id, self._now())
        self.log.save(cycle)
        stats = PhaseStats()
        started = self._now()

        def attempt() -> None:
            body(snap, stats, report)

        self.recovery.run_phase_with_recovery(phase, attempt, snapshot=snap)
        stats.seconds = (self._now() - started).total_seconds()
        report.phases[phase.value] = stats
        cycle = self._cycle(snap)
        cycle.complete_phase(phase, stats.as_dict(), self._now())
        self.log.save(cycle)

    def _release_held_lock(self) -> None:
        lock = self.manager.lock_info()
        if lock.owner == self.manager.owner and lock.phase is not None:
            self.manager.release_snapshot(PrunePhase(lock.phase))
