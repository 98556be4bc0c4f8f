"""The three phases of a prune cycle, all on ONE snapshot and its ONE reach set.

Safety (DESIGN.md): BuildReach marks every node any retained root reaches, exactly; a sweep deletes
only unmarked nodes, and the store's DELETE re-checks written_order <= S.latest_order inside the
deleting transaction, so a hash that a writer put back after S survives."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn

from domain.config import PruneConfig
from domain.cycle import PruneCycle, cycle_uuid
from domain.errors import (
    AggregateNotFoundError,
    IllegalPhaseOrderError,
    LockContendedError,
    LockError,
    LockNotHeldError,
    MissingNodeError,
    ReachSetCorruptError,
    RecoveryExhaustedError,
    SnapshotError,
    SnapshotMismatchError,
)
from domain.manager import AtomicSnapshotManager
from domain.phases import FAILED, IDLE, RECOVERING, ROLLED_BACK, PrunePhase
from domain.ports import (
    EventLog,
    JournalEntry,
    NodeStorePort,
    Progress,
    ReachSet,
    ReachStorePort,
)
from domain.recovery import ErrorRecoveryManager
from domain.snapshot import AtomicSnapshot, Snapshot, snapshot_uuid

FETCH_BATCH = 512


@dataclass
class PhaseStats:
    visited: int = 0
    deleted: int = 0
    bytes_freed: int = 0
    kept_by_guard: int = 0
    roots: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}


@dataclass
class CycleReport:
    cycle_no: int
    snapshot_id: int
    latest_order: int
    reach_count: int = 0
    reach_digest: str = ""
    phases: dict[str, PhaseStats] = field(default_factory=dict)


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Pruner:
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

    # --- one whole cycle -----------------------------------------------------------------

    def run_cycle(self) -> CycleReport:
        """One cycle on one snapshot. Transient failures are retried inside a phase; a snapshot
        problem (tampered, expired, off-chain, reach set corrupt) or a sweep that keeps failing
        rolls the cycle back to BuildReach on a fresh snapshot; when that is not allowed or
        keeps failing, the cycle stops in Failed and RecoveryExhaustedError is raised."""
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
        rcfg = self.recovery.config
        rollbacks = 0
        started = self._now()
        while True:
            report = CycleReport(snap.cycle_no, snap.snapshot_id, snap.latest_order)
            try:
                last = self._run_phases(snap, report, first, resume)
                break
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
        self._reach = None
        phases = self._order()
        bodies = {
            PrunePhase.BUILD_REACH: self._build_reach,
            PrunePhase.SWEEP_EXPIRED: self._sweep_expired,
            PrunePhase.INCREMENTAL_SWEEP: self._incremental_sweep,
        }
        for phase in phases[phases.index(first) :]:
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
        lock = self.manager.lock_info()
        if (
            lock.is_held
            and lock.owner != self.manager.owner
            and not lock.is_expired(self._now())
            and not self.manager._gone(lock)
        ):
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
        try:
            return self.recovery.roll_back(snap, exc)
        except Exception as again:
            # Even the fresh snapshot could not be had: stop cleanly and free the lock.
            self._give_up(snap, again)

    def _recovery_timed_out(self, started: datetime) -> bool:
        limit = self.recovery.config.snapshot_recovery_timeout_secs
        return (self._now() - started).total_seconds() > limit

    def _give_up(self, snap: AtomicSnapshot, exc: BaseException) -> NoReturn:
        self.recovery.give_up(snap, exc)
        lock = self.manager.lock_info()
        if lock.owner == self.manager.owner and lock.phase is not None:
            self.manager.release_snapshot(PrunePhase(lock.phase))
        raise RecoveryExhaustedError(
            f"cycle {snap.cycle_no} stopped in Failed: {type(exc).__name__}: {exc}"
        ) from exc

    def _now(self) -> datetime:
        return self.manager.clock.now()

    def _cycle(self, snap: AtomicSnapshot) -> PruneCycle:
        return self.log.get(cycle_uuid(snap.group, snap.cycle_no), PruneCycle)

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

    def _ensure_holding(self, phase: PrunePhase, snap: AtomicSnapshot) -> None:
        """Checked before every delete batch: a pruner whose lock was taken over stops."""
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

    # --- BuildReach ----------------------------------------------------------------------

    def _build_reach(self, snap: AtomicSnapshot, stats: PhaseStats, report: CycleReport) -> None:
        roots = self.nodes.retained_roots(snap.retained_from_order, snap.latest_order)
        stats.roots = len(roots)
        reach = self.reach_store.new()
        self._mark(roots, reach, stats)
        digest = self.reach_store.save(snap.snapshot_id, reach)
        snapshot = self.log.get(snapshot_uuid(snap.group, snap.snapshot_id), Snapshot)
        snapshot.record_reach(len(reach), digest, self.manager.clock.now())
        self.log.save(snapshot)
        report.reach_count, report.reach_digest = len(reach), digest
        self._reach = reach

    def _reach_set(self, snap: AtomicSnapshot) -> ReachSet:
        """The sweep's mark set: loaded from disk and digest-checked, so a sweep never trusts a
        truncated or altered file (and a resumed sweep can trust an intact one)."""
        if not self.manager.config.enable_persistence and self._reach is not None:
            return self._reach
        snapshot = self.log.get(snapshot_uuid(snap.group, snap.snapshot_id), Snapshot)
        if snapshot.reach_digest is None:
            raise ReachSetCorruptError(f"snapshot {snap.snapshot_id} has no reach set recorded")
        return self.reach_store.load(snap.snapshot_id, snapshot.reach_digest)

    def _mark(self, roots: list[bytes], reach: ReachSet, stats: PhaseStats) -> None:
        frontier = list(dict.fromkeys(r for r in roots if any(r)))
        children = self.nodes.children
        while frontier:
            batch = list(dict.fromkeys(frontier[-FETCH_BATCH:]))
            del frontier[-FETCH_BATCH:]
            records = self.nodes.fetch(batch)
            if len(records) != len(batch):
                missing = set(batch) - {r.hash for r in records}
                raise MissingNodeError(
                    f"{len(missing)} node(s) reachable from a retained root are missing, "
                    f"e.g. {next(iter(missing)).hex()}"
                )
            for rec in records:
                if rec.row_id in reach:
                    continue
                reach.add(rec.row_id)
                frontier.extend(children(rec.data))
            stats.visited = len(reach)
            self.progress(PrunePhase.BUILD_REACH.value, stats.visited, None)

    # --- SweepExpired --------------------------------------------------------------------

    def _sweep_expired(self, snap: AtomicSnapshot, stats: PhaseStats, report: CycleReport) -> None:
        reach = self._reach_set(snap)
        expired = self.nodes.expired_roots(snap.retained_from_order)
        seen: set[int] = set()
        pending: list[int] = []  # garbage of whole roots, in discovery order
        pending_roots: list[int] = []
        for done, (order, root) in enumerate(expired, start=1):
            pending.extend(self._unmarked_below(root, reach, seen))
            pending_roots.append(order)
            if len(pending) >= self.config.delete_batch_size or done == len(expired):
                self._delete_roots(snap, pending, pending_roots, stats)
                stats.roots = done
                self._checkpoint(snap, PrunePhase.SWEEP_EXPIRED, {"swept_through_order": order})
                pending, pending_roots = [], []
            self.progress(PrunePhase.SWEEP_EXPIRED.value, done, len(expired))
        stats.visited = len(seen)

    def _delete_roots(
        self, snap: AtomicSnapshot, garbage: list[int], orders: list[int], stats: PhaseStats
    ) -> None:
        """Deletes in reverse discovery order, so whatever a crash leaves is a prefix of the
        walk: still reachable from a root that is not yet marked swept (marking happens in
        the last transaction), and the next cycle walks it again."""
        garbage.reverse()
        size = self.config.delete_batch_size
        chunks = list(_batches(garbage, size)) or [[]]
        for i, ids in enumerate(chunks):
            last = i == len(chunks) - 1
            self._delete(snap, PrunePhase.SWEEP_EXPIRED, ids, stats, swept=orders if last else [])

    def _unmarked_below(self, root: bytes, reach: ReachSet, seen: set[int]) -> list[int]:
        """Row ids under `root` that no retained root reaches and that no earlier root of this
        sweep already collected, parents before children."""
        found: list[int] = []
        frontier = [root] if any(root) else []
        while frontier:
            batch = list(dict.fromkeys(frontier[-FETCH_BATCH:]))
            del frontier[-FETCH_BATCH:]
            for rec in self.nodes.fetch(batch):
                if rec.row_id in reach or rec.row_id in seen:
                    continue
                seen.add(rec.row_id)
                found.append(rec.row_id)
                frontier.extend(self.nodes.children(rec.data))
        return found

    # --- IncrementalSweep ----------------------------------------------------------------

    def _incremental_sweep(
        self, snap: AtomicSnapshot, stats: PhaseStats, report: CycleReport
    ) -> None:
        reach = self._reach_set(snap)
        limit = self.config.delete_batch_size
        while entries := self.nodes.stale_entries(snap.retained_from_order, limit):
            hashes = list(dict.fromkeys(h for _, h in entries))
            records = self.nodes.fetch(hashes)
            ids = [r.row_id for r in records if r.row_id not in reach]
            stats.visited += len(entries)
            self._delete(snap, PrunePhase.INCREMENTAL_SWEEP, ids, stats, entries)
            self.progress(PrunePhase.INCREMENTAL_SWEEP.value, stats.visited, None)

    # --- deletes, journal and audit ------------------------------------------------------

    def _delete(
        self,
        snap: AtomicSnapshot,
        phase: PrunePhase,
        ids: list[int],
        stats: PhaseStats,
        stale: list[tuple[int, bytes]] | None = None,
        swept: list[int] | None = None,
    ) -> None:
        self._ensure_holding(phase, snap)
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
        )
        if stale is None:
            deleted = self.nodes.delete_guarded(ids, snap.latest_order, entry, swept or [])
        else:
            deleted = self.nodes.sweep_stale(stale, ids, snap.latest_order, entry)
        stats.kept_by_guard += len(ids) - len(deleted)
        stats.deleted += len(deleted)
        stats.bytes_freed += sum(n for _, n in deleted)
        if deleted:
            cycle.record_batch(phase, snap.snapshot_id, batch_no, deleted, self.manager.clock.now())
            self.log.save(cycle)
        self.nodes.mark_journal_logged(entry.batch_key)

    def _checkpoint(self, snap: AtomicSnapshot, phase: PrunePhase, point: dict[str, Any]) -> None:
        cycle = self._cycle(snap)
        cycle.progress(phase, point, self.manager.clock.now())
        self.log.save(cycle)

    def reconcile_journal(self) -> int:
        """After a crash between a delete and its event: append the missing NodesSwept events,
        so the audit never lacks a deleted node. Returns how many batches it logged."""
        logged = 0
        for entry in self.nodes.unlogged_journal():
            cycle = self.log.get(cycle_uuid(self.manager.group, entry.cycle_no), PruneCycle)
            if entry.batch_no not in cycle.batches_logged and entry.deleted:
                phase, now = PrunePhase(entry.phase), self._now()
                args = (phase, entry.snapshot_id, entry.batch_no, entry.deleted, now)
                if cycle.accepts_batch(phase, entry.snapshot_id):
                    cycle.record_batch(*args)
                else:  # the cycle moved on (failed, rolled back, finished): still audited
                    cycle.record_recovered_batch(*args)
                self.log.save(cycle)
                logged += 1
            self.nodes.mark_journal_logged(entry.batch_key)
        return logged
