"""One in-order pass over the event log that collects what every log invariant needs, so that
the machine feeds it only the new events after each step instead of re-reading the log."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID


@dataclass(frozen=True)
class SnapshotFacts:
    group: str
    snapshot_id: int
    cycle_no: int
    latest_order: int
    retained_from: int


@dataclass(frozen=True)
class AuditRow:
    """One hash named by an audit event, with the snapshot whose guard deleted it."""

    hash: bytes
    group: str
    cycle_no: int
    snapshot_id: int
    batch_no: int


@dataclass
class LockHolder:
    owner: str
    phase: str
    locked_at: datetime
    timeout_ms: int

    @property
    def expires_at(self) -> datetime:
        return self.locked_at + timedelta(milliseconds=self.timeout_ms)


#: Events whose `hashes` are the audit: a batch logged in time, or late from the journal.
AUDIT_EVENTS: Final = ("PruneCycle.NodesSwept", "PruneCycle.BatchRecovered")


def event_kind(event: Any) -> str:
    """The event's kind, e.g. PruneCycle.NodesSwept; shared with the machine, which checks
    what a contender appended."""
    return type(event).__qualname__


class LogFold:
    """Folds the event log once, in order, into what the log invariants need. Feed it events
    as they are appended (`feed`); its violation lists only grow.

    `gone(owner)` answers whether a lock holder is known to have exited; a takeover with
    reason "holder process exited" is legal only then. Without it, the reason is trusted."""

    def __init__(self, gone: Callable[[str], bool] | None = None) -> None:
        self.gone = gone
        self.events = 0
        self.legality: list[str] = []
        self.snapshot_use: list[str] = []
        self.lock: list[str] = []
        self.snapshots: dict[tuple[str, int], SnapshotFacts] = {}
        self.audit: list[AuditRow] = []
        self.holders: dict[str, LockHolder | None] = {}  # per group
        self._aggregates: dict[UUID, Any] = {}
        self._broken: set[UUID] = set()
        self._cycles: dict[UUID, tuple[str, int]] = {}  # cycle aggregate -> (group, cycle_no)
        self._cycle_snapshot: dict[UUID, int] = {}
        self._used: dict[UUID, set[int]] = {}  # every snapshot each cycle used
        self._lock_groups: dict[UUID, str] = {}

    def feed(self, events: Iterable[Any]) -> LogFold:
        for event in events:
            self.events += 1
            self._replay(event)
            kind = event_kind(event)
            if kind.startswith("Snapshot."):
                self._snapshot(kind, event)
            elif kind.startswith("PruneCycle."):
                self._cycle(kind, event)
            elif kind.startswith("PhaseLock."):
                self._lock(kind, event)
        return self

    # --- legality: every aggregate replays through its own event methods ------------------

    def _replay(self, event: Any) -> None:
        oid = event.originator_id
        if oid in self._broken:
            return
        try:
            self._aggregates[oid] = event.mutate(self._aggregates.get(oid))
        except Exception as exc:
            self._broken.add(oid)
            self.legality.append(
                f"{event_kind(event)} v{event.originator_version} of {oid} does not replay: "
                f"{type(exc).__name__}: {exc}"
            )

    # --- snapshots and cycles -------------------------------------------------------------

    def _snapshot(self, kind: str, e: Any) -> None:
        if kind == "Snapshot.Created":
            facts = SnapshotFacts(
                e.group,
                e.snapshot_id,
                e.cycle_no,
                e.latest_order,
                max(0, e.latest_order - e.protection_orders),
            )
            self.snapshots[(e.group, e.snapshot_id)] = facts

    def _cycle(self, kind: str, e: Any) -> None:
        oid = e.originator_id
        if kind == "PruneCycle.Created":
            self._cycles[oid] = (e.group, e.cycle_no)
            self._cycle_snapshot[oid] = e.snapshot_id
            self._used[oid] = {e.snapshot_id}
            self._snapshot_of_cycle(oid, e.snapshot_id, kind)
            return
        where = self._cycles.get(oid)
        if where is None:
            self.snapshot_use.append(f"{kind} for a cycle that was never created ({oid})")
            return
        group, cycle_no = where
        if kind == "PruneCycle.RolledBack":
            if e.new_snapshot_id <= self._cycle_snapshot[oid]:
                self.snapshot_use.append(
                    f"cycle {cycle_no} rolled back to snapshot {e.new_snapshot_id}, not newer "
                    f"than its snapshot {self._cycle_snapshot[oid]}"
                )
            self._cycle_snapshot[oid] = e.new_snapshot_id
            self._used[oid].add(e.new_snapshot_id)
            self._snapshot_of_cycle(oid, e.new_snapshot_id, kind)
        elif kind in (
            "PruneCycle.PhaseStarted",
            "PruneCycle.PhaseResumed",
            "PruneCycle.NodesSwept",
        ):
            if e.snapshot_id != self._cycle_snapshot[oid]:
                self.snapshot_use.append(
                    f"cycle {cycle_no}: {kind} used snapshot {e.snapshot_id}, the cycle's "
                    f"snapshot is {self._cycle_snapshot[oid]}"
                )
        elif kind == "PruneCycle.BatchRecovered" and e.snapshot_id not in self._used[oid]:
            # A batch logged late from the journal: it names a snapshot the cycle used.
            self.snapshot_use.append(
                f"cycle {cycle_no}: {kind} names snapshot {e.snapshot_id}, which the cycle "
                f"never used ({sorted(self._used[oid])})"
            )
        if kind in AUDIT_EVENTS:
            self.audit.extend(
                AuditRow(bytes(h), group, cycle_no, e.snapshot_id, e.batch_no) for h in e.hashes
            )

    def _snapshot_of_cycle(self, oid: UUID, snapshot_id: int, kind: str) -> None:
        group, cycle_no = self._cycles[oid]
        facts = self.snapshots.get((group, snapshot_id))
        if facts is None:
            self.snapshot_use.append(
                f"cycle {cycle_no}: {kind} names snapshot {snapshot_id}, which was never created"
            )
        elif facts.cycle_no != cycle_no:
            self.snapshot_use.append(
                f"cycle {cycle_no}: {kind} names snapshot {snapshot_id} of cycle {facts.cycle_no}"
            )

    # --- the lock -------------------------------------------------------------------------

    def _lock(self, kind: str, e: Any) -> None:
        oid = e.originator_id
        if kind == "PhaseLock.Created":
            self._lock_groups[oid] = e.group
            self.holders[e.group] = None
            return
        group = self._lock_groups.get(oid, str(oid))
        holder = self.holders.get(group)
        if kind == "PhaseLock.Locked":
            if holder is not None and holder.owner != e.owner:
                self.lock.append(
                    f"{e.owner} locked {e.phase} at {e.at} while {holder.owner} held "
                    f"{holder.phase} (expires {holder.expires_at})"
                )
            self.holders[group] = LockHolder(e.owner, e.phase, e.at, e.timeout_ms)
        elif kind == "PhaseLock.Renewed":
            if holder is None or holder.owner != e.owner:
                held = "nobody" if holder is None else holder.owner
                self.lock.append(f"{e.owner} renewed a lock held by {held}")
            elif e.at >= holder.expires_at:
                self.lock.append(f"{e.owner} renewed its lock at {e.at}, after it expired")
            else:
                self.holders[group] = LockHolder(e.owner, holder.phase, e.at, holder.timeout_ms)
        elif kind == "PhaseLock.Released":
            if holder is None or holder.owner != e.owner:
                held = "nobody" if holder is None else holder.owner
                self.lock.append(f"{e.owner} released a lock held by {held}")
            self.holders[group] = None
        elif kind == "PhaseLock.Expired":
            if holder is None:
                self.lock.append(f"lock expired at {e.at} while nobody held it")
            elif e.reason == "timed out" and e.at < holder.expires_at:
                self.lock.append(
                    f"{e.taken_over_by or 'recovery'} took over {holder.owner}'s live lock at "
                    f"{e.at}; it expires at {holder.expires_at}"
                )
            elif e.reason == "holder process exited" and not self._is_gone(holder.owner):
                self.lock.append(
                    f"{e.taken_over_by} took over {holder.owner}'s lock at {e.at} as "
                    f"'holder process exited', but {holder.owner} is still running"
                )
            elif e.reason not in ("timed out", "holder process exited"):
                self.lock.append(f"lock expired for an unknown reason {e.reason!r}")
            self.holders[group] = None

    def _is_gone(self, owner: str) -> bool:
        return True if self.gone is None else self.gone(owner)

    # --- queries --------------------------------------------------------------------------

    def protected_since(self) -> int:
        """The lowest order no snapshot so far allows to sweep: roots at or above it (and
        genesis, and pinned roots) must stay whole. 0 before the first snapshot."""
        return max((s.retained_from for s in self.snapshots.values()), default=0)

    def holder(self, group: str = "default") -> LockHolder | None:
        return self.holders.get(group)

    def latest_order_of(self, group: str, snapshot_id: int) -> int | None:
        facts = self.snapshots.get((group, snapshot_id))
        return None if facts is None else facts.latest_order
