"""Wrappers around the real node store and log that stop the pruner at its yield points and
raise armed faults, so that the machine's steps land between two pruner steps."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.ports import EventLog, Expansion, JournalEntry, NodeStorePort, StaleEntry
from infrastructure.testkit.strategies import FaultSpec

A = TypeVar("A", bound=Aggregate)

#: What a wrapper calls at a yield point: pause(kind, detail).
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

    def ids_of(self, hashes: list[bytes]) -> dict[bytes, int]:
        spec = self._fault("ids_of")
        out = self.inner.ids_of(hashes)
        self._done(spec)
        return out

    def expand(self, row_ids: list[int]) -> Expansion:
        spec = self._fault("expand")
        out = self.inner.expand(row_ids)
        self._done(spec)
        return out

    def delete_guarded(
        self, row_ids: list[int], max_order: int, journal: JournalEntry, swept: list[int]
    ) -> Sequence[tuple[bytes, int]]:
        self.pause("delete", f"{journal.phase} batch {journal.batch_no}: {len(row_ids)} ids")
        spec = self._fault("delete_guarded")
        out = self.inner.delete_guarded(row_ids, max_order, journal, swept)
        self.pause("deleted", f"{journal.phase} batch {journal.batch_no}: {len(out)} deleted")
        self._done(spec)
        return out

    def stale_entries(self, up_to_order: int, limit: int) -> list[StaleEntry]:
        spec = self._fault("stale_entries")
        out = self.inner.stale_entries(up_to_order, limit)
        self._done(spec)
        return out

    def sweep_stale(
        self,
        entries: list[StaleEntry],
        row_ids: list[int],
        max_order: int,
        journal: JournalEntry,
    ) -> Sequence[tuple[bytes, int]]:
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
