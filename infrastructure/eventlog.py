"""The event log: an eventsourcing Application on SQLite (WAL), with our msgpack transcoder and
stable topics. Library errors stop here and leave as domain errors."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError as LibNotFound
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    IntegrityError,
    Mapper,
    MapperDeserialisationError,
    PersistenceError,
    Transcoder,
)

from domain.errors import (
    AggregateNotFoundError,
    ConcurrencyConflictError,
    CorruptEventError,
    DataDirError,
    EventLogError,
)
from domain.phases import PrunePhase
from infrastructure.topics import StableTopicMapper
from infrastructure.transcoder import MsgpackTranscoder

A = TypeVar("A", bound=Aggregate)

DEFAULT_DATA_DIR = "prunelog-data"
EVENTS_FILE = "events.sqlite"
STATE_FILE = "state.sqlite"


def resolve_data_dir(option: str | os.PathLike[str] | None = None) -> Path:
    """--data-dir beats PRUNELOG_DATA_DIR beats ./prunelog-data."""
    chosen = option or os.environ.get("PRUNELOG_DATA_DIR") or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().absolute()


def ensure_data_dir(path: Path) -> Path:
    """Creates the directory and proves it is writable, or raises DataDirError saying why."""
    if path.exists() and not path.is_dir():
        raise DataDirError(f"data directory {path} exists but is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise DataDirError(
            f"data directory {path} is not writable: {exc.strerror or exc}"
        ) from None
    return path


class PrunelogApplication(Application[UUID]):
    name = "prunelog"
    log_section_size = 1000

    def construct_mapper(self) -> Mapper[UUID]:
        return StableTopicMapper(transcoder=self.construct_transcoder())

    def construct_transcoder(self) -> Transcoder:
        return MsgpackTranscoder(enums=[PrunePhase])


def sqlite_env(db_path: Path) -> dict[str, str]:
    return {
        "PERSISTENCE_MODULE": "infrastructure.sqlite_factory:PrunelogSQLiteFactory",
        "AGGREGATE_CACHE_MAXSIZE": "1000",
        # The cache hands out its own objects (a deepcopy cost 0.3 ms a get); `get` evicts
        # any that a failed command left with unsaved events.
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
        "SQLITE_DBNAME": str(db_path),
        "SQLITE_LOCK_TIMEOUT": "30",
    }


class EventsourcingLog:
    """Implements the domain's EventLog port over a PrunelogApplication."""

    def __init__(self, app: PrunelogApplication) -> None:
        self.app = app

    @classmethod
    def open_sqlite(cls, data_dir: Path) -> EventsourcingLog:
        ensure_data_dir(data_dir)
        db = data_dir / EVENTS_FILE
        _check_sqlite_file(db)
        try:
            return cls(PrunelogApplication(env=sqlite_env(db)))
        except PersistenceError as exc:
            raise EventLogError(f"cannot open event log {db}: {exc}") from None

    def get(self, aggregate_id: UUID, cls: type[A]) -> A:
        try:
            agg: Aggregate = self.app.repository.get(aggregate_id)
            if agg.pending_events:
                self._evict(aggregate_id)
                agg = self.app.repository.get(aggregate_id)
        except LibNotFound:
            raise AggregateNotFoundError(f"no aggregate {aggregate_id} in the log") from None
        except MapperDeserialisationError as exc:
            raise CorruptEventError(f"corrupt event in the log: {exc}") from None
        except PersistenceError as exc:
            raise EventLogError(f"cannot read the event log: {exc}") from None
        if not isinstance(agg, cls):
            raise EventLogError(f"aggregate {aggregate_id} is a {type(agg).__name__}, not {cls}")
        return agg

    def save(self, *aggregates: Aggregate) -> None:
        try:
            self.app.save(*aggregates)
        except IntegrityError:
            for agg in aggregates:
                self._evict(agg.id)
            raise ConcurrencyConflictError(
                "another writer appended to the same aggregate version first"
            ) from None
        except PersistenceError as exc:
            for agg in aggregates:
                self._evict(agg.id)
            raise EventLogError(f"cannot append to the event log: {exc}") from None

    def _evict(self, aggregate_id: UUID) -> None:
        cache = self.app.repository.cache
        if cache is not None:
            with suppress(KeyError):
                cache.get(aggregate_id, evict=True)

    def events(self, start: int = 1) -> Iterator[Any]:
        """Every event from log position `start`, decoded, in order (EventHistory port)."""
        while True:
            try:
                page = self.app.recorder.select_notifications(start=start, limit=1000)
            except PersistenceError as exc:
                raise EventLogError(f"cannot read the event log: {exc}") from None
            if not page:
                return
            for n in page:
                try:
                    yield self.app.mapper.to_domain_event(n)
                except MapperDeserialisationError as exc:
                    raise CorruptEventError(
                        f"corrupt event at log position {n.id}: {exc}"
                    ) from None
            start = page[-1].id + 1

    def read(self, start: int, limit: int) -> list[tuple[int, Any]]:
        """(position, event) pairs from `start` (PositionedLog port, for projections)."""
        try:
            page = self.app.recorder.select_notifications(start=start, limit=limit)
        except PersistenceError as exc:
            raise EventLogError(f"cannot read the event log: {exc}") from None
        out = []
        for n in page:
            try:
                out.append((n.id, self.app.mapper.to_domain_event(n)))
            except MapperDeserialisationError as exc:
                msg = f"corrupt event at log position {n.id}: {exc}"
                raise CorruptEventError(msg) from None
        return out

    def head(self) -> int:
        return int(self.app.recorder.max_notification_id() or 0)

    def close(self) -> None:
        self.app.close()

    def __enter__(self) -> EventsourcingLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_sqlite_file(db: Path) -> None:
    """A truncated or foreign file gets a clear error before the library touches it. Cheap on
    purpose (header and schema only): a full integrity check belongs to `prunelog validate`."""
    if not db.exists() or db.stat().st_size == 0:
        return
    with open(db, "rb") as f:
        header = f.read(16)
    if header != b"SQLite format 3\x00":
        raise EventLogError(f"event log {db} is not an SQLite database (bad header)")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            conn.execute("SELECT max(rowid) FROM stored_events").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return
        raise EventLogError(f"event log {db} is not readable: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise EventLogError(f"event log {db} is not a readable SQLite database: {exc}") from None
