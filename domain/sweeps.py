"""The work inside the three phases: BuildReach's walk and the two sweeps. `Pruner`
(domain/pruning.py) runs them in order on one snapshot; this mixin holds what each phase does,
and DeleteWork (domain/deleting.py) the journaled, guarded delete every batch goes through.

Safety (DESIGN.md): BuildReach marks every node any retained root reaches, exactly; a sweep
deletes only unmarked nodes, and the store's DELETE re-checks written_order <= S.latest_order
inside the deleting transaction, so a hash that a writer put back after S survives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any

from domain.config import PruneConfig
from domain.deleting import DeleteWork
from domain.errors import (
    MissingNodeError,
    ReachSetCorruptError,
)
from domain.manager import AtomicSnapshotManager
from domain.phases import PrunePhase
from domain.ports import (
    MISSING_ROW,
    EventLog,
    NodeStorePort,
    Progress,
    ReachSet,
    ReachStorePort,
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


@dataclass
class _Pending:
    """SweepExpired's garbage not yet deleted, in walk order, and the root groups it came from:
    (offset of the group's first row in `garbage`, the group's root orders)."""

    garbage: list[int] = field(default_factory=list)
    groups: list[tuple[int, list[int]]] = field(default_factory=list)

    def add(self, orders: list[int], garbage: list[int]) -> None:
        self.groups.append((len(self.garbage), orders))
        self.garbage.extend(garbage)

    def take_groups_from(self, cut: int) -> list[int]:
        """Orders of the groups whose garbage all lies at or after `cut`."""
        done = [orders for start, orders in self.groups if start >= cut]
        self.groups = [(start, orders) for start, orders in self.groups if start < cut]
        return [order for orders in done for order in orders]

    def swept_through(self, last_walked: int) -> int:
        """Every expired root at or below this order is marked swept."""
        return self.groups[0][1][0] - 1 if self.groups else last_walked


class PhaseWork(DeleteWork):
    """The phases' bodies; state and wiring come from Pruner.__init__."""

    manager: AtomicSnapshotManager
    log: EventLog
    nodes: NodeStorePort
    reach_store: ReachStorePort
    config: PruneConfig
    progress: Progress
    should_stop: Callable[[], bool]
    _reach: ReachSet | None
    _collected: ReachSet | None
    _lock_checked: datetime | None
    _lock_check_every: timedelta

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
        pending = _Pending()
        for start in range(0, len(expired), ROOTS_PER_WALK):
            group = expired[start : start + ROOTS_PER_WALK]
            ids = [root_ids[root] for _, root in group if root in root_ids]
            pending.add([order for order, _ in group], self._unmarked_below(ids, reach, seen))
            done = start + len(group)
            if len(pending.garbage) >= self._commit_rows or done == len(expired):
                self._delete_roots(snap, pending, stats, everything=done == len(expired))
                stats.roots = done - sum(len(orders) for _, orders in pending.groups)
                point = {"swept_through_order": pending.swept_through(group[-1][0])}
                self._checkpoint(snap, PrunePhase.SWEEP_EXPIRED, point)
            self.progress(PrunePhase.SWEEP_EXPIRED.value, done, len(expired))
        stats.visited = len(seen)
        self._collected = seen

    def _delete_roots(
        self, snap: AtomicSnapshot, pending: _Pending, stats: PhaseStats, *, everything: bool
    ) -> None:
        """Deletes full transactions of garbage from the end of the walk backwards, so whatever
        a crash leaves is a prefix of the walk: still reachable from a root not yet marked
        swept. A root group is marked swept in the transaction that deletes the last of its
        garbage (the head of its part). What is left short of a full transaction waits for
        the next groups' garbage, unless `everything`: each COMMIT rewrites most of the hash
        index, so fewer, fuller transactions delete faster."""
        rows = self._commit_rows
        while len(pending.garbage) >= rows or (everything and pending.groups):
            cut = max(0, len(pending.garbage) - rows)
            ids = pending.garbage[cut:]
            swept = pending.take_groups_from(cut)
            del pending.garbage[cut:]
            self._delete(snap, PrunePhase.SWEEP_EXPIRED, ids, stats, swept=swept)

    def _unmarked_below(self, root_ids: list[int], reach: ReachSet, seen: ReachSet) -> list[int]:
        """Row ids under `root_ids` that no retained root reaches and that no earlier root of
        this sweep already collected (`seen`), parents before children. Rows already gone
        (a half-swept root of an earlier cycle) are left out."""
        found: list[int] = []
        frontier = seen.add_new(root_ids, unless_in=reach)
        while frontier:
            batch = frontier[-FETCH_BATCH:]
            del frontier[-FETCH_BATCH:]
            rows, children = self.nodes.expand(batch)
            found.extend(rows)
            frontier.extend(seen.add_new(children, unless_in=reach))
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
        # Rows deleted already: by this sweep (a node stale twice comes back) or by this run's
        # SweepExpired, whose garbage the stale index names too. Rows that SweepExpired's guard
        # kept are in there as well: this snapshot's guard would keep them again.
        gone = self._collected if self._collected is not None else self.reach_store.new()
        limit = self._commit_rows
        while entries := self.nodes.stale_entries(snap.retained_from_order, limit):
            # The writer recorded each replaced node's row id; only older entries need a lookup.
            ids = list(map(itemgetter(2), entries))
            if MISSING_ROW in ids:
                ids = [row_id for row_id in ids if row_id != MISSING_ROW]
                unplaced = (h for _, h, row_id, _ in entries if row_id == MISSING_ROW)
                ids += self.nodes.ids_of(list(dict.fromkeys(unplaced))).values()
            ids = gone.absent(ids, unless_in=reach)
            stats.visited += len(entries)
            deleted = self._delete(snap, PrunePhase.INCREMENTAL_SWEEP, ids, stats, entries)
            gone.add_new(row_ids_of(deleted))
            self.progress(PrunePhase.INCREMENTAL_SWEEP.value, stats.visited, None)
