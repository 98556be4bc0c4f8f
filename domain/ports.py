"""Ports: what the domain needs from the outside world, as Protocols."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple, Protocol, TypeVar, overload
from uuid import UUID

from eventsourcing.domain import Aggregate

A = TypeVar("A", bound=Aggregate)


@dataclass(frozen=True)
class ChainMetadata:
    block_height: int
    chain_timestamp: int
    latest_block_hash: str
    mempool_size: int | None = None
    sync_status: bool | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "block_height": self.block_height,
            "chain_timestamp": self.chain_timestamp,
            "latest_block_hash": self.latest_block_hash,
            "mempool_size": self.mempool_size,
            "sync_status": self.sync_status,
        }


@dataclass(frozen=True)
class ChainView:
    """Everything a snapshot needs from the chain, read in ONE read transaction."""

    latest_order: int
    state_root: str
    chain_metadata: ChainMetadata


class ChainStatePort(Protocol):
    def read_chain_view(self) -> ChainView:
        """Reads every field of the view inside a single read transaction."""
        ...

    def block_hash_at(self, height: int) -> str | None:
        """The chain's block hash at that height now, or None if the chain has no such block."""
        ...


class Clock(Protocol):
    def now(self) -> datetime:
        """Timezone-aware current time."""
        ...


class IntegrityHasher(Protocol):
    def __call__(self, fields: Mapping[str, object]) -> str:
        """A cryptographic hash (hex) over a canonical encoding of the fields."""
        ...


class EventLog(Protocol):
    """The repository port. Adapters turn library errors into domain errors."""

    def get(self, aggregate_id: UUID, cls: type[A]) -> A:
        """Raises AggregateNotFoundError, CorruptEventError or UnknownTopicError."""
        ...

    def save(self, *aggregates: Aggregate) -> None:
        """Appends atomically. Raises ConcurrencyConflictError if anyone appended first."""
        ...


# Row ids start at 1: a child the store cannot resolve to a row is reported as row 0, which a
# walk then finds missing like any other.
MISSING_ROW: Final = 0


class Expansion(NamedTuple):
    """What `NodeStorePort.expand` found: the rows that exist among those asked for, and the
    row ids of all their children (nested object roots included), in one flat list."""

    found: list[int]
    children: Sequence[int]


# A stale-index entry (order, hash, row_id, size): at `order`, a tx replaced the node `hash`,
# then in row `row_id`, `size` bytes of hash and data (row_id MISSING_ROW and size 0 when the
# store did not record them: look the hash up and read the row). (order, hash) is the entry's
# key; a sweep consumes entries by it. A plain tuple: a sweep reads millions.
StaleEntry = tuple[int, bytes, int, int]


@dataclass(frozen=True)
class JournalEntry:
    """A batch the state store deleted but the event log may not have recorded yet."""

    batch_key: str
    cycle_no: int
    snapshot_id: int
    phase: str
    batch_no: int
    deleted: Sequence[tuple[bytes, int]]  # (hash, bytes freed)
    row_ids: list[int] = field(default_factory=list)  # the deleted rows; [] if not recorded
    # The deleting holder and its lock's fencing token (PhaseLock.fence_token): the store
    # refuses the delete, in its own transaction, if a newer holder has deleted since.
    # 0: no fence (a store test, or a caller outside a lock).
    owner: str = ""
    fence_token: int = 0
    group: str = ""
    # One transaction may delete several audit batches: its rows go to NodesSwept events of
    # `event_rows` each, numbered from `batch_no`. 0: one event for the whole entry.
    event_rows: int = 0

    def event_batches(self, deleted: Sequence[tuple[bytes, int]]) -> list[tuple[int, DeletedNodes]]:
        """(batch_no, part) per NodesSwept event of `deleted`, what this entry journaled."""
        if not isinstance(deleted, DeletedNodes):
            deleted = DeletedNodes(deleted)
        row_ids = deleted.row_ids or self.row_ids
        size = self.event_rows or max(1, len(deleted))
        return [
            (
                self.batch_no + n,
                DeletedNodes.of_columns(
                    deleted.hashes[i : i + size],
                    deleted.sizes[i : i + size],
                    row_ids[i : i + size],
                ),
            )
            for n, i in enumerate(range(0, len(deleted), size))
        ]


class DeletedNodes(Sequence[tuple[bytes, int]]):
    """What a guarded delete removed: (hash, bytes freed) per node, and `row_ids`, the same
    nodes' row ids (the unit of the reach set), so the audit can re-check a batch against
    the reach set it was swept with. Held as columns: a sweep reports a million nodes, and
    the journal and the audit read them a column at a time."""

    __slots__ = ("hashes", "row_ids", "sizes")

    def __init__(
        self, deleted: Iterable[tuple[bytes, int]] = (), row_ids: Iterable[int] = ()
    ) -> None:
        pairs = list(deleted)
        self.hashes: list[bytes] = [h for h, _ in pairs]
        self.sizes: list[int] = [n for _, n in pairs]
        self.row_ids: list[int] = list(row_ids)

    @classmethod
    def of_columns(
        cls, hashes: list[bytes], sizes: list[int], row_ids: list[int] | None = None
    ) -> DeletedNodes:
        """Takes the lists as they are (no copy); `sizes` pairs up with `hashes`."""
        if len(sizes) != len(hashes):
            raise ValueError(f"{len(hashes)} hashes but {len(sizes)} sizes")
        nodes = cls()
        nodes.hashes, nodes.sizes, nodes.row_ids = hashes, sizes, row_ids or []
        return nodes

    def __len__(self) -> int:
        return len(self.hashes)

    @overload
    def __getitem__(self, index: int) -> tuple[bytes, int]: ...

    @overload
    def __getitem__(self, index: slice) -> DeletedNodes: ...

    def __getitem__(self, index: int | slice) -> tuple[bytes, int] | DeletedNodes:
        if isinstance(index, slice):
            return DeletedNodes.of_columns(
                self.hashes[index], self.sizes[index], self.row_ids[index]
            )
        return self.hashes[index], self.sizes[index]

    def __iter__(self) -> Iterator[tuple[bytes, int]]:
        return zip(self.hashes, self.sizes, strict=True)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DeletedNodes):
            return (self.hashes, self.sizes) == (other.hashes, other.sizes)
        return isinstance(other, list) and list(self) == other

    __hash__ = None  # type: ignore[assignment]  # mutable, like the list it stands for

    def __repr__(self) -> str:
        return f"DeletedNodes({list(self)!r}, row_ids={self.row_ids!r})"


def row_ids_of(deleted: Sequence[tuple[bytes, int]]) -> list[int]:
    """The row ids a store reported for a delete; [] when it returned a plain list."""
    return deleted.row_ids if isinstance(deleted, DeletedNodes) else []


def hashes_of(deleted: Sequence[tuple[bytes, int]]) -> list[bytes]:
    """The deleted hashes, in order (a new list)."""
    if isinstance(deleted, DeletedNodes):
        return list(deleted.hashes)
    return [h for h, _ in deleted]


def bytes_freed(deleted: Sequence[tuple[bytes, int]]) -> int:
    return sum(deleted.sizes if isinstance(deleted, DeletedNodes) else (n for _, n in deleted))


class NodeStorePort(Protocol):
    """The state store as the pruner sees it. Deletes are always guarded by written_order."""

    def retained_roots(self, from_order: int, to_order: int) -> list[bytes]:
        """Roots with order in [from_order, to_order], plus genesis and pinned roots."""
        ...

    def expired_roots(self, below_order: int) -> list[tuple[int, bytes]]:
        """Not-yet-swept, unpinned roots with 0 < order < below_order, ascending."""
        ...

    def ids_of(self, hashes: list[bytes]) -> dict[bytes, int]:
        """The row ids of the stored ones among `hashes` (missing ones are left out)."""
        ...

    def expand(self, row_ids: list[int]) -> Expansion:
        """The walks' step, by row id: which of `row_ids` exist, and their children's row ids
        (what the node refers to, an object's field-tree root included). Missing rows are left
        out of `found`; a child row that no longer exists is reported as it was recorded."""
        ...

    def delete_guarded(
        self, row_ids: list[int], max_order: int, journal: JournalEntry, swept: list[int]
    ) -> Sequence[tuple[bytes, int]]:
        """In ONE write transaction: delete rows whose written_order <= max_order, journal what
        was deleted, and mark the `swept` root orders done. Returns (hash, bytes) deleted, as
        DeletedNodes when the store also reports the row ids (SqliteNodeStore does)."""
        ...

    def stale_entries(self, up_to_order: int, limit: int) -> list[StaleEntry]:
        """The first `limit` entries with order <= up_to_order, in key order, leaving out
        those of a batch already deleted whose journal entry is not logged yet (a store may
        keep them until `mark_journal_logged`)."""
        ...

    def sweep_stale(
        self,
        entries: list[StaleEntry],
        row_ids: list[int],
        max_order: int,
        journal: JournalEntry,
    ) -> Sequence[tuple[bytes, int]]:
        """One transaction: guarded delete of `row_ids`, journal, and consume `entries`
        (distinct entries in key order, as `stale_entries` returns them)."""
        ...

    def unlogged_journal(self) -> list[JournalEntry]: ...

    def mark_journal_logged(self, batch_key: str) -> None: ...


class ReachSet(Protocol):
    """A set of row ids with bulk operations, so a walk step is a few calls, not a loop."""

    def __contains__(self, row_id: int, /) -> bool: ...

    def __len__(self) -> int: ...

    def add_new(self, row_ids: Iterable[int], *, unless_in: ReachSet | None = None) -> list[int]:
        """Adds those of `row_ids` not in `unless_in`; returns those that were not in the set
        yet, once each, ascending."""
        ...

    def absent(self, row_ids: Iterable[int], *, unless_in: ReachSet | None = None) -> list[int]:
        """Those of `row_ids` in neither this set nor `unless_in`, once each, ascending."""
        ...


class ReachStorePort(Protocol):
    def new(self) -> ReachSet: ...

    def save(self, snapshot_id: int, reach: ReachSet) -> str:
        """Persists the set durably; returns its digest."""
        ...

    def load(self, snapshot_id: int, digest: str) -> ReachSet:
        """Raises ReachSetCorruptError if missing or if the digest does not match."""
        ...


class Progress(Protocol):
    def __call__(self, phase: str, done: int, total: int | None) -> None: ...


class EventHistory(Protocol):
    """The whole log in order, as domain events (for folds: health, validation, audit)."""

    def events(self, start: int = 1) -> Iterator[Any]: ...


class HolderLiveness(Protocol):
    def is_gone(self, owner: str) -> bool:
        """True only when the lock holder is certainly not running (e.g. same host, no such
        process). Unknown means False: then only the timeout frees the lock."""
        ...
