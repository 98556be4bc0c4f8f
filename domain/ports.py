"""Ports: what the domain needs from the outside world, as Protocols."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar
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
