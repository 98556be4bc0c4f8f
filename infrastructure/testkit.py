"""A property-testing kit for prunelog: invariants, Hypothesis strategies and a stateful machine.

Three layers, each usable on its own (see docs/testing-your-phases.md):

1. **Invariants** as plain functions that return a list of violation strings (empty = holds),
   and `assert_invariants`, which raises an `InvariantViolation` subclass naming every
   violation. They read only the state store and the event log, never the pruner's memory:
   - `store_violations`: invariant I, every protected root is whole (re-hashed);
   - `legality_violations`: every aggregate replays through its event methods, so the phase
     table re-checks the order of every cycle;
   - `snapshot_use_violations`: each cycle attempt used one snapshot, its own;
   - `lock_violations`: one live lock holder at a time; a takeover only after a timeout or
     from a holder that really exited;
   - `audit_violations`: every hash an audit event names is gone from the store, or was
     written again after the deleting snapshot;
   - `unaudited_deletions`, `garbage_violations` and `projection_violations`.
2. **Strategies**: `writer_transactions` (updates, deletes, reverts that reuse hashes,
   objects sharing field trees), `faults` and `fault_schedules`, `granularities`.
3. **A stateful machine**, `PruningMachine`, that runs the real components on temp files: a
   writer on the SQLite state store, a pruner process in its own thread that stops at every
   yield point (a phase start, a marking batch, a delete batch, a phase end) so that writes,
   crashes, clock jumps, a second pruner and injected faults land between its steps. The
   invariants are checked after every step; at teardown the writer stops, two clean cycles
   run, and no garbage may remain. `pruning_machine(Adapters(...), MachineConfig(...))` builds
   a machine over your own NodeStorePort, ReachStorePort, manager or Pruner subclass.

Needs the `test` extra (Hypothesis).
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar, cast
from uuid import UUID

from eventsourcing.domain import Aggregate
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from domain.config import PruneConfig, RecoveryConfig, SnapshotManagerConfig
from domain.errors import LockContendedError
from domain.manager import AtomicSnapshotManager
from domain.phases import PrunePhase
from domain.ports import (
    EventLog,
    HolderLiveness,
    JournalEntry,
    NodeRecord,
    NodeStorePort,
    ReachStorePort,
)
from domain.pruning import CycleReport, Pruner
from domain.recovery import ErrorRecoveryManager
from infrastructure.audit_checks import check_store
from infrastructure.clock import ManualClock
from infrastructure.eventlog import STATE_FILE
from infrastructure.hashing import integrity_hash
from infrastructure.runtime import Runtime, Settings
from infrastructure.sqlite_nodes import FileReachStore, SqliteNodeStore
from infrastructure.state_store import SqliteStateStore
from infrastructure.workload import WorkloadWriter, chain_timestamp_for
from projections.runner import ProjectionRunner

A = TypeVar("A", bound=Aggregate)

# --- violations ------------------------------------------------------------------------------


class InvariantViolation(AssertionError):
    """One kind of invariant does not hold; `violations` lists every instance found."""

    invariant: ClassVar[str] = "an invariant"

    def __init__(self, violations: Sequence[str]) -> None:
        self.violations = list(violations)
        shown = "\n  - ".join(self.violations[:20])
        more = f"\n  ... and {len(self.violations) - 20} more" if len(self.violations) > 20 else ""
        super().__init__(f"{self.invariant} is broken:\n  - {shown}{more}")


class SafetyViolation(InvariantViolation):
    invariant = "invariant I (every protected root is fully readable)"


class LogOrderViolation(InvariantViolation):
    invariant = "the legal phase order of the log"


class SnapshotUseViolation(InvariantViolation):
    invariant = "one snapshot per cycle attempt"


class LockViolation(InvariantViolation):
    invariant = "at most one live lock holder"


class ContentionViolation(InvariantViolation):
    invariant = "a pruner refused the lock leaves the log alone"


class AuditViolation(InvariantViolation):
    invariant = "the audit names exactly the deleted nodes"


class ProjectionViolation(InvariantViolation):
    invariant = "every projection equals a fold over the log"


class LivenessViolation(InvariantViolation):
    invariant = "garbage eventually goes away"


# --- folding the log -------------------------------------------------------------------------


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


def _kind(event: Any) -> str:
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
            kind = _kind(event)
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
                f"{_kind(event)} v{event.originator_version} of {oid} does not replay: "
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


# --- invariants as plain functions -----------------------------------------------------------


def legality_violations(events: Iterable[Any]) -> list[str]:
    """Replays every aggregate through its event methods: the phase table re-checks order."""
    return LogFold().feed(events).legality


def snapshot_use_violations(events: Iterable[Any]) -> list[str]:
    """Phase and sweep events name the cycle's current snapshot (a rollback names the new one,
    newer, created for the same cycle)."""
    return LogFold().feed(events).snapshot_use


def lock_violations(events: Iterable[Any], gone: Callable[[str], bool] | None = None) -> list[str]:
    """At most one holder per lock; takeovers only after the timeout, or from a gone holder."""
    return LogFold(gone).feed(events).lock


def protected_since(events: Iterable[Any]) -> int:
    return LogFold().feed(events).protected_since()


def store_violations(store: SqliteStateStore, since_order: int) -> list[str]:
    """Invariant I: every root with order >= since_order, genesis and every pinned root is
    fully readable and hashes correctly."""
    check = check_store(store, since_order)
    out = []
    if check.missing:
        out.append(f"{check.missing} node(s) missing under roots with order >= {since_order}")
    if check.corrupt:
        out.append(f"{check.corrupt} node(s) corrupt under roots with order >= {since_order}")
    return out


def garbage_violations(store: SqliteStateStore, since_order: int) -> list[str]:
    check = check_store(store, since_order)
    if check.unreachable_stored:
        return [
            f"{check.unreachable_stored} stored node(s) are reachable from no root with order "
            f">= {since_order}"
        ]
    return []


def _stored_orders(store: SqliteStateStore, hashes: Sequence[bytes]) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    unique = list(dict.fromkeys(hashes))
    for i in range(0, len(unique), 500):
        chunk = unique[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = store.connection.execute(
            f"SELECT hash, written_order FROM nodes WHERE hash IN ({marks})", chunk
        )
        out.update((bytes(h), int(o)) for h, o in rows)
    return out


def audit_violations(log: LogFold | Iterable[Any], store: SqliteStateStore) -> list[str]:
    """Every hash an audit event (AUDIT_EVENTS) names is gone from `nodes`, or was written again
    after the deletion (its written_order > the deleting snapshot's latest_order)."""
    fold = log if isinstance(log, LogFold) else LogFold().feed(log)
    stored = _stored_orders(store, [row.hash for row in fold.audit])
    out = []
    for row in fold.audit:
        order = stored.get(row.hash)
        if order is None:
            continue
        latest = fold.latest_order_of(row.group, row.snapshot_id)
        if latest is None or order <= latest:
            out.append(
                f"cycle {row.cycle_no} batch {row.batch_no} (snapshot {row.snapshot_id}, "
                f"latest_order {latest}) names {row.hash.hex()[:16]}, which is still stored "
                f"with written_order {order}"
            )
    return out


def unaudited_deletions(
    log: LogFold | Iterable[Any], ever_stored: Iterable[bytes], store: SqliteStateStore
) -> list[str]:
    """Every node that was stored once and is gone now is named by some audit event.
    Holds whenever no delete is between its commit and its event (e.g. after a clean cycle)."""
    fold = log if isinstance(log, LogFold) else LogFold().feed(log)
    ever = list(ever_stored)
    still = set(_stored_orders(store, ever))
    audited = {row.hash for row in fold.audit}
    lost = [h for h in ever if h not in still and h not in audited]
    if not lost:
        return []
    return [f"{len(lost)} deleted node(s) are in no audit event, e.g. {lost[0].hex()[:16]}"]


def projection_violations(runner: ProjectionRunner) -> list[str]:
    """Catches every projection up, then compares each with a fresh fold over the log: one
    in-memory replay for all of them (what `ProjectionRunner.verify` does one at a time)."""
    runner.catch_up()
    positions = {name: runner.position(name) for name in runner.projections}
    scratch = ProjectionRunner(":memory:", runner.source, list(runner.projections.values()))
    out = []
    try:
        for until in sorted(set(positions.values())):
            names = [n for n, p in positions.items() if p == until]
            scratch.catch_up(names, until=until)
            out += [
                f"projection {name!r} differs from a rebuild at position {until}"
                for name in names
                if scratch.digest(name) != runner.digest(name)
            ]
    finally:
        scratch.close()
    return out


#: The order `assert_invariants` checks in: the first kind that fails is raised.
CHECK_ORDER: Final = (
    SafetyViolation,
    LogOrderViolation,
    SnapshotUseViolation,
    LockViolation,
    AuditViolation,
    ProjectionViolation,
)


def check_invariants(
    store: SqliteStateStore,
    log: LogFold | Iterable[Any],
    *,
    runner: ProjectionRunner | None = None,
    gone: Callable[[str], bool] | None = None,
) -> dict[type[InvariantViolation], list[str]]:
    """Every invariant that holds at any moment (not garbage, which needs quiet): a map from
    violation kind to its violations, empty lists left out."""
    fold = log if isinstance(log, LogFold) else LogFold(gone).feed(log)
    found: dict[type[InvariantViolation], list[str]] = {
        SafetyViolation: store_violations(store, fold.protected_since()),
        LogOrderViolation: list(fold.legality),
        SnapshotUseViolation: list(fold.snapshot_use),
        LockViolation: list(fold.lock),
        AuditViolation: audit_violations(fold, store),
        ProjectionViolation: [] if runner is None else projection_violations(runner),
    }
    return {kind: found[kind] for kind in CHECK_ORDER if found[kind]}


def assert_invariants(
    store: SqliteStateStore,
    log: LogFold | Iterable[Any],
    *,
    runner: ProjectionRunner | None = None,
    gone: Callable[[str], bool] | None = None,
) -> None:
    """Raises the first (in CHECK_ORDER) InvariantViolation subclass that has violations.
    `log` is the event log's events in order (e.g. `list(rt.log.events())`) or a LogFold."""
    for kind, violations in check_invariants(store, log, runner=runner, gone=gone).items():
        raise kind(violations)


# --- strategies ------------------------------------------------------------------------------

#: Field sets that objects draw from, so that equal field trees sit under different keys.
TEMPLATES: Final[tuple[Mapping[bytes, bytes], ...]] = (
    {b"f0": b"t0"},
    {b"f0": b"t1", b"f1": b"t1"},
    {b"f0": b"t2", b"f1": b"t2", b"f2": b"t2"},
    {b"f0": b"t0", b"f1": b"t1", b"f2": b"t2", b"f3": b"t3"},
)


@dataclass(frozen=True)
class WriterTx:
    """One writer transaction for `SqliteStateStore.commit_tx`: plain keys set to a value
    (None deletes) and object keys set to a field map (None deletes the object)."""

    changes: Mapping[bytes, bytes | None]
    objects: Mapping[bytes, Mapping[bytes, bytes] | None]

    def commit(self, store: SqliteStateStore) -> int:
        """Commits as the next tx_order; returns that order."""
        latest = store.latest()
        order = 0 if latest is None else latest.tx_order + 1
        store.commit_tx(
            self.changes, chain_timestamp=chain_timestamp_for(order), objects=self.objects
        )
        return order


def writer_transactions(
    keys: int = 6, values: int = 4, objects: int = 3, max_changes: int = 4
) -> st.SearchStrategy[WriterTx]:
    """Transactions over a small key space and a small value alphabet, so that a key often goes
    back to a value it had (a revert: the old leaf hash comes back), and objects that draw
    their fields from TEMPLATES (equal field trees shared under different keys: a DAG)."""
    plain = st.dictionaries(
        st.integers(0, keys - 1).map(lambda i: b"k%d" % i),
        st.one_of(st.none(), st.integers(0, values - 1).map(lambda i: b"v%d" % i)),
        max_size=max_changes,
    )
    objs = st.dictionaries(
        st.integers(0, objects - 1).map(lambda i: b"o%d" % i),
        st.one_of(st.none(), st.sampled_from(TEMPLATES)),
        max_size=max(1, max_changes // 2),
    )
    return st.builds(WriterTx, plain, objs).filter(lambda tx: bool(tx.changes or tx.objects))


#: NodeStorePort methods a fault can hit.
FAULT_METHODS: Final = (
    "retained_roots",
    "expired_roots",
    "fetch",
    "delete_guarded",
    "stale_entries",
    "sweep_stale",
    "unlogged_journal",
)


@dataclass(frozen=True)
class FaultSpec:
    """A one-shot fault: after `skip` calls of `method` go through, the next one raises
    sqlite3.OperationalError ("database is locked"). With `after_call`, that call does its
    work first (a delete commits) and the error comes after: a lost reply."""

    method: str
    after_call: bool = False
    skip: int = 0

    def __post_init__(self) -> None:
        if self.method not in FAULT_METHODS:
            raise ValueError(f"no NodeStorePort method {self.method!r}; one of {FAULT_METHODS}")


def faults(
    methods: Sequence[str] = FAULT_METHODS, max_skip: int = 3
) -> st.SearchStrategy[FaultSpec]:
    return st.builds(
        FaultSpec, st.sampled_from(list(methods)), st.booleans(), st.integers(0, max_skip)
    )


def fault_schedules(
    methods: Sequence[str] = FAULT_METHODS, max_size: int = 3
) -> st.SearchStrategy[list[FaultSpec]]:
    return st.lists(faults(methods), max_size=max_size)


#: How far one pruner rule runs: to the next yield point of any kind, to the next phase
#: start, delete batch or phase end, or to the end of the cycle.
GRANULARITIES: Final = ("next", "phase_start", "batch", "phase_end", "cycle")


def granularities() -> st.SearchStrategy[str]:
    return st.sampled_from(GRANULARITIES)


# --- wrappers that give the pruner yield points ------------------------------------------------

Pause = Callable[[str, str], None]


def injected_error(spec: FaultSpec) -> sqlite3.OperationalError:
    return sqlite3.OperationalError(f"database is locked (injected into {spec.method})")


class FaultPlan:
    """Armed one-shot faults. A fault belongs to the environment, not to one process: the
    machine shares one plan with every pruner process it opens, so it outlives a crash."""

    def __init__(self) -> None:
        self._armed: list[tuple[FaultSpec, list[int]]] = []  # spec, [calls to let through]

    def arm(self, spec: FaultSpec) -> None:
        self._armed.append((spec, [spec.skip]))

    def disarm(self) -> None:
        self._armed.clear()

    @property
    def armed(self) -> list[FaultSpec]:
        return [spec for spec, _ in self._armed]

    def enter(self, method: str) -> FaultSpec | None:
        """Called on entry to `method`: raises a fault due now, or returns one due after the
        call (`after_call`), or None."""
        for entry in self._armed:
            spec, left = entry
            if spec.method != method:
                continue
            if left[0] > 0:
                left[0] -= 1
                continue
            self._armed.remove(entry)
            if not spec.after_call:
                raise injected_error(spec)
            return spec
        return None


class SteppingNodeStore:
    """A NodeStorePort over a real one that calls `pause(kind, detail)` before each delete
    batch ("delete") and after it committed ("deleted"), and raises the plan's faults."""

    def __init__(self, inner: NodeStorePort, pause: Pause, plan: FaultPlan | None = None) -> None:
        self.inner = inner
        self.pause = pause
        self.plan = plan or FaultPlan()

    def _fault(self, method: str) -> FaultSpec | None:
        return self.plan.enter(method)

    def _done(self, spec: FaultSpec | None) -> None:
        if spec is not None:
            raise injected_error(spec)

    def retained_roots(self, from_order: int, to_order: int) -> list[bytes]:
        spec = self._fault("retained_roots")
        out = self.inner.retained_roots(from_order, to_order)
        self._done(spec)
        return out

    def expired_roots(self, below_order: int) -> list[tuple[int, bytes]]:
        spec = self._fault("expired_roots")
        out = self.inner.expired_roots(below_order)
        self._done(spec)
        return out

    def fetch(self, hashes: list[bytes]) -> list[NodeRecord]:
        spec = self._fault("fetch")
        out = self.inner.fetch(hashes)
        self._done(spec)
        return out

    def children(self, data: bytes) -> list[bytes]:
        return self.inner.children(data)

    def delete_guarded(
        self, row_ids: list[int], max_order: int, journal: JournalEntry, swept: list[int]
    ) -> list[tuple[bytes, int]]:
        self.pause("delete", f"{journal.phase} batch {journal.batch_no}: {len(row_ids)} ids")
        spec = self._fault("delete_guarded")
        out = self.inner.delete_guarded(row_ids, max_order, journal, swept)
        self.pause("deleted", f"{journal.phase} batch {journal.batch_no}: {len(out)} deleted")
        self._done(spec)
        return out

    def stale_entries(self, up_to_order: int, limit: int) -> list[tuple[int, bytes]]:
        spec = self._fault("stale_entries")
        out = self.inner.stale_entries(up_to_order, limit)
        self._done(spec)
        return out

    def sweep_stale(
        self,
        entries: list[tuple[int, bytes]],
        row_ids: list[int],
        max_order: int,
        journal: JournalEntry,
    ) -> list[tuple[bytes, int]]:
        self.pause("delete", f"{journal.phase} batch {journal.batch_no}: {len(row_ids)} ids")
        spec = self._fault("sweep_stale")
        out = self.inner.sweep_stale(entries, row_ids, max_order, journal)
        self.pause("deleted", f"{journal.phase} batch {journal.batch_no}: {len(out)} deleted")
        self._done(spec)
        return out

    def unlogged_journal(self) -> list[JournalEntry]:
        spec = self._fault("unlogged_journal")
        out = self.inner.unlogged_journal()
        self._done(spec)
        return out

    def mark_journal_logged(self, batch_key: str) -> None:
        self.inner.mark_journal_logged(batch_key)


class SteppingLog:
    """An EventLog over a real one that calls `pause` after a phase started or resumed
    ("phase_start") and after it completed ("phase_end")."""

    def __init__(self, inner: EventLog, pause: Pause) -> None:
        self.inner = inner
        self.pause = pause

    def get(self, aggregate_id: UUID, cls: type[A]) -> A:
        return self.inner.get(aggregate_id, cls)

    def save(self, *aggregates: Aggregate) -> None:
        pending = [e for agg in aggregates for e in agg.pending_events]
        self.inner.save(*aggregates)
        for e in reversed(pending):
            name = type(e).__name__
            if name == "PhaseCompleted":
                self.pause("phase_end", str(getattr(e, "phase", "")))
                return
            if name in ("PhaseStarted", "PhaseResumed"):
                self.pause("phase_start", f"{name} {getattr(e, 'phase', '')}")
                return


class KnownLiveness:
    """HolderLiveness for the machine: an owner is gone once the machine has killed it."""

    def __init__(self, gone: set[str]) -> None:
        self.gone = gone

    def is_gone(self, owner: str) -> bool:
        return owner in self.gone


# --- building a pruner process ----------------------------------------------------------------


@dataclass(frozen=True)
class Adapters:
    """How the kit builds a pruner. Replace any part with your own implementation:
    - `node_store(state_path)`: the NodeStorePort, over the state store file;
    - `reach_store(directory)`: the ReachStorePort, keeping reach sets in `directory`;
    - `manager`: an AtomicSnapshotManager (sub)class, same constructor;
    - `pruner`: a Pruner (sub)class, same constructor (override a phase body to test yours).
    """

    node_store: Callable[[Path], NodeStorePort] = SqliteNodeStore
    reach_store: Callable[[Path], ReachStorePort] = FileReachStore
    manager: type[AtomicSnapshotManager] = AtomicSnapshotManager
    pruner: type[Pruner] = Pruner


@dataclass
class PrunerParts:
    """One opened pruner: its Runtime (log, chain), manager, node store and Pruner."""

    runtime: Runtime
    manager: AtomicSnapshotManager
    inner_nodes: NodeStorePort
    stepping: SteppingNodeStore | None
    pruner: Pruner

    def close(self) -> None:
        close = getattr(self.inner_nodes, "close", None)
        if callable(close):
            close()
        self.runtime.close()


def open_pruner(
    settings: Settings,
    clock: ManualClock,
    owner: str,
    adapters: Adapters,
    liveness: HolderLiveness | None = None,
    pause: Pause | None = None,
    plan: FaultPlan | None = None,
) -> PrunerParts:
    """Opens the Runtime on `settings.data_dir` and builds a pruner from `adapters`. With
    `pause`, the node store and the log are wrapped to call it at every yield point, and the
    node store raises the faults `plan` arms."""
    rt = Runtime(settings, clock=clock, owner=owner)
    try:
        inner = adapters.node_store(rt.state_path)
        stepping = None if pause is None else SteppingNodeStore(inner, pause, plan)
        nodes: NodeStorePort = inner if stepping is None else stepping
        log: EventLog = rt.log if pause is None else SteppingLog(rt.log, pause)
        manager = adapters.manager(
            log,
            rt.chain,
            clock,
            integrity_hash,
            settings.snapshot,
            group=settings.group,
            owner=owner,
            protection_orders=settings.prune.protection_orders,
            liveness=liveness,
        )
        manager.initialize()
        recovery = ErrorRecoveryManager(manager, settings.recovery, sleep=lambda _s: None)

        def progress(phase: str, done: int, total: int | None) -> None:
            if pause is not None and phase == PrunePhase.BUILD_REACH.value:
                pause("mark", f"{done} marked")

        reach = adapters.reach_store(settings.data_dir / "reach")
        pruner = adapters.pruner(
            manager, nodes, reach, settings.prune, progress=progress, recovery=recovery
        )
    except BaseException:
        rt.close()
        raise
    return PrunerParts(rt, manager, inner, stepping, pruner)


class SimulatedCrash(BaseException):
    """Raised at a yield point to abandon a cycle the way a kill would: no retry, rollback or
    handler in the pruner catches a BaseException that is not an Exception."""


@dataclass(frozen=True)
class YieldPoint:
    kind: str  # phase_start | mark | delete | deleted | phase_end
    detail: str


@dataclass(frozen=True)
class CycleOutcome:
    report: CycleReport | None
    error: Exception | None

    def describe(self) -> str:
        if self.error is None:
            assert self.report is not None
            return f"cycle {self.report.cycle_no} done on snapshot {self.report.snapshot_id}"
        return f"{type(self.error).__name__}: {self.error}"


class PrunerProcess:
    """One pruner process, as a thread that owns its Runtime (sqlite3 connections are per
    thread). It runs a cycle only while the caller waits in `advance`, and stops at every
    yield point, so the caller's writes and faults land exactly between two pruner steps."""

    def __init__(
        self,
        settings: Settings,
        clock: ManualClock,
        owner: str,
        adapters: Adapters,
        liveness: HolderLiveness | None = None,
        *,
        plan: FaultPlan | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self.owner = owner
        self.plan = plan or FaultPlan()
        self.timeout_s = timeout_s
        self.paused_at: YieldPoint | None = None
        self.alive = True
        self._to_worker: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._to_main: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread = threading.Thread(
            target=self._main, args=(settings, clock, adapters, liveness), daemon=True, name=owner
        )
        self._thread.start()
        kind, payload = self._receive()
        if kind != "ready":
            self.alive = False
            raise RuntimeError(f"{owner} could not open: {payload!r}") from payload

    # --- the caller's side -----------------------------------------------------------------

    def advance(self, until: str = "next") -> CycleOutcome | None:
        """Runs to the next yield point of kind `until` ("next": any; "batch": a delete batch;
        "cycle": none), starting a cycle when idle. Returns the outcome if the cycle ended."""
        if not self.alive:
            raise RuntimeError(f"{self.owner} has exited")
        wanted = {"batch": "delete"}.get(until, until)
        self._to_worker.put(("go", None) if self.paused_at else ("cycle", None))
        while True:
            kind, payload = self._receive()
            if kind == "paused":
                self.paused_at = payload
                if wanted in ("next", payload.kind):
                    return None
                self._to_worker.put(("go", None))
            elif kind == "done":
                self.paused_at = None
                return cast(CycleOutcome, payload)
            else:
                self.alive = False
                raise RuntimeError(f"{self.owner} stopped unexpectedly: {kind} {payload!r}")

    def run_cycle(self) -> CycleOutcome:
        """Finishes the current cycle, or runs a whole new one."""
        outcome = self.advance("cycle")
        assert outcome is not None
        return outcome

    def crash(self) -> None:
        """Kills the process: a cycle in flight is abandoned where it stands (its uncommitted
        transaction, if any, is lost), and every in-memory object goes with the thread."""
        if not self.alive:
            return
        self.alive = False
        self._to_worker.put(("crash", None) if self.paused_at else ("exit", None))
        self.paused_at = None
        with contextlib.suppress(queue.Empty):
            while self._to_main.get(timeout=self.timeout_s)[0] != "exited":
                pass
        self._thread.join(timeout=self.timeout_s)

    close = crash  # between cycles a clean exit and a kill look the same to the store

    def _receive(self) -> tuple[str, Any]:
        try:
            return self._to_main.get(timeout=self.timeout_s)
        except queue.Empty:
            self.alive = False
            raise RuntimeError(
                f"{self.owner} reached no yield point within {self.timeout_s} s"
            ) from None

    # --- the thread's side -----------------------------------------------------------------

    def _pause(self, kind: str, detail: str) -> None:
        self._to_main.put(("paused", YieldPoint(kind, detail)))
        command, _ = self._to_worker.get()
        if command != "go":
            raise SimulatedCrash(f"{self.owner} killed at {kind} ({detail})")

    def _main(
        self,
        settings: Settings,
        clock: ManualClock,
        adapters: Adapters,
        liveness: HolderLiveness | None,
    ) -> None:
        try:
            parts = open_pruner(
                settings, clock, self.owner, adapters, liveness, self._pause, self.plan
            )
        except BaseException as exc:
            self._to_main.put(("failed", exc))
            return
        self._to_main.put(("ready", None))
        try:
            while True:
                command, _ = self._to_worker.get()
                if command != "cycle":
                    return
                try:
                    report = parts.pruner.run_cycle()
                    self._to_main.put(("done", CycleOutcome(report, None)))
                except Exception as exc:
                    self._to_main.put(("done", CycleOutcome(None, exc)))
        except SimulatedCrash:
            pass
        finally:
            with contextlib.suppress(Exception):
                parts.close()
            self._to_main.put(("exited", None))


# --- the stateful machine ---------------------------------------------------------------------


@dataclass(frozen=True)
class MachineConfig:
    """Knobs of PruningMachine. The feature flags switch rule families on and off."""

    protection_orders: int = 3
    delete_batch_size: int = 6
    lock_timeout_ms: int = 60_000
    max_snapshot_age_ms: int = 300_000
    workload_keys: int = 32
    workload_ops: int = 3
    initial_txs: tuple[int, int] = (0, 20)  # the chain before the first step: min, max txs
    crashes: bool = True
    contention: bool = True
    clock: bool = True
    faults: bool = True
    check_projections: bool = True
    check_garbage: bool = True
    final_cycles: int = 2
    final_attempts: int = 6
    timeout_s: float = 120.0
    group: str = "default"

    def settings(self, data_dir: Path) -> Settings:
        return Settings(
            data_dir,
            group=self.group,
            snapshot=SnapshotManagerConfig(
                lock_timeout_ms=self.lock_timeout_ms, max_snapshot_age_ms=self.max_snapshot_age_ms
            ),
            recovery=RecoveryConfig(base_retry_delay_ms=1, max_retry_delay_ms=1),
            prune=PruneConfig(
                protection_orders=self.protection_orders,
                delete_batch_size=self.delete_batch_size,
            ),
        )


def _chain_has(exc: BaseException | None, kind: type[BaseException]) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class PruningMachine(RuleBasedStateMachine):
    """The real writer, pruner, log and projections on temp files, with every invariant
    checked after every step. Subclass it, or use `pruning_machine(...)`, to change
    `adapters` (your components) or `config` (sizes, timeouts, which rule families run)."""

    adapters: ClassVar[Adapters] = Adapters()
    config: ClassVar[MachineConfig] = MachineConfig()

    def __init__(self) -> None:
        super().__init__()
        cfg = self.config
        self.tmp = Path(tempfile.mkdtemp(prefix="prunelog-machine-"))
        self.data_dir = self.tmp / "data"
        self.data_dir.mkdir()
        self.settings = cfg.settings(self.data_dir)
        self.clock = ManualClock()
        self.gone: set[str] = set()
        self.liveness = KnownLiveness(self.gone)
        self.plan = FaultPlan()
        self.store = SqliteStateStore.open(self.data_dir / STATE_FILE)
        WriterTx({b"genesis": b"g"}, {}).commit(self.store)
        self.observer = Runtime(self.settings, clock=self.clock, owner="observer")
        self.runner = self.observer.projections() if cfg.check_projections else None
        self.fold = LogFold(self.gone.__contains__)
        self.position = 0
        self.ever_stored: set[bytes] = set()
        self.seen_order = -1
        self._note_writes()
        self.workload: WorkloadWriter | None = None
        self.history: list[dict[bytes, bytes | None]] = [{}]  # the WriterTx keys, per tx
        self.incarnation = 0
        self.contenders = 0
        self.process: PrunerProcess | None = None
        self.outcomes: list[str] = []
        self.stats: dict[str, int] = {}

    # --- helpers ---------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _pruner(self) -> PrunerProcess:
        if self.process is None or not self.process.alive:
            self.incarnation += 1
            self.process = PrunerProcess(
                self.settings,
                self.clock,
                f"pruner-a.{self.incarnation}",
                self.adapters,
                self.liveness,
                plan=self.plan,
                timeout_s=self.config.timeout_s,
            )
        return self.process

    def _note_writes(self) -> None:
        rows = self.store.connection.execute(
            "SELECT hash FROM nodes WHERE written_order > ?", (self.seen_order,)
        )
        self.ever_stored.update(bytes(r[0]) for r in rows)
        latest = self.store.latest()
        self.seen_order = -1 if latest is None else latest.tx_order

    def _sync_log(self) -> list[Any]:
        new: list[Any] = []
        while True:
            page = self.observer.log.read(self.position + 1, 1000)
            if not page:
                break
            self.position = page[-1][0]
            new.extend(e for _, e in page)
        self.fold.feed(new)
        return new

    def _record(self, outcome: CycleOutcome | None) -> None:
        if outcome is not None:
            self._count("cycles ok" if outcome.error is None else "cycles failed")
            self.outcomes.append(outcome.describe())

    # --- the writer ------------------------------------------------------------------------

    @initialize(seed=st.integers(0, 2**16), txs=st.integers(0, 2**16))
    def start_the_chain(self, seed: int, txs: int) -> None:
        cfg = self.config
        self.workload = WorkloadWriter(
            self.store, seed, keys=cfg.workload_keys, ops_per_tx=cfg.workload_ops
        )
        low, high = cfg.initial_txs
        for _ in range(low + txs % (high - low + 1)):
            self.workload.step()
        self._note_writes()

    @rule(txs=st.integers(1, 5))
    def writer_runs_the_workload(self, txs: int) -> None:
        assert self.workload is not None
        for _ in range(txs):
            self.workload.step()
        self._note_writes()
        self._count("workload txs")

    @rule(tx=writer_transactions())
    def writer_commits(self, tx: WriterTx) -> None:
        tx.commit(self.store)
        state = dict(self.history[-1])
        state.update(tx.changes)
        self.history.append(state)
        self._note_writes()
        self._count("writer txs")

    @rule(back=st.integers(1, 6))
    def writer_reverts_to_an_earlier_state(self, back: int) -> None:
        """Every WriterTx key goes back to its value `back` txs ago: a whole old path again."""
        old = self.history[max(0, len(self.history) - 1 - back)]
        now = self.history[-1]
        changes = {k: old.get(k) for k in now.keys() | old.keys() if old.get(k) != now.get(k)}
        if not changes:
            return
        WriterTx(changes, {}).commit(self.store)
        self.history.append(dict(old))
        self._note_writes()
        self._count("reverts")

    # --- the pruner ------------------------------------------------------------------------

    @rule(until=st.sampled_from(("next", "phase_start", "batch")))
    def pruner_steps(self, until: str) -> None:
        self._record(self._pruner().advance(until))

    @rule(until=st.sampled_from(("phase_end", "cycle")))
    def pruner_runs(self, until: str) -> None:
        self._record(self._pruner().advance(until))

    @precondition(lambda self: self.config.crashes)
    @rule()
    def pruner_crashes(self) -> None:
        """Drops every in-memory object of the pruner, mid-cycle or not; the next pruner rule
        reopens everything from disk as a new process, which resumes the cycle."""
        if self.process is not None and self.process.alive:
            self._count("crashes mid-cycle" if self.process.paused_at else "crashes idle")
            self.process.crash()
            self.gone.add(self.process.owner)

    @precondition(lambda self: self.config.contention)
    @rule()
    def second_pruner_tries_the_lock(self) -> None:
        """Another owner runs a cycle. It must be refused (LockContendedError, nothing
        appended) while a running pruner holds an unexpired lock; otherwise it may take over."""
        self._sync_log()
        holder = self.fold.holder(self.config.group)
        now = self.clock.now()
        live = holder is not None and holder.owner not in self.gone and now < holder.expires_at
        self.contenders += 1
        owner = f"pruner-b.{self.contenders}"
        parts = open_pruner(self.settings, self.clock, owner, self.adapters, self.liveness)
        error: Exception | None = None
        try:
            parts.pruner.run_cycle()
        except Exception as exc:
            error = exc
        finally:
            parts.close()
            self.gone.add(owner)
        new = self._sync_log()
        self._count("contenders refused" if live else "contenders free")
        self.outcomes.append(f"{owner}: {'ok' if error is None else type(error).__name__}")
        if not live or holder is None:
            return
        took = [
            e
            for e in new
            if (_kind(e) == "PhaseLock.Locked" and e.owner == owner)
            or (_kind(e) == "PhaseLock.Expired" and e.taken_over_by == owner)
        ]
        if took:
            raise LockViolation(
                [
                    f"{owner} took the lock at {now} from {holder.owner}, which is running and "
                    f"holds it until {holder.expires_at}"
                ]
            )
        problems = []
        if not _chain_has(error, LockContendedError):
            problems.append(
                f"{owner} should get LockContendedError from {holder.owner}'s live lock, got "
                f"{'success' if error is None else f'{type(error).__name__}: {error}'}"
            )
        if new:
            kinds = ", ".join(_kind(e) for e in new)
            problems.append(f"{owner} was refused the lock yet appended {len(new)}: {kinds}")
        if problems:
            raise ContentionViolation(problems)

    @precondition(lambda self: self.config.clock)
    @rule(jump=st.sampled_from(("a second", "past the lock timeout", "past max snapshot age")))
    def clock_moves(self, jump: str) -> None:
        cfg = self.config
        ms = {
            "a second": 1_000,
            "past the lock timeout": cfg.lock_timeout_ms + 1,
            "past max snapshot age": cfg.max_snapshot_age_ms + 1,
        }[jump]
        self.clock.advance(ms=ms)

    @precondition(lambda self: self.config.faults)
    @rule(spec=faults())
    def an_operation_fails(self, spec: FaultSpec) -> None:
        self.plan.arm(spec)
        self._count("faults armed")

    @precondition(lambda self: self.config.faults)
    @rule(how=st.sampled_from(("flip a byte", "truncate", "delete")))
    def a_reach_set_file_is_corrupted(self, how: str) -> None:
        files = sorted(
            (self.data_dir / "reach").glob("reach-*"), key=lambda p: (p.stat().st_mtime_ns, p.name)
        )
        if not files:
            return
        target = files[-1]
        data = target.read_bytes()
        if how == "delete" or not data:
            target.unlink()
        elif how == "truncate":
            target.write_bytes(data[: len(data) // 2])
        else:
            target.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
        self._count("reach sets corrupted")

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        self._count("invariant checks")
        self._sync_log()
        assert_invariants(self.store, self.fold, runner=self.runner)

    # --- the end: the writer stops, clean cycles run, garbage must be gone --------------------

    def finish(self) -> None:
        """Stops faults, lets the pruner finish, runs cycles until `final_cycles` in a row
        succeed, then checks that no garbage is left and that the audit has every deletion."""
        cfg = self.config
        self.plan.disarm()
        process = self._pruner()
        if process.paused_at is not None:
            self._record(process.run_cycle())
        clean = 0
        errors: list[str] = []
        report: CycleReport | None = None
        for _ in range(cfg.final_attempts):
            outcome = self._pruner().run_cycle()
            self._record(outcome)
            self.invariants_hold()
            if outcome.error is None:
                clean, report = clean + 1, outcome.report
                if clean == cfg.final_cycles:
                    break
            else:
                clean = 0
                errors.append(outcome.describe())
        if clean < cfg.final_cycles or report is None:
            raise LivenessViolation(
                [
                    f"{cfg.final_cycles} clean cycles in a row never ran after the writer stopped",
                    *errors[-3:],
                ]
            )
        since = max(0, report.latest_order - cfg.protection_orders)
        problems = garbage_violations(self.store, since) if cfg.check_garbage else []
        if problems:
            raise LivenessViolation(problems)
        lost = unaudited_deletions(self.fold, self.ever_stored, self.store)
        if lost:
            raise AuditViolation(lost)

    def teardown(self) -> None:
        try:
            if sys.exc_info()[0] is None:  # a step failed: report that, not a consequence
                self.finish()
        finally:
            self.close()

    def close(self) -> None:
        if self.process is not None:
            self.process.crash()
        with contextlib.suppress(Exception):
            self.observer.close()
        with contextlib.suppress(Exception):
            self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def pruning_machine(
    adapters: Adapters | None = None,
    config: MachineConfig | None = None,
    *,
    name: str = "PruningMachine",
    base: type[PruningMachine] = PruningMachine,
) -> type[PruningMachine]:
    """A PruningMachine subclass over `adapters` with `config`; run it with Hypothesis'
    `run_state_machine_as_test(machine, settings=...)` or expose `machine.TestCase`."""
    attrs: dict[str, Any] = {
        "adapters": adapters or base.adapters,
        "config": config or base.config,
        "__module__": base.__module__,
    }
    return cast(type[PruningMachine], type(name, (base,), attrs))


__all__ = [
    "AUDIT_EVENTS",
    "CHECK_ORDER",
    "FAULT_METHODS",
    "GRANULARITIES",
    "TEMPLATES",
    "Adapters",
    "AuditRow",
    "AuditViolation",
    "ContentionViolation",
    "CycleOutcome",
    "FaultPlan",
    "FaultSpec",
    "InvariantViolation",
    "KnownLiveness",
    "LivenessViolation",
    "LockHolder",
    "LockViolation",
    "LogFold",
    "LogOrderViolation",
    "MachineConfig",
    "ProjectionViolation",
    "PrunerParts",
    "PrunerProcess",
    "PruningMachine",
    "SafetyViolation",
    "SimulatedCrash",
    "SnapshotFacts",
    "SnapshotUseViolation",
    "SteppingLog",
    "SteppingNodeStore",
    "WriterTx",
    "YieldPoint",
    "assert_invariants",
    "audit_violations",
    "check_invariants",
    "fault_schedules",
    "faults",
    "garbage_violations",
    "granularities",
    "legality_violations",
    "lock_violations",
    "open_pruner",
    "projection_violations",
    "protected_since",
    "pruning_machine",
    "snapshot_use_violations",
    "store_violations",
    "unaudited_deletions",
    "writer_transactions",
]
