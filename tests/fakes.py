"""Fakes that implement the real ports, and small readers of the log for assertions. No mocks."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain.ports import ChainMetadata, ChainView
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
