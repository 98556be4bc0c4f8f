"""Fault injection for the crash harness (`benchmarks/crash.py`): SIGKILL this process at a
chosen point. Off unless `PRUNELOG_FAULT_KILL_AT=<point>:<n>` is set; then the n-th time the
process reaches `<point>` it writes one line to stderr and kills itself with SIGKILL, so no
`finally`, no ROLLBACK and no buffered write runs, exactly as with `kill -9` from outside.

Points:
- `build_reach`: the n-th lookup (`ids_of`, `expand`) of the state store while BuildReach marks.
- `between_batches`: right after the n-th NodesSwept event is saved, before its journal row
  is dropped and before the next delete.
- `mid_delete`: inside the n-th delete transaction of a sweep (the guarded DELETE of nodes,
  else the consumption of stale entries or the marking of swept roots), while its first
  statement runs: nothing of it is committed (no journal row, no node gone).
- `projection_update`: the n-th event applied to a read model, inside a catch-up
  transaction, before its COMMIT.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from domain.ports import Expansion, JournalEntry, NodeStorePort, StaleEntry
from infrastructure.sqlite_nodes import SqliteNodeStore

if TYPE_CHECKING:
    from domain.pruning import Pruner
    from projections.runner import ProjectionRunner

ENV_VAR = "PRUNELOG_FAULT_KILL_AT"
POINTS = ("build_reach", "between_batches", "mid_delete", "projection_update")
MARKER = "prunelog-fault: SIGKILL at"
_PROGRESS_OPS = 16  # SQLite VM instructions between progress callbacks inside the DELETE


@dataclass(frozen=True)
class KillAt:
    point: str
    n: int

    @classmethod
    def parse(cls, spec: str) -> KillAt:
        point, sep, count = spec.strip().partition(":")
        if point not in POINTS or (sep and not count.isdigit()):
            raise ValueError(f"{ENV_VAR}={spec!r}: expected <point>:<n>, point one of {POINTS}")
        n = int(count) if sep else 1
        if n < 1:
            raise ValueError(f"{ENV_VAR}={spec!r}: n must be >= 1")
        return cls(point, n)

    def __str__(self) -> str:
        return f"{self.point}:{self.n}"


def from_env(environ: Mapping[str, str] | None = None) -> KillAt | None:
    spec = (os.environ if environ is None else environ).get(ENV_VAR)
    return KillAt.parse(spec) if spec else None


def kill_self(at: KillAt) -> None:
    os.write(2, f"{MARKER} {at} (pid {os.getpid()})\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


class Trigger:
    """Counts how often its point is reached; on the n-th time, calls `kill`."""

    def __init__(self, at: KillAt, kill: Callable[[KillAt], None] = kill_self) -> None:
        self.at = at
        self.kill = kill
        self.count = 0

    def reached(self, point: str) -> None:
        if point != self.at.point:
            return
        self.count += 1
        if self.count == self.at.n:
            self.kill(self.at)


class FaultyNodeStore:
    """A NodeStorePort that delegates to a SqliteNodeStore and fires the trigger at the node
    store's kill points."""

    def __init__(self, inner: SqliteNodeStore, trigger: Trigger) -> None:
        self.inner = inner
        self.trigger = trigger
        self._marking = False  # between retained_roots (BuildReach) and the next sweep call
        self._swept: set[str] = set()  # batch keys whose delete removed something

    def retained_roots(self, from_order: int, to_order: int) -> list[bytes]:
        self._marking = True
        return self.inner.retained_roots(from_order, to_order)

    def expired_roots(self, below_order: int) -> list[tuple[int, bytes]]:
        self._marking = False
        return self.inner.expired_roots(below_order)

    def ids_of(self, hashes: list[bytes]) -> dict[bytes, int]:
        if self._marking:
            self.trigger.reached("build_reach")
        return self.inner.ids_of(hashes)

    def expand(self, row_ids: list[int]) -> Expansion:
        if self._marking:
            self.trigger.reached("build_reach")
        return self.inner.expand(row_ids)

    def delete_guarded(
        self, row_ids: list[int], max_order: int, journal: JournalEntry, swept: list[int]
    ) -> Sequence[tuple[bytes, int]]:
        return self._deleting(
            journal, lambda: self.inner.delete_guarded(row_ids, max_order, journal, swept)
        )

    def stale_entries(self, up_to_order: int, limit: int) -> list[StaleEntry]:
        self._marking = False
        return self.inner.stale_entries(up_to_order, limit)

    def sweep_stale(
        self,
        entries: list[StaleEntry],
        row_ids: list[int],
        max_order: int,
        journal: JournalEntry,
    ) -> Sequence[tuple[bytes, int]]:
        return self._deleting(
            journal, lambda: self.inner.sweep_stale(entries, row_ids, max_order, journal)
        )

    def unlogged_journal(self) -> list[JournalEntry]:
        return self.inner.unlogged_journal()

    def mark_journal_logged(self, batch_key: str) -> None:
        # The pruner saves a batch's NodesSwept event, then drops its journal row: so this
        # call, for a batch that deleted something, is "right after NodesSwept was saved".
        if batch_key in self._swept:
            self._swept.discard(batch_key)
            self.trigger.reached("between_batches")
        self.inner.mark_journal_logged(batch_key)

    def _deleting(
        self, journal: JournalEntry, run: Callable[[], Sequence[tuple[bytes, int]]]
    ) -> Sequence[tuple[bytes, int]]:
        self._marking = False
        conn = self.inner.conn
        in_statement = False
        reached = False  # one reach per delete transaction

        def trace(sql: str) -> None:  # each statement as it starts (and each trigger it fires)
            nonlocal in_statement
            verb = sql.lstrip()[:8].upper()
            in_statement = not verb.startswith(("BEGIN", "COMMIT", "ROLLBACK"))

        def progress() -> int:  # every few VM steps while a statement runs
            nonlocal reached
            if in_statement and not reached and conn.in_transaction:
                reached = True
                self.trigger.reached("mid_delete")
            return 0

        armed = self.trigger.at.point == "mid_delete"
        if armed:
            conn.set_trace_callback(trace)
            conn.set_progress_handler(progress, _PROGRESS_OPS)
        try:
            deleted = run()
        finally:
            if armed:
                conn.set_trace_callback(None)
                conn.set_progress_handler(None, 0)
        if deleted:
            self._swept.add(journal.batch_key)
        return deleted


class _KillingApply:
    """Replaces one projection's `apply`: fires the trigger, then applies the event."""

    def __init__(self, apply: Callable[[sqlite3.Connection, int, Any], None], trigger: Trigger):
        self.apply = apply
        self.trigger = trigger

    def __call__(self, db: sqlite3.Connection, position: int, event: Any) -> None:
        if db.in_transaction:  # always, in catch_up: the kill leaves the batch uncommitted
            self.trigger.reached("projection_update")
        self.apply(db, position, event)


_trigger: Trigger | None = None


def _active(environ: Mapping[str, str] | None = None) -> Trigger | None:
    """One trigger per process, so counts span the pruner and the projections."""
    global _trigger  # noqa: PLW0603
    at = from_env(environ)
    if at is None:
        return None
    if _trigger is None or _trigger.at != at:
        _trigger = Trigger(at)
    return _trigger


def install_on_pruner(pruner: Pruner, environ: Mapping[str, str] | None = None) -> None:
    """Wraps the pruner's node store when PRUNELOG_FAULT_KILL_AT is set; else does nothing."""
    trigger = _active(environ)
    if trigger is None or not isinstance(pruner.nodes, SqliteNodeStore):
        return
    wrapped: NodeStorePort = FaultyNodeStore(pruner.nodes, trigger)
    pruner.nodes = wrapped


def install_on_projections(
    runner: ProjectionRunner, environ: Mapping[str, str] | None = None
) -> None:
    """Wraps every projection's apply when PRUNELOG_FAULT_KILL_AT names projection_update."""
    trigger = _active(environ)
    if trigger is None or trigger.at.point != "projection_update":
        return
    for projection in runner.projections.values():
        setattr(projection, "apply", _KillingApply(projection.apply, trigger))  # noqa: B010
