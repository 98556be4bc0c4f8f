"""The SQLite event log: restarts, WAL, corrupt and foreign rows, bad data dirs."""

from __future__ import annotations

import sqlite3
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.domain import Aggregate

from domain.cycle import PruneCycle
from domain.errors import (
    AggregateNotFoundError,
    ConcurrencyConflictError,
    CorruptEventError,
    DataDirError,
    EventLogError,
    IllegalPhaseOrderError,
    UnknownTopicError,
)
from domain.lock import PhaseLock
from domain.manager import AtomicSnapshotManager
from domain.phases import PrunePhase
from domain.snapshot import Snapshot
from infrastructure.clock import ManualClock
from infrastructure.eventlog import EVENTS_FILE, EventsourcingLog
from infrastructure.hashing import integrity_hash
from infrastructure.sqlite_factory import EVENTS_WAL_PAGES
from infrastructure.topics import TOPICS
from infrastructure.transcoder import MsgpackTranscoder
from tests.fakes import FakeChain, events_db

AT = datetime(2026, 1, 1, tzinfo=UTC)
BR, SE = PrunePhase.BUILD_REACH, PrunePhase.SWEEP_EXPIRED
TRANSCODER = MsgpackTranscoder(enums=[PrunePhase])


def state_of(aggregate: Aggregate) -> dict[str, Any]:
    return {k: v for k, v in vars(aggregate).items() if k != "_pending_events"}


def populate(log: EventsourcingLog) -> list[tuple[UUID, type[Aggregate]]]:
    """A lock, a snapshot and a cycle with a bit of every kind of value in its events."""
    manager = AtomicSnapshotManager(log, FakeChain(), ManualClock(), integrity_hash, owner="a")
    manager.initialize()
    snap = manager.create_snapshot(BR)
    cycle = PruneCycle(group="default", cycle_no=1, snapshot_id=snap.snapshot_id, at=AT)
    cycle.start_phase(BR, snap.snapshot_id, AT)
    cycle.complete_phase(BR, {"nodes": 3, "digest": "ff" * 32}, AT)
    cycle.start_phase(SE, snap.snapshot_id, AT)
    cycle.progress(SE, {"cursor": (7, b"\x01" * 32), "roots": {1, 2}}, AT)
    cycle.record_batch(SE, snap.snapshot_id, 1, [(b"\x02" * 32, 120), (b"\x03" * 32, 80)], AT)
    log.save(cycle)
    manager.lock_snapshot(SE)
    return [
        (PhaseLock.create_id("default"), PhaseLock),
        (Snapshot.create_id("default", snap.snapshot_id), Snapshot),
        (cycle.id, PruneCycle),
    ]


# Note: the SQLite recorder stores originator_id as the UUID's 32 hex digits (`uuid.hex`).


def row_count(data_dir: Path) -> int:
    with events_db(data_dir) as db:
        return int(db.execute("SELECT count(*) FROM stored_events").fetchone()[0])


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# --- restart --------------------------------------------------------------------------------


def test_after_a_restart_every_aggregate_loads_with_identical_state(data_dir: Path) -> None:
    with EventsourcingLog.open_sqlite(data_dir) as log:
        ids = populate(log)
        before = [state_of(log.get(i, cls)) for i, cls in ids]

    with EventsourcingLog.open_sqlite(data_dir) as reopened:
        after = [state_of(reopened.get(i, cls)) for i, cls in ids]

    assert after == before
    cycle = after[2]
    assert cycle["checkpoints"]["SweepExpired"] == {"cursor": (7, b"\x01" * 32), "roots": {1, 2}}
    assert cycle["deleted"] == {"SweepExpired": 2}


def test_stored_topics_are_stable_names_not_module_paths(data_dir: Path) -> None:
    with EventsourcingLog.open_sqlite(data_dir) as log:
        populate(log)
    with events_db(data_dir) as db:
        topics = {row[0] for row in db.execute("SELECT topic FROM stored_events")}
    assert topics <= set(TOPICS)
    assert all(t.startswith("prunelog:") for t in topics)
    assert "prunelog:PruneCycle.NodesSwept" in topics


def test_the_event_log_file_is_in_wal_mode(data_dir: Path) -> None:
    with EventsourcingLog.open_sqlite(data_dir) as log:
        log.save(PhaseLock(group="g"))
        with events_db(data_dir) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_event_log_checkpoints_its_wal_every_64_mib_not_every_4(data_dir: Path) -> None:
    # A sweep logs ~37 MB of events per million nodes; at SQLite's default each 4 MiB cost a
    # checkpoint with two fsyncs. Durability is unchanged: the WAL holds the commits.
    with EventsourcingLog.open_sqlite(data_dir) as log:
        log.save(PhaseLock(group="g"))
        with log.app.recorder.datastore.transaction(commit=False) as c:  # the log's connection
            c.execute("PRAGMA wal_autocheckpoint")
            assert c.fetchone()[0] == EVENTS_WAL_PAGES == 16384
            c.execute("PRAGMA synchronous")
            assert c.fetchone()[0] == 1  # NORMAL


def test_two_logs_on_one_dir_cannot_both_append_the_same_version(data_dir: Path) -> None:
    with EventsourcingLog.open_sqlite(data_dir) as first:
        first.save(PhaseLock(group="g"))
        with EventsourcingLog.open_sqlite(data_dir) as second:
            mine = first.get(PhaseLock.create_id("g"), PhaseLock)
            theirs = second.get(PhaseLock.create_id("g"), PhaseLock)
            mine.lock(BR, "a", 1, AT, 1000)
            theirs.lock(BR, "b", 1, AT, 1000)
            first.save(mine)
            with pytest.raises(ConcurrencyConflictError):
                second.save(theirs)
            assert second.get(PhaseLock.create_id("g"), PhaseLock).owner == "a"


def test_getting_a_missing_aggregate_or_the_wrong_class_raises_a_domain_error(
    data_dir: Path,
) -> None:
    with EventsourcingLog.open_sqlite(data_dir) as log:
        with pytest.raises(AggregateNotFoundError):
            log.get(uuid.uuid4(), PhaseLock)
        log.save(PhaseLock(group="g"))
        with pytest.raises(EventLogError, match="is a PhaseLock"):
            log.get(PhaseLock.create_id("g"), Snapshot)


# --- corrupt and foreign rows ---------------------------------------------------------------


def test_a_corrupt_event_row_raises_corrupt_event_error_and_loses_nothing(data_dir: Path) -> None:
    with EventsourcingLog.open_sqlite(data_dir) as log:
        (lock_id, _), (snap_id, _), (cycle_id, _) = populate(log)
    rows = row_count(data_dir)
    with events_db(data_dir) as db:
        db.execute(
            "UPDATE stored_events SET state = ? WHERE originator_id = ? AND originator_version = 2",
            (b"\xc1 not msgpack", cycle_id.hex),
        )

    with EventsourcingLog.open_sqlite(data_dir) as log:
        with pytest.raises(CorruptEventError) as excinfo:
            log.get(cycle_id, PruneCycle)
        message = str(excinfo.value)
        assert str(cycle_id) in message
        assert "originator_version 2" in message
        assert "cannot decode msgpack" in message
        assert log.get(lock_id, PhaseLock).owner == "a"
        assert log.get(snap_id, Snapshot).status == "validated"

    assert row_count(data_dir) == rows
    with events_db(data_dir) as db:
        (state,) = db.execute(
            "SELECT state FROM stored_events WHERE originator_id = ? AND originator_version = 2",
            (cycle_id.hex,),
        ).fetchone()
    assert state == b"\xc1 not msgpack"


@pytest.mark.parametrize(
    "state",
    [[1, 2], 42, {"timestamp": AT}, {}],
    ids=["a list", "an int", "missing fields", "empty"],
)
def test_valid_msgpack_that_is_not_an_event_record_raises_corrupt_event_error(
    data_dir: Path, state: object
) -> None:
    with EventsourcingLog.open_sqlite(data_dir) as log:
        log.save(PhaseLock(group="g"))
    with events_db(data_dir) as db:
        db.execute("UPDATE stored_events SET state = ?", (TRANSCODER.encode(state),))

    with (
        EventsourcingLog.open_sqlite(data_dir) as log,
        pytest.raises(CorruptEventError, match=r"prunelog:PhaseLock\.Created"),
    ):
        log.get(PhaseLock.create_id("g"), PhaseLock)


EVIL_MODULE = "prunelog_evil_probe"


@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module that leaves a flag file behind if anything ever imports it."""
    home = tmp_path / "evil"
    home.mkdir()
    flag = home / "imported.flag"
    (home / f"{EVIL_MODULE}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(flag)!r}).write_text('imported')\n"
        "class Boom:\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(home))
    monkeypatch.delitem(sys.modules, EVIL_MODULE, raising=False)
    return flag


def assert_never_imported(flag: Path) -> None:
    assert EVIL_MODULE not in sys.modules
    assert not flag.exists()


@pytest.mark.parametrize("topic", ["os:system", "subprocess:Popen", f"{EVIL_MODULE}:Boom"])
def test_a_row_with_a_foreign_topic_raises_unknown_topic_and_imports_nothing(
    data_dir: Path, evil_module: Path, topic: str
) -> None:
    with EventsourcingLog.open_sqlite(data_dir) as log:
        log.save(PhaseLock(group="g"))
        log.save(PhaseLock(group="h"))
    with events_db(data_dir) as db:
        db.execute(
            "UPDATE stored_events SET topic = ? WHERE originator_id = ?",
            (topic, PhaseLock.create_id("g").hex),
        )

    with EventsourcingLog.open_sqlite(data_dir) as log:
        with pytest.raises(UnknownTopicError, match="not a prunelog event") as excinfo:
            log.get(PhaseLock.create_id("g"), PhaseLock)
        assert repr(topic) in str(excinfo.value)
        assert log.get(PhaseLock.create_id("h"), PhaseLock).group == "h"
    assert_never_imported(evil_module)


def test_a_created_event_naming_a_foreign_aggregate_class_imports_nothing(
    data_dir: Path, evil_module: Path
) -> None:
    with EventsourcingLog.open_sqlite(data_dir) as log:
        log.save(PhaseLock(group="g"))
    with events_db(data_dir) as db:
        (state,) = db.execute("SELECT state FROM stored_events").fetchone()
        fields = TRANSCODER.decode(state)
        fields["originator_topic"] = f"{EVIL_MODULE}:Boom"
        db.execute("UPDATE stored_events SET state = ?", (TRANSCODER.encode(fields),))

    with (
        EventsourcingLog.open_sqlite(data_dir) as log,
        pytest.raises(UnknownTopicError, match="not a prunelog aggregate"),
    ):
        log.get(PhaseLock.create_id("g"), PhaseLock)
    assert_never_imported(evil_module)


def test_the_evil_module_probe_does_notice_an_import(evil_module: Path) -> None:
    try:
        __import__(EVIL_MODULE)
        assert evil_module.read_text() == "imported"
    finally:
        sys.modules.pop(EVIL_MODULE, None)


def test_a_log_whose_rows_were_reordered_on_disk_fails_on_replay(data_dir: Path) -> None:
    """Drop the PhaseCompleted row and close the gap: SweepExpired now starts mid-BuildReach."""
    cycle = PruneCycle(group="g", cycle_no=1, snapshot_id=1, at=AT)
    cycle.start_phase(BR, 1, AT)
    cycle.complete_phase(BR, {}, AT)
    cycle.start_phase(SE, 1, AT)
    with EventsourcingLog.open_sqlite(data_dir) as log:
        log.save(cycle)
        assert log.get(cycle.id, PruneCycle).state == "SweepExpired"
    with events_db(data_dir) as db:
        db.execute("DELETE FROM stored_events WHERE topic = 'prunelog:PruneCycle.PhaseCompleted'")
        db.execute("UPDATE stored_events SET originator_version = 3 WHERE originator_version = 4")

    with (
        EventsourcingLog.open_sqlite(data_dir) as log,
        pytest.raises(IllegalPhaseOrderError, match="start_sweep_expired"),
    ):
        log.get(cycle.id, PruneCycle)


# --- bad data directories and files ---------------------------------------------------------


def test_a_data_dir_that_is_a_regular_file_raises_data_dir_error_and_creates_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data"
    path.write_text("not a dir")
    with pytest.raises(DataDirError, match="exists but is not a directory") as excinfo:
        EventsourcingLog.open_sqlite(path)
    assert str(path) in str(excinfo.value)
    assert path.read_text() == "not a dir"
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_a_data_dir_under_a_regular_file_raises_data_dir_error_and_creates_nothing(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    path = blocker / "sub" / "data"
    with pytest.raises(DataDirError, match=r"(?i)not a directory") as excinfo:
        EventsourcingLog.open_sqlite(path)
    assert str(path) in str(excinfo.value)
    assert isinstance(excinfo.value, OSError)
    assert blocker.read_text() == "a file"
    assert [p.name for p in tmp_path.iterdir()] == ["blocker"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2 + 100],
        lambda data: data[:50],
        lambda data: b"this is not a database" * 200,
    ],
    ids=["truncated mid-file", "truncated header", "garbage"],
)
def test_a_damaged_events_file_raises_event_log_error_not_a_raw_sqlite_error(
    data_dir: Path, damage: Any
) -> None:
    with EventsourcingLog.open_sqlite(data_dir) as log:
        for i in range(200):
            log.save(PhaseLock(group=f"g{i}"))
    db = data_dir / EVENTS_FILE
    db.write_bytes(damage(db.read_bytes()))

    with pytest.raises(EventLogError, match=str(db)) as excinfo:
        EventsourcingLog.open_sqlite(data_dir)
    assert not isinstance(excinfo.value, sqlite3.Error)
    assert excinfo.value.__cause__ is None


def test_an_empty_data_dir_is_created_with_its_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "data"
    with EventsourcingLog.open_sqlite(path) as log:
        log.save(PhaseLock(group="g"))
    assert (path / EVENTS_FILE).is_file()
    assert not list(path.glob(".write-probe-*"))
