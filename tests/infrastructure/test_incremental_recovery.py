"""IncrementalSweep on the real stores when the event log fails right after a delete commits:
the batch's stale rows stay, its journal row names them, and the next run logs exactly what
was deleted, consumes them, and loses no node."""

from __future__ import annotations

import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from domain.errors import EventLogUnreachableError
from domain.ports import JournalEntry, hashes_of
from infrastructure.audit_checks import check_store
from infrastructure.config_file import CONFIG_FILE, load_settings
from infrastructure.eventlog import STATE_FILE, EventsourcingLog
from infrastructure.runtime import Runtime
from infrastructure.state_store import SqliteStateStore
from tests.fakes import write_chain

CONFIG = "[prune]\nprotection_orders = 30\ndelete_batch_size = 40\nbatches_per_commit = 2\n"


def stored(path: Path) -> set[bytes]:
    with closing(sqlite3.connect(path)) as db:
        return {bytes(h) for (h,) in db.execute("SELECT hash FROM nodes")}


def audited(data_dir: Path) -> Counter[bytes]:
    kinds = ("PruneCycle.NodesSwept", "PruneCycle.BatchRecovered")
    with EventsourcingLog.open_sqlite(data_dir) as log:
        return Counter(h for e in log.events() if type(e).__qualname__ in kinds for h in e.hashes)


def kept_stale_rows(rt: Runtime) -> int:
    """Stale rows inside the range the one waiting journal row names."""
    row = rt.nodes.conn.execute(
        "SELECT COUNT(*) FROM stale, sweep_journal WHERE (stale_order, hash) >= "
        "(stale_from_order, stale_from_hash) AND (stale_order, hash) <= "
        "(stale_to_order, stale_to_hash)"
    ).fetchone()
    return int(row[0])


@pytest.mark.parametrize(
    "error",
    [
        # Stops the run: the next run_cycle reconciles before anything else.
        EventLogUnreachableError("the log went away"),
        # Retried inside the phase: its next stale read skips the waiting batch's rows.
        RuntimeError("a transient failure"),
    ],
    ids=["log-unreachable", "retried-in-phase"],
)
def test_an_event_log_failure_after_an_incremental_delete_is_logged_exactly_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    data = tmp_path / "data"
    state = data / STATE_FILE
    write_chain(state, 200, seed=11)
    (data / CONFIG_FILE).write_text(CONFIG)
    with closing(sqlite3.connect(state)) as db:  # every expired node is IncrementalSweep's
        db.execute("UPDATE roots SET swept = 1")
        db.commit()
    before = stored(state)
    failed: list[str] = []
    pending: list[JournalEntry] = []

    with Runtime(load_settings(data)) as rt:
        save = rt.pruner.log.save

        def failing_save(*aggregates: Any) -> None:
            swept = [
                e
                for agg in aggregates
                for e in agg.pending_events
                if type(e).__name__ == "NodesSwept" and e.phase == "IncrementalSweep"
            ]
            if swept and not failed:
                failed.append("once")
                pending.extend(rt.nodes.unlogged_journal())  # committed, not logged
                raise error
            save(*aggregates)

        monkeypatch.setattr(rt.pruner.log, "save", failing_save)
        try:
            report = rt.pruner.run_cycle()
        except EventLogUnreachableError:
            assert isinstance(error, EventLogUnreachableError)
            (waiting,) = rt.nodes.unlogged_journal()
            assert waiting == pending[-1]
            assert kept_stale_rows(rt) > 0  # the batch's stale rows wait for its events
        else:
            assert isinstance(error, RuntimeError)
    assert failed and len(pending) == 1 and pending[0].phase == "IncrementalSweep"
    assert len(pending[0].deleted) > 0

    with Runtime(load_settings(data)) as rt:
        if isinstance(error, EventLogUnreachableError):
            report = rt.pruner.run_cycle()
        assert rt.nodes.unlogged_journal() == []
        retained_from = report.latest_order - 30

    gone = before - stored(state)
    audit = audited(data)
    assert set(audit) == gone and all(n == 1 for n in audit.values())
    assert set(hashes_of(pending[0].deleted)) <= gone
    with SqliteStateStore.open(state) as store:
        check = check_store(store, retained_from)
        left = store.connection.execute(
            "SELECT COUNT(*) FROM stale WHERE stale_order <= ?", (retained_from - 1,)
        ).fetchone()[0]
    assert check.violations == 0
    assert left == 0  # every entry below the window was consumed, the waiting batch's too
