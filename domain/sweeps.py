"""The work inside the three phases: BuildReach's walk, the two sweeps, and the journaled,
guarded delete every batch goes through. `Pruner` (domain/pruning.py) runs them in order on
one snapshot; this mixin holds what each phase does.

Safety (DESIGN.md): BuildReach marks every node any retained root reaches, exactly; a sweep
deletes only unmarked nodes, and the store's DELETE re-checks written_order <= S.latest_order
inside the deleting transaction, so a hash that a writer put back after S survives."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any

from domain.config import PruneConfig
from domain.cycle import PruneCycle, cycle_uuid
from domain.errors import (
    LockNotHeldError,
    MissingNodeError,
    PrunerStoppedError,
    ReachSetCorruptError,
    SnapshotMismatchError,
)
from domain.manager import AtomicSnapshotManager
from domain.phases import PrunePhase
from domain.ports import (
    MISSING_ROW,
    EventLog,
    JournalEntry,
    NodeStorePort,
    Progress,
    ReachSet,
    ReachStorePort,
    StaleEntry,
    row_ids_of,
)
from domain.snapshot import AtomicSnapshot, Snapshot, snapshot_uuid

# Rows per `expand` call of a walk.
FETCH_BATCH = 512
# Expired roots SweepExpired walks together: neighbouring roots share most of their garbage's
# upper levels, and one walk over many roots makes few large lookups instead of many small ones.
ROOTS_PER_WALK = 64


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


class PhaseWork:
    """The phases' bodies; state and wiring come from Pruner.__init__."""

    manager: AtomicSnapshotManager
    log: EventLog
    nodes: NodeStorePort
    reach_store: ReachStorePort
    config: PruneConfig
    progress: Progress
    should_stop: Callable[[], bool]
    _reach: ReachSet | None
    _lock_checked: datetime | None
    _lock_check_every: timedelta

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

    def _root_ids(self, roots: list[bytes]) -> dict[bytes, int]:
        """Row ids of the stored ones among `roots` (the empty tree has no node)."""
        wanted = list(dict.fromkeys(r for r in roots if any(r)))
        return self.nodes.ids_of(wanted)

    def _mark(self, roots: list[bytes], reach: ReachSet, stats: PhaseStats) -> None:
        """Marks every row reachable from `roots`, by row id: the reach set itself is the
        visited set, so each node is looked up once however many parents share it."""
        ids = self._root_ids(roots)
        missing_roots = {r for r in roots if any(r)} - ids.keys()
        if missing_roots:
            raise MissingNodeError(
                f"{len(missing_roots)} retained root(s) are missing, "
                f"e.g. {next(iter(missing_roots)).hex()}"
            )
        frontier = reach.add_new(ids.values())
        while frontier:
            batch = frontier[-FETCH_BATCH:]
            del frontier[-FETCH_BATCH:]
            found, children = self.nodes.expand(batch)
            if len(found) != len(batch):
                missing = sorted(set(batch) - set(found))
                raise MissingNodeError(
                    f"{len(missing)} node(s) reachable from a retained root are missing: "
                    f"row(s) {', '.join(map(str, missing[:5]))}"
                    + (" (row 0: a child whose hash is not stored)" if missing[0] == 0 else "")
                )
            frontier.extend(reach.add_new(children))
            stats.visited = len(reach)
            self.progress(PrunePhase.BUILD_REACH.value, stats.visited, None)
            self._keep_lock(PrunePhase.BUILD_REACH)
            self._stop_point(PrunePhase.BUILD_REACH)  # a walk has nothing to leave half done

    # --- SweepExpired --------------------------------------------------------------------

    def _sweep_expired(self, snap: AtomicSnapshot, stats: PhaseStats, report: CycleReport) -> None:
        reach = self._reach_set(snap)
        expired = self.nodes.expired_roots(snap.retained_from_order)
        root_ids = self._root_ids([root for _, root in expired])
        seen = self.reach_store.new()  # unmarked rows this sweep has collected
        pending: list[int] = []  # garbage of whole roots, in discovery order
        pending_roots: list[int] = []
        for start in range(0, len(expired), ROOTS_PER_WALK):
            group = expired[start : start + ROOTS_PER_WALK]
            ids = [root_ids[root] for _, root in group if root in root_ids]
            pending.extend(self._unmarked_below(ids, reach, seen))
            pending_roots.extend(order for order, _ in group)
            done = start + len(group)
            if len(pending) >= self._commit_rows or done == len(expired):
                self._delete_roots(snap, pending, pending_roots, stats)
                stats.roots = done
                last = group[-1][0]
                self._checkpoint(snap, PrunePhase.SWEEP_EXPIRED, {"swept_through_order": last})
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
        chunks = list(_batches(garbage, self._commit_rows)) or [[]]
        for i, ids in enumerate(chunks):
            last = i == len(chunks) - 1
            self._delete(snap, PrunePhase.SWEEP_EXPIRED, ids, stats, swept=orders if last else [])

    def _unmarked_below(self, root_ids: list[int], reach: ReachSet, seen: ReachSet) -> list[int]:
        """Row ids under `root_ids` that no retained root reaches and that no earlier root of
        this sweep already collected (`seen`), parents before children. Rows already gone
        (a half-swept root of an earlier cycle) are left out."""
        found: list[int] = []
        frontier = seen.add_new(reach.absent(root_ids))
        while frontier:
            batch = frontier[-FETCH_BATCH:]
            del frontier[-FETCH_BATCH:]
            rows, children = self.nodes.expand(batch)
            found.extend(rows)
            frontier.extend(seen.add_new(reach.absent(children)))
            self._keep_lock(PrunePhase.SWEEP_EXPIRED)
        return found

    @property
    def _commit_rows(self) -> int:
        return self.config.delete_batch_size * self.config.batches_per_commit

    def _keep_lock(self, phase: PrunePhase) -> None:
        """A long walk renews its lock too; reading the lock costs a query, so only every
        quarter timeout by this pruner's clock."""
        now = self._now()
        if self._lock_checked is None or now - self._lock_checked >= self._lock_check_every:
            self._lock_checked = now
            self.manager.renew_lock(phase)

    # --- IncrementalSweep ----------------------------------------------------------------

    def _incremental_sweep(
        self, snap: AtomicSnapshot, stats: PhaseStats, report: CycleReport
    ) -> None:
        reach = self._reach_set(snap)
        gone = self.reach_store.new()  # rows this sweep deleted: a node stale twice comes back
        limit = self._commit_rows
        while entries := self.nodes.stale_entries(snap.retained_from_order, limit):
            # The writer recorded each replaced node's row id; only older entries need a lookup.
            ids = [row_id for _, _, row_id in entries if row_id != MISSING_ROW]
            if len(ids) < len(entries):
                unplaced = (h for _, h, row_id in entries if row_id == MISSING_ROW)
                ids += self.nodes.ids_of(list(dict.fromkeys(unplaced))).values()
            ids = gone.absent(reach.absent(ids))
            stats.visited += len(entries)
            deleted = self._delete(snap, PrunePhase.INCREMENTAL_SWEEP, ids, stats, entries)
            gone.add_new(row_ids_of(deleted))
            self.progress(PrunePhase.INCREMENTAL_SWEEP.value, stats.visited, None)

    # --- deletes, journal and audit ------------------------------------------------------

    def _delete(
        self,
        snap: AtomicSnapshot,
        phase: PrunePhase,
        ids: list[int],
        stats: PhaseStats,
        stale: list[StaleEntry] | None = None,
        swept: list[int] | None = None,
    ) -> list[tuple[bytes, int]]:
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
        stats.bytes_freed += sum(map(itemgetter(1), deleted))
        if deleted:
            now = self.manager.clock.now()
            for no, part in entry.event_batches(deleted):  # saved together: all or none
                cycle.record_batch(phase, snap.snapshot_id, no, part, now, part.row_ids)
            self.log.save(cycle)
        self.nodes.mark_journal_logged(entry.batch_key)
        return deleted

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
