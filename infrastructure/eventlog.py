"""The event log: an eventsourcing Application on SQLite (WAL) or PostgreSQL, with our msgpack
transcoder and stable topics. Library errors stop here and leave as domain errors."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError as LibNotFound
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    Mapper,
    MapperDeserialisationError,
    OperationalError,
    PersistenceError,
    Transcoder,
)

from domain.errors import (
    AggregateNotFoundError,
    ConcurrencyConflictError,
    ConfigError,
    CorruptEventError,
    DataDirError,
    EventLogError,
    EventLogUnreachableError,
)
from domain.phases import PrunePhase
from infrastructure.postgres import Listener, is_postgres_url, postgres_env, prepare, redact
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

    def __init__(
        self, app: PrunelogApplication, *, where: str = "", listener: Listener | None = None
    ) -> None:
        self.app = app
        self.where = where  # for messages: a file path or a redacted URL
        self.backend = "postgresql" if listener is not None else "sqlite"
        self._listener = listener
        # Called with each event once it is durably appended (structured logs, metrics).
        self.observers: list[Callable[[Any], None]] = []

    @classmethod
    def open(cls, data_dir: Path, event_store: str | None = None) -> EventsourcingLog:
        """SQLite in `data_dir` (the default), or the PostgreSQL log at a postgresql:// URL."""
        if event_store in (None, "", "sqlite"):
            return cls.open_sqlite(data_dir)
        assert event_store is not None
        if is_postgres_url(event_store):
            return cls.open_postgres(event_store)
        raise ConfigError(
            f"event_store must be 'sqlite' or a postgresql:// URL, not {redact(event_store)!r}"
        )

    @classmethod
    def open_postgres(cls, url: str) -> EventsourcingLog:
        env = postgres_env(url)
        try:
            with prepare(url):
                app = PrunelogApplication(env=env)
        except EventLogError:
            raise  # prepare's own clear message (an EventLogUnreachableError is an OSError)
        except (PersistenceError, OSError) as exc:
            kind = EventLogUnreachableError if isinstance(exc, OperationalError) else EventLogError
            raise kind(
                f"cannot open the PostgreSQL event log at {redact(url)}: {_first_line(exc)}"
            ) from None
        channel = getattr(app.recorder, "channel_name", "prunelog_events")
        return cls(app, where=redact(url), listener=Listener(url, channel))

    def wait(self, after: int, timeout: float) -> bool:
        """Blocks until the log's head passes `after` or `timeout` seconds pass (PositionedLog
        port). PostgreSQL wakes on NOTIFY; SQLite polls the head."""
        deadline = time.monotonic() + timeout
        if self.head() > after:
            return True
        if self._listener is not None:
            self._listener.wait(timeout)
            return self.head() > after
        while time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            if self.head() > after:
                return True
        return False

    @classmethod
    def open_sqlite(cls, data_dir: Path) -> EventsourcingLog:
        ensure_data_dir(data_dir)
        db = data_dir / EVENTS_FILE
        _check_sqlite_file(db)
        try:
            return cls(PrunelogApplication(env=sqlite_env(db)), where=str(db))
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
            raise _log_error("cannot read the event log", exc) from None
        if not isinstance(agg, cls):
            raise EventLogError(f"aggregate {aggregate_id} is a {type(agg).__name__}, not {cls}")
        return agg

    def save(self, *aggregates: Aggregate) -> None:
        appended = [e for agg in aggregates for e in agg.pending_events] if self.observers else []
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
            raise _log_error("cannot append to the event log", exc) from None
        for event in appended:
            for observer in self.observers:
                observer(event)

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
                raise _log_error("cannot read the event log", exc) from None
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
            raise _log_error("cannot read the event log", exc) from None
        out = []
        for n in page:
            try:
                out.append((n.id, self.app.mapper.to_domain_event(n)))
            except MapperDeserialisationError as exc:
                msg = f"corrupt event at log position {n.id}: {exc}"
                raise CorruptEventError(msg) from None
        return out

    def head(self) -> int:
        try:
            return int(self.app.recorder.max_notification_id() or 0)
        except PersistenceError as exc:
            raise _log_error("cannot read the event log", exc) from None

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self.app.close()

    def __enter__(self) -> EventsourcingLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _log_error(action: str, exc: PersistenceError) -> EventLogError:
    """A lost connection or a busy/unreachable server may pass (EventLogUnreachableError, which
    `run` waits out); anything else will not."""
    kind = (
        EventLogUnreachableError
        if isinstance(exc, OperationalError | InterfaceError)
        else EventLogError
    )
    return kind(f"{action}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


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
