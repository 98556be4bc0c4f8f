"""The read models. Each one folds events into its own tables; the runner commits the rows
and the tracking position together."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from domain.config import RecoveryConfig
from domain.health import HealthMonitor


def _ts(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


class Projection:
    name: ClassVar[str]
    # Bump when the tables change shape: the runner then drops and rebuilds the projection.
    version: ClassVar[int] = 1
    ddl: ClassVar[tuple[str, ...]]
    tables: ClassVar[tuple[str, ...]]
    # columns that order rows for comparisons (every table has a total order)
    order_by: ClassVar[dict[str, str]]
    # secondary indexes (created by `ddl`) that only queries need, not the handlers
    deferred_indexes: ClassVar[tuple[str, ...]] = ()

    def create(self, db: sqlite3.Connection) -> None:
        for statement in self.ddl:
            db.execute(statement)

    def drop(self, db: sqlite3.Connection) -> None:
        for table in self.tables:
            db.execute(f"DROP TABLE IF EXISTS {table}")

    def defer_indexes(self, db: sqlite3.Connection) -> None:
        """A replay from scratch drops these secondary indexes; `create` builds them again
        at the end, from sorted rows, instead of one random insert per row."""
        for index in self.deferred_indexes:
            db.execute(f"DROP INDEX IF EXISTS {index}")

    def begin(self, db: sqlite3.Connection) -> None:
        """Called inside the batch's transaction, before its events."""

    def flush(self, db: sqlite3.Connection) -> None:
        """Called inside the batch's transaction, after its events, before the commit."""

    def discard(self) -> None:
        """The batch's transaction rolled back: forget anything held in memory for it."""

    def apply(self, db: sqlite3.Connection, position: int, event: Any) -> None:
        handler = getattr(self, "on_" + type(event).__qualname__.replace(".", "_"), None)
        if handler is not None:
            handler(db, position, event)


class LocksProjection(Projection):
    name = "locks"
    version = 2  # 2: timeout_ms, so PhaseLock.Renewed can move expires_at
    tables = ("locks",)
    order_by: ClassVar[dict[str, str]] = {"locks": "grp"}
    ddl = (
        "CREATE TABLE IF NOT EXISTS locks (grp TEXT PRIMARY KEY, owner TEXT, phase TEXT, "
        "snapshot_id INTEGER, since TEXT, expires_at TEXT, takeovers INTEGER NOT NULL DEFAULT 0, "
        "position INTEGER NOT NULL, timeout_ms INTEGER)",
    )

    def on_PhaseLock_Created(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        db.execute(
            "INSERT OR REPLACE INTO locks(grp, position, takeovers) VALUES (?, ?, 0)",
            (e.group, pos),
        )

    def on_PhaseLock_Locked(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        from datetime import timedelta

        expires = e.at + timedelta(milliseconds=e.timeout_ms)
        db.execute(
            "UPDATE locks SET owner=?, phase=?, snapshot_id=?, since=?, expires_at=?, position=?, "
            "timeout_ms=? WHERE grp = (SELECT grp FROM lock_ids WHERE id = ?)",
            (
                e.owner,
                e.phase,
                e.snapshot_id,
                _ts(e.at),
                _ts(expires),
                pos,
                e.timeout_ms,
                str(e.originator_id),
            ),
        )

    def on_PhaseLock_Renewed(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        from datetime import timedelta

        lock_id = str(e.originator_id)
        row = db.execute(
            "SELECT timeout_ms FROM locks WHERE grp = (SELECT grp FROM lock_ids WHERE id = ?)",
            (lock_id,),
        ).fetchone()
        expires = e.at + timedelta(milliseconds=row[0] if row and row[0] else 0)
        db.execute(
            "UPDATE locks SET expires_at = ?, position = ? "
            "WHERE grp = (SELECT grp FROM lock_ids WHERE id = ?)",
            (_ts(expires), pos, lock_id),
        )

    def _free(self, db: sqlite3.Connection, pos: int, e: Any, takeover: int) -> None:
        db.execute(
            "UPDATE locks SET owner=NULL, phase=NULL, since=NULL, expires_at=NULL, "
            "takeovers = takeovers + ?, position=? "
            "WHERE grp = (SELECT grp FROM lock_ids WHERE id = ?)",
            (takeover, pos, str(e.originator_id)),
        )

    def on_PhaseLock_Released(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        self._free(db, pos, e, 0)

    def on_PhaseLock_Expired(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        self._free(db, pos, e, 1 if e.taken_over_by else 0)


class SnapshotsProjection(Projection):
    name = "snapshots"
    tables = ("snapshots",)
    order_by: ClassVar[dict[str, str]] = {"snapshots": "grp, snapshot_id"}
    ddl = (
        "CREATE TABLE IF NOT EXISTS snapshots (id TEXT UNIQUE, grp TEXT, snapshot_id INTEGER, "
        "cycle_no INTEGER, latest_order INTEGER, state_root TEXT, block_height INTEGER, "
        "block_hash TEXT, created_at TEXT, created_phase TEXT, status TEXT, reason TEXT, "
        "reach_count INTEGER, reach_digest TEXT, PRIMARY KEY (grp, snapshot_id))",
    )

    def on_Snapshot_Created(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        meta = e.chain_metadata
        db.execute(
            "INSERT OR REPLACE INTO snapshots(id, grp, snapshot_id, cycle_no, latest_order, "
            "state_root, block_height, block_hash, created_at, created_phase, status) "
            "VALUES (?,?,?,?,?,?,?,?,?,?, 'created')",
            (
                str(e.originator_id),
                e.group,
                e.snapshot_id,
                e.cycle_no,
                e.latest_order,
                e.state_root,
                meta.get("block_height"),
                meta.get("latest_block_hash"),
                _ts(e.created_at),
                e.created_phase,
            ),
        )

    def _status(self, db: sqlite3.Connection, e: Any, status: str, reason: str | None) -> None:
        db.execute(
            "UPDATE snapshots SET status=?, reason=? WHERE id=?",
            (status, reason, str(e.originator_id)),
        )

    def on_Snapshot_Validated(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        self._status(db, e, "validated", None)

    def on_Snapshot_Invalidated(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        self._status(db, e, "invalidated", e.reason)

    def on_Snapshot_Expired(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        self._status(db, e, "expired", None)

    def on_Snapshot_ReachBuilt(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        db.execute(
            "UPDATE snapshots SET reach_count=?, reach_digest=? WHERE id=?",
            (e.node_count, e.digest, str(e.originator_id)),
        )


class AuditProjection(Projection):
    """node hash -> the batch that deleted it. Hashes are stored once per deletion as 32-byte
    blobs pointing at their batch (keyed by log position), which keeps rebuilds fast."""

    name = "audit"
    version = 2
    tables = ("audit", "audit_batches")
    order_by: ClassVar[dict[str, str]] = {
        "audit": "node_hash, batch_ref",
        "audit_batches": "batch_ref",
    }
    deferred_indexes = ("audit_by_hash",)
    ddl = (
        "CREATE TABLE IF NOT EXISTS audit_batches (batch_ref INTEGER PRIMARY KEY, grp TEXT, "
        "cycle_no INTEGER, snapshot_id INTEGER, phase TEXT, batch_no INTEGER, at TEXT)",
        "CREATE TABLE IF NOT EXISTS audit (node_hash BLOB NOT NULL, batch_ref INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS audit_by_hash ON audit(node_hash)",
        "CREATE INDEX IF NOT EXISTS audit_batches_by_cycle ON audit_batches(grp, cycle_no)",
        "CREATE VIEW IF NOT EXISTS audit_view AS SELECT lower(hex(a.node_hash)) AS node_hash, "
        "b.grp, b.cycle_no, b.snapshot_id, b.phase, b.batch_no, b.batch_ref AS position, b.at "
        "FROM audit a JOIN audit_batches b USING (batch_ref)",
    )

    def drop(self, db: sqlite3.Connection) -> None:
        db.execute("DROP VIEW IF EXISTS audit_view")
        super().drop(db)

    def on_PruneCycle_NodesSwept(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        grp, cycle_no = _cycle_of(db, e)
        db.execute(
            "INSERT INTO audit_batches VALUES (?,?,?,?,?,?,?)",
            (pos, grp, cycle_no, e.snapshot_id, e.phase, e.batch_no, _ts(e.at)),
        )
        db.executemany("INSERT INTO audit VALUES (?, ?)", [(h, pos) for h in e.hashes])

    on_PruneCycle_BatchRecovered = on_PruneCycle_NodesSwept


class TimelineProjection(Projection):
    name = "timeline"
    tables = ("timeline",)
    order_by: ClassVar[dict[str, str]] = {"timeline": "grp, cycle_no, run"}
    ddl = (
        "CREATE TABLE IF NOT EXISTS timeline (grp TEXT, cycle_no INTEGER, run INTEGER, "
        "phase TEXT, snapshot_id INTEGER, started_at TEXT, ended_at TEXT, outcome TEXT, "
        "deleted INTEGER NOT NULL DEFAULT 0, bytes_freed INTEGER NOT NULL DEFAULT 0, "
        "batches INTEGER NOT NULL DEFAULT 0, error TEXT, PRIMARY KEY (grp, cycle_no, run))",
    )

    def _open_run(self, db: sqlite3.Connection, e: Any) -> None:
        grp, cycle_no = _cycle_of(db, e)
        run = db.execute(
            "SELECT coalesce(max(run), 0) + 1 FROM timeline WHERE grp=? AND cycle_no=?",
            (grp, cycle_no),
        ).fetchone()[0]
        db.execute(
            "INSERT INTO timeline(grp, cycle_no, run, phase, snapshot_id, started_at, outcome) "
            "VALUES (?,?,?,?,?,?, 'running')",
            (grp, cycle_no, run, e.phase, e.snapshot_id, _ts(e.at)),
        )

    def _close_run(self, db: sqlite3.Connection, e: Any, outcome: str, error: str | None) -> None:
        grp, cycle_no = _cycle_of(db, e)
        db.execute(
            "UPDATE timeline SET ended_at=?, outcome=?, error=? WHERE grp=? AND cycle_no=? AND "
            "run=(SELECT max(run) FROM timeline WHERE grp=? AND cycle_no=?)",
            (_ts(e.at), outcome, error, grp, cycle_no, grp, cycle_no),
        )

    def on_PruneCycle_PhaseStarted(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        self._open_run(db, e)

    def on_PruneCycle_PhaseResumed(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        self._open_run(db, e)

    def on_PruneCycle_PhaseCompleted(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        self._close_run(db, e, "completed", None)

    def on_PruneCycle_PhaseFailed(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        self._close_run(db, e, "failed", f"{e.error_type}: {e.message}")

    def on_PruneCycle_NodesSwept(self, db: sqlite3.Connection, pos: int, e: Any) -> None:
        grp, cycle_no = _cycle_of(db, e)
        db.execute(
            "UPDATE timeline SET deleted = deleted + ?, bytes_freed = bytes_freed + ?, "
            "batches = batches + 1 WHERE grp=? AND cycle_no=? AND "
            "run=(SELECT max(run) FROM timeline WHERE grp=? AND cycle_no=?)",
            (e.count, e.bytes_freed, grp, cycle_no, grp, cycle_no),
        )


class HealthProjection(Projection):
    name = "health"
    tables = ("health", "health_state")
    order_by: ClassVar[dict[str, str]] = {"health": "scope", "health_state": "id"}
    ddl = (
        "CREATE TABLE IF NOT EXISTS health (scope TEXT PRIMARY KEY, status TEXT, "
        "last_success TEXT, consecutive_failures INTEGER, detail TEXT)",
        "CREATE TABLE IF NOT EXISTS health_state (id INTEGER PRIMARY KEY CHECK (id = 1), "
        "state TEXT NOT NULL)",
    )

    def __init__(self, config: RecoveryConfig | None = None) -> None:
        self.config = config or RecoveryConfig()
        self.monitor: HealthMonitor | None = None

    def begin(self, db: sqlite3.Connection) -> None:
        # The fold lives in memory for one batch and is written back in the same transaction.
        row = db.execute("SELECT state FROM health_state WHERE id = 1").fetchone()
        self.monitor = HealthMonitor(self.config)
        if row is not None:
            self.monitor.load_state(json.loads(row[0], object_hook=_revive))

    def apply(self, db: sqlite3.Connection, position: int, event: Any) -> None:
        if self.monitor is None:
            self.begin(db)
        assert self.monitor is not None
        self.monitor.apply(event)

    def discard(self) -> None:
        self.monitor = None

    def flush(self, db: sqlite3.Connection) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        db.execute(
            "INSERT OR REPLACE INTO health_state(id, state) VALUES (1, ?)",
            (json.dumps(monitor.to_state(), default=_iso, sort_keys=True),),
        )
        report = monitor.report()
        rows: list[tuple[str, str, str | None, int | None, str | None]] = [
            (p.phase, p.status.value, _ts(p.last_success), p.consecutive_failures, p.last_error)
            for p in report.phases.values()
        ]
        alerts = ", ".join(a.name for a in report.active_alerts) or None
        rows.append(("overall", report.overall.value, None, None, alerts))
        db.executemany("INSERT OR REPLACE INTO health VALUES (?,?,?,?,?)", rows)


# Every event of a cycle names the cycle aggregate; this maps its id to (group, cycle_no).
CYCLE_IDS_DDL = (
    "CREATE TABLE IF NOT EXISTS cycle_ids (id TEXT PRIMARY KEY, grp TEXT, cycle_no INTEGER)",
    "CREATE TABLE IF NOT EXISTS lock_ids (id TEXT PRIMARY KEY, grp TEXT)",
)


def register_ids(db: sqlite3.Connection, event: Any) -> None:
    kind = type(event).__qualname__
    if kind == "PruneCycle.Created":
        db.execute(
            "INSERT OR REPLACE INTO cycle_ids VALUES (?,?,?)",
            (str(event.originator_id), event.group, event.cycle_no),
        )
    elif kind == "PhaseLock.Created":
        db.execute(
            "INSERT OR REPLACE INTO lock_ids VALUES (?,?)", (str(event.originator_id), event.group)
        )


# A cycle's id is derived from (group, cycle_no), so this mapping is a fact of the log, true
# in every database and after any rollback: safe to remember across transactions.
_CYCLE_IDS: dict[UUID, tuple[str, int]] = {}


def _cycle_of(db: sqlite3.Connection, e: Any) -> tuple[str, int]:
    known = _CYCLE_IDS.get(e.originator_id)
    if known is not None:
        return known
    row = db.execute("SELECT grp, cycle_no FROM cycle_ids WHERE id = ?", (str(e.originator_id),))
    found = row.fetchone()
    if found is None:
        raise LookupError(f"event for unknown cycle {e.originator_id}")
    if len(_CYCLE_IDS) > 100_000:
        _CYCLE_IDS.clear()
    _CYCLE_IDS[e.originator_id] = (str(found[0]), int(found[1]))
    return _CYCLE_IDS[e.originator_id]


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"__dt__": value.isoformat()}
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _revive(d: dict[str, Any]) -> Any:
    if set(d) == {"__dt__"}:
        return datetime.fromisoformat(d["__dt__"])
    return d


ALL: tuple[type[Projection], ...] = (
    LocksProjection,
    HealthProjection,
    SnapshotsProjection,
    AuditProjection,
    TimelineProjection,
)
