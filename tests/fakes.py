"""Fakes that implement the real ports, and small readers of the log for assertions. No mocks."""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.config import PruneConfig, RecoveryConfig, SnapshotManagerConfig
from domain.errors import EventLogError
from domain.ports import (
    ChainMetadata,
    ChainStatePort,
    ChainView,
    Expansion,
    JournalEntry,
    NodeStorePort,
    ReachSet,
    StaleEntry,
)
from domain.pruning import Pruner
from domain.recovery import ErrorRecoveryManager
from infrastructure.clock import ManualClock
from infrastructure.eventlog import EVENTS_FILE, EventsourcingLog
from infrastructure.runtime import Runtime, Settings
from infrastructure.sqlite_nodes import FileReachStore
from infrastructure.state_store import SqliteStateStore
from infrastructure.workload import WorkloadWriter

A = TypeVar("A", bound=Aggregate)


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


class SimulatedCrashError(BaseException):
    """Raised by a hook to stop the pruner the way a crash (a kill) would: after a committed
    write and before whatever the pruner meant to do next. A BaseException, so that no retry
    or rollback inside the pruner can catch it, just as none can catch a SIGKILL."""


DeleteHook = Callable[[int, Sequence[tuple[bytes, int]]], None]


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
        self.journals: list[JournalEntry] = []  # one per delete transaction, empty ones too
        self.after_delete: list[DeleteHook] = []
        self._before_first: dict[str, list[Callable[[], object]]] = {}

    def before_first(self, method: str, action: Callable[[], object]) -> None:
        if not callable(getattr(self, method, None)):
            raise ValueError(f"NodeStorePort has no method {method!r}")
        self._before_first.setdefault(method, []).append(action)

    def _enter(self, method: str) -> None:
        self.calls[method] += 1
        for action in self._before_first.pop(method, []):
            action()

    def _deleted(self, max_order: int, deleted: Sequence[tuple[bytes, int]]) -> None:
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

    def ids_of(self, hashes: list[bytes]) -> dict[bytes, int]:
        self._enter("ids_of")
        return self.inner.ids_of(hashes)

    def expand(self, row_ids: list[int]) -> Expansion:
        self._enter("expand")
        return self.inner.expand(row_ids)

    def delete_guarded(
        self, row_ids: list[int], max_order: int, journal: JournalEntry, swept: list[int]
    ) -> Sequence[tuple[bytes, int]]:
        self._enter("delete_guarded")
        self.journals.append(journal)
        deleted = self.inner.delete_guarded(row_ids, max_order, journal, swept)
        self._deleted(max_order, deleted)
        return deleted

    def stale_entries(self, up_to_order: int, limit: int) -> list[StaleEntry]:
        self._enter("stale_entries")
        return self.inner.stale_entries(up_to_order, limit)

    def sweep_stale(
        self,
        entries: list[StaleEntry],
        row_ids: list[int],
        max_order: int,
        journal: JournalEntry,
    ) -> Sequence[tuple[bytes, int]]:
        self._enter("sweep_stale")
        self.journals.append(journal)
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

    def hook(_max_order: int, deleted: Sequence[tuple[bytes, int]]) -> None:
        if deleted:
            raise SimulatedCrashError(f"crashed after deleting {len(deleted)} node(s)")

    return hook


NODES_SWEPT = "prunelog:PruneCycle.NodesSwept"


def swept_events(log: EventsourcingLog) -> list[Any]:
    """Every audited batch in the log, in order: NodesSwept, and BatchRecovered for a batch
    whose NodesSwept failed and was logged from the journal after its cycle moved on."""
    topics = (NODES_SWEPT, "prunelog:PruneCycle.BatchRecovered")
    return [e.event for e in logged_events(log) if e.topic in topics]


def swept_hashes(log: EventsourcingLog) -> list[bytes]:
    """Every hash that a NodesSwept event names, repeats kept, in log order."""
    return [bytes(h) for e in swept_events(log) for h in e.hashes]


def stored_hashes(conn: sqlite3.Connection) -> set[bytes]:
    """The hashes in a state store's `nodes` table."""
    return {bytes(r[0]) for r in conn.execute("SELECT hash FROM nodes")}


# --- fault injection through the real ports (recovery, health and validation tests) ----------

T = TypeVar("T")


def database_locked() -> Exception:
    """The transient error SQLite gives a writer that waited too long for the write lock."""
    return sqlite3.OperationalError("database is locked")


@dataclass
class Fault:
    """Decides, call by call, whether a wrapped port method raises: the first `after` calls go
    through, the next `times` raise `error()` (`times=None`: every one from then on), the rest
    go through again. `on_raise` runs just before each raise (e.g. to count nodes then)."""

    times: int | None = 1
    after: int = 0
    error: Callable[[], Exception] = database_locked
    on_raise: Callable[[], None] | None = None
    calls: int = 0
    raised: int = 0

    def hit(self) -> None:
        self.calls += 1
        if self.calls <= self.after:
            return
        if self.times is not None and self.raised >= self.times:
            return
        self.raised += 1
        if self.on_raise is not None:
            self.on_raise()
        raise self.error()


class FailNTimes(Generic[T]):
    """An operation that fails its first `n` calls, then returns `result`; `call` is the sync
    form and `acall` the async one, sharing one count."""

    def __init__(self, n: int | None, result: T, error: Callable[[], Exception] = database_locked):
        self.fault = Fault(times=n, error=error)
        self.result = result

    @property
    def calls(self) -> int:
        return self.fault.calls

    def call(self) -> T:
        self.fault.hit()
        return self.result

    async def acall(self) -> T:
        self.fault.hit()
        return self.result


class FaultyNodeStore(HookedNodeStore):
    """A HookedNodeStore whose methods can also fail: `fail("delete_guarded", Fault(...))`."""

    def __init__(self, inner: NodeStorePort) -> None:
        super().__init__(inner)
        self.faults: dict[str, Fault] = {}

    def fail(self, method: str, fault: Fault) -> Fault:
        if not callable(getattr(self, method, None)):
            raise ValueError(f"NodeStorePort has no method {method!r}")
        self.faults[method] = fault
        return fault

    def _enter(self, method: str) -> None:
        super()._enter(method)
        fault = self.faults.get(method)
        if fault is not None:
            fault.hit()


class FaultyChain:
    """A ChainStatePort over a real one; `read_chain_view` hits `fault` first, when set."""

    def __init__(self, inner: ChainStatePort, fault: Fault | None = None) -> None:
        self.inner = inner
        self.fault = fault

    def read_chain_view(self) -> ChainView:
        if self.fault is not None:
            self.fault.hit()
        return self.inner.read_chain_view()

    def block_hash_at(self, height: int) -> str | None:
        return self.inner.block_hash_at(height)


class HookedReachStore:
    """A ReachStorePort over FileReachStore; `once_after_save(action)` runs `action(path)` on
    the file the NEXT save wrote, once (e.g. truncate it behind BuildReach's back)."""

    def __init__(self, inner: FileReachStore) -> None:
        self.inner = inner
        self._after_save: list[Callable[[Path], None]] = []

    def once_after_save(self, action: Callable[[Path], None]) -> None:
        self._after_save.append(action)

    def new(self) -> ReachSet:
        return self.inner.new()

    def save(self, snapshot_id: int, reach: ReachSet) -> str:
        digest = self.inner.save(snapshot_id, reach)
        actions, self._after_save = self._after_save, []
        for action in actions:
            action(self.inner.path(snapshot_id, digest))
        return digest

    def load(self, snapshot_id: int, digest: str) -> ReachSet:
        return self.inner.load(snapshot_id, digest)


def write_chain(state_path: Path, txs: int, seed: int = 1, keys: int = 200) -> None:
    """Commits `txs` seeded workload txs to the state store at `state_path`."""
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with SqliteStateStore.open(state_path) as store:
        WorkloadWriter(store, seed=seed, keys=keys).run(txs, batch=50)


FAST_RECOVERY = RecoveryConfig(base_retry_delay_ms=100, max_retry_delay_ms=250)
SMALL_PRUNE = PruneConfig(protection_orders=20, delete_batch_size=100)


@dataclass
class PrunerRig:
    """A Runtime on a data dir, and a Pruner over it whose node store, reach store and chain
    can fail on cue; sleeps are recorded, not slept, and the clock moves only when told."""

    rt: Runtime
    clock: ManualClock
    nodes: FaultyNodeStore
    reach: HookedReachStore
    chain: FaultyChain
    recovery: ErrorRecoveryManager
    pruner: Pruner
    sleeps: list[float] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.rt.settings.data_dir

    def events(self) -> list[Any]:
        return list(self.rt.log.events())

    def node_count(self) -> int:
        row = self.rt.nodes.conn.execute("SELECT COUNT(*) FROM nodes").fetchone()
        return int(row[0])

    def tamper_snapshot(self, snapshot_id: int) -> None:
        """Rewrites the stored Snapshot.Created row (latest_order + 1) through a separate
        connection, then evicts the cached aggregate so the next read sees the row as stored."""
        from domain.phases import PrunePhase
        from domain.snapshot import snapshot_uuid
        from infrastructure.transcoder import MsgpackTranscoder

        transcoder = MsgpackTranscoder(enums=[PrunePhase])
        sid = snapshot_uuid(self.rt.manager.group, snapshot_id)
        with events_db(self.data_dir) as db:
            rowid, state = db.execute(
                "SELECT rowid, state FROM stored_events "
                "WHERE topic = 'prunelog:Snapshot.Created' AND originator_id = ?",
                (sid.hex,),
            ).fetchone()
            fields = transcoder.decode(state)
            fields["latest_order"] += 1
            db.execute(
                "UPDATE stored_events SET state = ? WHERE rowid = ?",
                (transcoder.encode(fields), rowid),
            )
        self.rt.log._evict(sid)

    def reorg(self, height: int) -> None:
        """The chain moves to a different block hash at `height` (the state store's roots)."""
        with closing(sqlite3.connect(self.rt.state_path, isolation_level=None)) as db:
            db.execute(
                "UPDATE roots SET block_hash = ? WHERE block_height = ?", (b"\xee" * 32, height)
            )

    def close(self) -> None:
        self.rt.close()


def open_rig(
    data_dir: Path,
    *,
    recovery: RecoveryConfig = FAST_RECOVERY,
    snapshot: SnapshotManagerConfig | None = None,
    prune: PruneConfig = SMALL_PRUNE,
    clock: ManualClock | None = None,
) -> PrunerRig:
    """Opens a rig on `data_dir` (write a chain there first, see `write_chain`)."""
    clock = clock or ManualClock()
    settings = Settings(
        data_dir=data_dir,
        snapshot=snapshot or SnapshotManagerConfig(),
        recovery=recovery,
        prune=prune,
    )
    rt = Runtime(settings, clock=clock, owner="node-a")
    chain = FaultyChain(rt.chain)
    rt.manager.chain = chain
    sleeps: list[float] = []
    errors = ErrorRecoveryManager(rt.manager, recovery, sleep=sleeps.append)
    nodes = FaultyNodeStore(rt.nodes)
    reach = HookedReachStore(rt.reach_store)
    pruner = Pruner(rt.manager, nodes, reach, prune, recovery=errors)
    return PrunerRig(rt, clock, nodes, reach, chain, errors, pruner, sleeps)


class FailingAppendLog:
    """An EventLog that delegates to a real one, except that the first append carrying an event
    named `event_name` fails the way a busy or broken event store fails (EventLogError), and
    appends nothing."""

    def __init__(self, inner: EventsourcingLog, event_name: str) -> None:
        self.inner = inner
        self.event_name = event_name
        self.failed = 0

    def get(self, aggregate_id: UUID, cls: type[A]) -> A:
        return self.inner.get(aggregate_id, cls)

    def save(self, *aggregates: Aggregate) -> None:
        names = {type(e).__name__ for agg in aggregates for e in agg.pending_events}
        if not self.failed and self.event_name in names:
            self.failed += 1
            raise EventLogError("cannot append to the event log: database is locked")
        self.inner.save(*aggregates)
