"""Fakes that implement the real ports, and small readers of the log for assertions. No mocks."""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain.ports import ChainMetadata, ChainView, JournalEntry, NodeRecord, NodeStorePort
from infrastructure.eventlog import EVENTS_FILE, EventsourcingLog


def _digest(*parts: object) -> str:
    return hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=32).hexdigest()


class FakeChain:
    """An in-memory chain that implements ChainStatePort, and can be moved by the test.

    Block hashes depend on the height and on the fork the block was made on, so a reorg gives
    every block from that height up a different hash, exactly like a real chain would."""

    def __init__(self, height: int = 100, txs_per_block: int = 10) -> None:
        self._blocks: dict[int, str] = {}
        self._orders: dict[int, int] = {}
        self._txs_per_block = txs_per_block
        self._fork = 0
        self.reads = 0
        for _ in range(height):
            self.append_block()

    # --- the port ------------------------------------------------------------------------

    def read_chain_view(self) -> ChainView:
        self.reads += 1
        height = self.height
        return ChainView(
            latest_order=self.latest_order,
            state_root=_digest("root", self._fork, self.latest_order),
            chain_metadata=ChainMetadata(
                block_height=height,
                chain_timestamp=1_700_000_000_000 + height * 1_000,
                latest_block_hash=self._blocks[height],
            ),
        )

    def block_hash_at(self, height: int) -> str | None:
        return self._blocks.get(height)

    # --- moving the chain ----------------------------------------------------------------

    @property
    def height(self) -> int:
        return max(self._blocks, default=0)

    @property
    def latest_order(self) -> int:
        return self._orders.get(self.height, 0)

    def append_block(self, txs: int | None = None) -> int:
        """Adds a block on top; returns its height."""
        height = self.height + 1
        self._orders[height] = self.latest_order + (txs if txs is not None else self._txs_per_block)
        self._blocks[height] = _digest("block", self._fork, height)
        return height

    def reorg(self, height: int, new_hash: str | None = None) -> str:
        """Replaces the block at `height` (and every block above it) with blocks of a new fork.
        Returns the new hash at `height`."""
        if height not in self._blocks:
            raise ValueError(f"the chain has no block at height {height}")
        self._fork += 1
        for h in range(height, self.height + 1):
            self._blocks[h] = _digest("block", self._fork, h)
        if new_hash is not None:
            self._blocks[height] = new_hash
        return self._blocks[height]

    def rewind(self, height: int) -> None:
        """Drops every block above `height`, as if they had been orphaned and not replaced."""
        for h in [h for h in self._blocks if h > height]:
            del self._blocks[h]
            del self._orders[h]


# --- reading the log back --------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedEvent:
    position: int
    topic: str
    originator_id: str
    version: int
    event: Any


def logged_events(log: EventsourcingLog) -> list[LoggedEvent]:
    """Every event in the log, in notification order, decoded through the app's own mapper."""
    out: list[LoggedEvent] = []
    start = 1
    while True:
        page = log.app.recorder.select_notifications(start=start, limit=500)
        for n in page:
            out.append(
                LoggedEvent(
                    position=n.id,
                    topic=n.topic,
                    originator_id=str(n.originator_id),
                    version=n.originator_version,
                    event=log.app.mapper.to_domain_event(n),
                )
            )
        if len(page) < 500:
            return out
        start = page[-1].id + 1


def logged_topics(log: EventsourcingLog) -> list[str]:
    return [e.topic for e in logged_events(log)]


@contextmanager
def events_db(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """A raw connection to a data dir's event file, for tests that tamper with stored rows.
    Rows name their aggregate by `originator_id` = the UUID's 32 hex digits (`uuid.hex`)."""
    with closing(sqlite3.connect(data_dir / EVENTS_FILE, isolation_level=None)) as conn:
        yield conn


# --- the pruner's node store, with hooks at exact moments ------------------------------------


class SimulatedCrashError(Exception):
    """Raised by a hook to stop the pruner the way a crash would: after a committed write and
    before whatever the pruner meant to do next."""


DeleteHook = Callable[[int, list[tuple[bytes, int]]], None]


class HookedNodeStore:
    """A NodeStorePort that delegates every call to a real one, and runs test code at precise
    moments: `before_first(method, action)` runs `action` once, just before the first call of
    `method` (e.g. a writer's commit between BuildReach and the sweep's DELETE), and every
    `after_delete` hook runs after each committed delete transaction, with the snapshot's
    order and what was deleted (e.g. a simulated crash before the NodesSwept event).

    With `hide_expired_roots`, `expired_roots` answers as if every expired root had been swept
    by an earlier cycle, so that IncrementalSweep alone meets the garbage."""

    def __init__(self, inner: NodeStorePort, *, hide_expired_roots: bool = False) -> None:
        self.inner = inner
        self.hide_expired_roots = hide_expired_roots
        self.calls: Counter[str] = Counter()
        self.deleted: list[tuple[bytes, int]] = []
        self.after_delete: list[DeleteHook] = []
        self._before_first: dict[str, list[Callable[[], None]]] = {}

    def before_first(self, method: str, action: Callable[[], None]) -> None:
        if not callable(getattr(self, method, None)):
            raise ValueError(f"NodeStorePort has no method {method!r}")
        self._before_first.setdefault(method, []).append(action)

    def _enter(self, method: str) -> None:
        self.calls[method] += 1
        for action in self._before_first.pop(method, []):
            action()

    def _deleted(self, max_order: int, deleted: list[tuple[bytes, int]]) -> None:
        self.deleted.extend(deleted)
        for hook in self.after_delete:
            hook(max_order, deleted)

    # --- the port ------------------------------------------------------------------------

    def retained_roots(self, from_order: int, to_order: int) -> list[bytes]:
        self._enter("retained_roots")
        return self.inner.retained_roots(from_order, to_order)

    def expired_roots(self, below_order: int) -> list[tuple[int, bytes]]:
        self._enter("expired_roots")
        return [] if self.hide_expired_roots else self.inner.expired_roots(below_order)

    def fetch(self, hashes: list[bytes]) -> list[NodeRecord]:
        self._enter("fetch")
        return self.inner.fetch(hashes)

    def children(self, data: bytes) -> list[bytes]:
        return self.inner.children(data)

    def delete_guarded(
        self, row_ids: list[int], max_order: int, journal: JournalEntry, swept: list[int]
    ) -> list[tuple[bytes, int]]:
        self._enter("delete_guarded")
        deleted = self.inner.delete_guarded(row_ids, max_order, journal, swept)
        self._deleted(max_order, deleted)
        return deleted

    def stale_entries(self, up_to_order: int, limit: int) -> list[tuple[int, bytes]]:
        self._enter("stale_entries")
        return self.inner.stale_entries(up_to_order, limit)

    def sweep_stale(
        self,
        entries: list[tuple[int, bytes]],
        row_ids: list[int],
        max_order: int,
        journal: JournalEntry,
    ) -> list[tuple[bytes, int]]:
        self._enter("sweep_stale")
        deleted = self.inner.sweep_stale(entries, row_ids, max_order, journal)
        self._deleted(max_order, deleted)
        return deleted

    def unlogged_journal(self) -> list[JournalEntry]:
        self._enter("unlogged_journal")
        return self.inner.unlogged_journal()

    def mark_journal_logged(self, batch_key: str) -> None:
        self._enter("mark_journal_logged")
        self.inner.mark_journal_logged(batch_key)


def crash_after_first_delete() -> DeleteHook:
    """An `after_delete` hook: the first delete transaction that removed anything commits,
    then the pruner "crashes" before it can log the batch."""

    def hook(_max_order: int, deleted: list[tuple[bytes, int]]) -> None:
        if deleted:
            raise SimulatedCrashError(f"crashed after deleting {len(deleted)} node(s)")

    return hook


NODES_SWEPT = "prunelog:PruneCycle.NodesSwept"


def swept_events(log: EventsourcingLog) -> list[Any]:
    """Every PruneCycle.NodesSwept event in the log, in order."""
    return [e.event for e in logged_events(log) if e.topic == NODES_SWEPT]


def swept_hashes(log: EventsourcingLog) -> list[bytes]:
    """Every hash that a NodesSwept event names, repeats kept, in log order."""
    return [bytes(h) for e in swept_events(log) for h in e.hashes]


def stored_hashes(conn: sqlite3.Connection) -> set[bytes]:
    """The hashes in a state store's `nodes` table."""
    return {bytes(r[0]) for r in conn.execute("SELECT hash FROM nodes")}
