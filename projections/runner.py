"""Catch-up and rebuild of the read models, polling the log (eventsourcing's ProjectionRunner
cannot subscribe to an SQLite recorder). Rows and the tracking position commit together, so a
crash never applies an event twice or skips one."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from projections.models import ALL, CYCLE_IDS_DDL, Projection, register_ids
from projections.ports import PositionedLog

BATCH = 2000


class UnknownProjectionError(KeyError):
    pass


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    position: int
    head: int
    tables_ok: bool
    consistent: bool | None  # None when not verified

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)

    @property
    def ok(self) -> bool:
        return self.tables_ok and self.consistent is not False


class ProjectionRunner:
    def __init__(
        self,
        path: Path | str,
        source: PositionedLog,
        projections: Iterable[Projection] | None = None,
    ) -> None:
        self.path = str(path)
        self.source = source
        self.projections = {p.name: p for p in (projections or [cls() for cls in ALL])}
        self.db = _connect(self.path)
        self._setup(self.db)

    def _setup(self, db: sqlite3.Connection) -> None:
        sdb = sqlite_utils.Database(db)
        # One write transaction, taken up front: processes that open a fresh file at once
        # (several nodes starting on one data dir) wait for each other instead of failing
        # "database is locked" when a read of the schema turns into a write.
        db.execute("BEGIN IMMEDIATE")
        try:
            sdb.table("tracking").create(
                {"name": str, "position": int}, pk="name", if_not_exists=True
            )
            sdb.table("schema").create({"name": str, "version": int}, pk="name", if_not_exists=True)
            for statement in CYCLE_IDS_DDL:
                db.execute(statement)
            for p in self.projections.values():
                row = db.execute("SELECT version FROM schema WHERE name=?", (p.name,)).fetchone()
                # No schema row but a tracked position: tables from before versions were kept.
                stored = (
                    row[0] if row is not None else (1 if self.position(p.name, db) else p.version)
                )
                if stored != p.version:
                    # Tables from another version of prunelog: start this projection over.
                    p.drop(db)
                    db.execute("DELETE FROM tracking WHERE name=?", (p.name,))
                p.create(db)
                db.execute("INSERT OR REPLACE INTO schema VALUES (?, ?)", (p.name, p.version))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()

    def position(self, name: str, db: sqlite3.Connection | None = None) -> int:
        row = (db or self.db).execute("SELECT position FROM tracking WHERE name=?", (name,))
        found = row.fetchone()
        return int(found[0]) if found else 0

    def _get(self, name: str) -> Projection:
        try:
            return self.projections[name]
        except KeyError:
            known = ", ".join(self.projections)
            raise UnknownProjectionError(f"unknown projection {name!r}; known: {known}") from None

    def catch_up(
        self,
        names: Iterable[str] | None = None,
        *,
        db: sqlite3.Connection | None = None,
        until: int | None = None,
        on_batch: Callable[[str, int, int], None] | None = None,
    ) -> dict[str, int]:
        """Applies every event after each projection's tracked position, reading the log once
        for all of them. Returns how many events each projection applied."""
        db = db or self.db
        chosen = [self._get(n) for n in (names or list(self.projections))]
        positions = {p.name: self.position(p.name, db) for p in chosen}
        applied = dict.fromkeys(positions, 0)
        head = self.source.head() if until is None else until
        pos = min(positions.values(), default=head)
        while pos < head:
            page = self.source.read(pos + 1, min(BATCH, head - pos))
            if not page:
                break
            db.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have caught up since we looked: re-read inside the lock.
                positions = {p.name: self.position(p.name, db) for p in chosen}
                for p in chosen:
                    p.begin(db)
                for position, event in page:
                    register_ids(db, event)
                    for p in chosen:
                        if position > positions[p.name]:
                            p.apply(db, position, event)
                            applied[p.name] += 1
                pos = page[-1][0]
                for p in chosen:
                    p.flush(db)
                    if pos > positions[p.name]:
                        positions[p.name] = pos
                        db.execute("INSERT OR REPLACE INTO tracking VALUES (?, ?)", (p.name, pos))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                for p in chosen:
                    p.discard()
                raise
            if on_batch:
                on_batch("all", pos, head)
        return applied

    def follow(
        self,
        should_stop: Callable[[], bool],
        *,
        wait_s: float = 1.0,
        on_batch: Callable[[str, int, int], None] | None = None,
    ) -> int:
        """Keeps every projection caught up until `should_stop()`: wakes when the log grows
        (LISTEN/NOTIFY on PostgreSQL, polling on SQLite). Returns events applied."""
        total = 0
        while not should_stop():
            total += max(self.catch_up(on_batch=on_batch).values(), default=0)
            behind = min((self.position(n) for n in self.projections), default=0)
            self.source.wait(behind, wait_s)
        return total

    def rebuild(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """Drops each projection's tables and replays the whole log into them."""
        chosen = list(names or self.projections)
        for name in chosen:
            p = self._get(name)
            self.db.execute("BEGIN IMMEDIATE")
            p.drop(self.db)
            self.db.execute("DELETE FROM tracking WHERE name=?", (name,))
            p.create(self.db)
            p.defer_indexes(self.db)
            self.db.execute("COMMIT")
        try:
            return self.catch_up(chosen)
        finally:
            for name in chosen:  # build each deferred index once, from sorted rows
                self._get(name).create(self.db)

    def digest(self, name: str, db: sqlite3.Connection | None = None) -> str:
        """A fingerprint of a projection's rows, for comparison with a fresh rebuild."""
        db = db or self.db
        p = self._get(name)
        h = hashlib.blake2b(digest_size=16)
        for table, order in sorted(p.order_by.items()):
            for row in db.execute(f"SELECT * FROM {table} ORDER BY {order}"):
                h.update(repr(tuple(row)).encode())
        return h.hexdigest()

    def verify(self, name: str) -> bool:
        """True if the projection equals a fresh rebuild up to its own tracked position."""
        return self.verify_many([name])[name]

    def verify_many(self, names: Iterable[str]) -> dict[str, bool]:
        """`verify` for several projections, with one pass over the log for all those at the
        same position (usually all of them) instead of one pass each."""
        by_position: dict[int, list[str]] = {}
        for name in names:
            self._get(name)
            by_position.setdefault(self.position(name), []).append(name)
        out: dict[str, bool] = {}
        for pos, group in by_position.items():
            fresh = _connect(":memory:")
            try:
                scratch = ProjectionRunner.__new__(ProjectionRunner)
                scratch.path, scratch.source, scratch.db = ":memory:", self.source, fresh
                scratch.projections = {name: self._get(name) for name in group}
                scratch._setup(fresh)
                for name in group:
                    self._get(name).defer_indexes(fresh)
                scratch.catch_up(group, until=pos)
                for name in group:
                    try:
                        out[name] = scratch.digest(name) == self.digest(name)
                    except sqlite3.DatabaseError:  # our copy's tables are broken
                        out[name] = False
            finally:
                fresh.close()
        return out

    def status(self, *, verify: bool = True) -> list[ProjectionStatus]:
        head = self.source.head()
        tables = {
            name: all(_table_exists(self.db, t) for t in p.tables)
            for name, p in self.projections.items()
        }
        checked: dict[str, bool] = {}
        if verify:
            try:
                checked = self.verify_many(n for n, ok in tables.items() if ok)
            except sqlite3.DatabaseError:
                checked = {}
        out = []
        for name in self.projections:
            consistent: bool | None = None
            if verify:
                consistent = tables[name] and checked.get(name, False)
            out.append(ProjectionStatus(name, self.position(name), head, tables[name], consistent))
        return out

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return list(self.db.execute(sql, params))


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.row_factory = sqlite3.Row
    if path != ":memory:":
        _switch_to_wal(db)
        db.execute("PRAGMA synchronous=NORMAL")
    return db


def _switch_to_wal(db: sqlite3.Connection, attempts: int = 50) -> None:
    """Turning a fresh file to WAL needs it exclusively, and SQLite answers "database is
    locked" at once (no busy wait) when another process opens it at the same moment."""
    for attempt in range(attempts):
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))


def _table_exists(db: sqlite3.Connection, table: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,))
    return row.fetchone() is not None
