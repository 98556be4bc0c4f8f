"""Two OS processes race for one group's lock on one SQLite data dir. Optimistic concurrency
must let exactly one of them win every round, and the log must stay clean."""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from domain.errors import LockContendedError
from domain.lock import PhaseLock
from domain.manager import AtomicSnapshotManager
from domain.phases import PrunePhase
from domain.snapshot import Snapshot
from infrastructure.clock import ManualClock
from infrastructure.eventlog import EventsourcingLog
from infrastructure.hashing import integrity_hash
from tests.fakes import FakeChain, events_db

ROUNDS = 10
OWNERS = ("node-a", "node-b")
WAIT_S = 60

WON, CONTENDED = "won", "contended"


def _round_phase(round_no: int) -> PrunePhase:
    """Even rounds race create_snapshot(BuildReach), odd rounds lock_snapshot(SweepExpired)."""
    return PrunePhase.BUILD_REACH if round_no % 2 == 0 else PrunePhase.SWEEP_EXPIRED


def contend(data_dir: str, owner: str, barrier: Barrier, results: Any) -> None:
    """One pruner node. Runs in its own process (spawned, so it imports this module afresh)."""
    outcomes: list[str] = []
    how: list[str] = []
    try:
        with EventsourcingLog.open_sqlite(Path(data_dir)) as log:
            manager = AtomicSnapshotManager(
                log, FakeChain(), ManualClock(), integrity_hash, owner=owner
            )
            barrier.wait(WAIT_S)
            manager.initialize()  # both at once, too
            for round_no in range(ROUNDS):
                phase = _round_phase(round_no)
                barrier.wait(WAIT_S)
                try:
                    if phase is PrunePhase.BUILD_REACH:
                        manager.create_snapshot(phase)
                    else:
                        manager.lock_snapshot(phase)
                    outcome = WON
                except LockContendedError as exc:
                    outcome = CONTENDED
                    how.append("append conflict" if "first" in str(exc) else "saw it held")
                except Exception as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                outcomes.append(outcome)
                barrier.wait(WAIT_S)  # nobody releases before both have tried
                if outcome == WON:
                    manager.release_snapshot(phase)
                barrier.wait(WAIT_S)
    except Exception as exc:
        outcomes.append(f"worker crashed: {type(exc).__name__}: {exc}")
        barrier.abort()
    finally:
        results.put((owner, (outcomes, how)))


def test_two_processes_racing_for_one_lock_have_exactly_one_winner_each_round(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    EventsourcingLog.open_sqlite(data_dir).close()  # create the file and schema once, up front

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(OWNERS))
    results = ctx.Queue()
    workers = [
        ctx.Process(target=contend, args=(str(data_dir), owner, barrier, results))
        for owner in OWNERS
    ]
    for w in workers:
        w.start()
    try:
        reports = dict(results.get(timeout=120) for _ in workers)
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    assert all(w.exitcode == 0 for w in workers)
    by_owner = {owner: outcomes for owner, (outcomes, _) in reports.items()}

    for round_no in range(ROUNDS):
        outcomes = sorted(by_owner[owner][round_no] for owner in OWNERS)
        assert outcomes == [CONTENDED, WON], (round_no, reports)

    check_log_is_clean(data_dir, wins=ROUNDS)


def check_log_is_clean(data_dir: Path, wins: int) -> None:
    with events_db(data_dir) as db:
        rows = db.execute(
            "SELECT originator_id, originator_version FROM stored_events "
            "ORDER BY originator_id, originator_version"
        ).fetchall()
        locked = db.execute(
            "SELECT count(*) FROM stored_events WHERE topic = 'prunelog:PhaseLock.Locked'"
        ).fetchone()[0]
        created = db.execute(
            "SELECT count(*) FROM stored_events WHERE topic = 'prunelog:PhaseLock.Created'"
        ).fetchone()[0]
    versions: dict[str, list[int]] = {}
    for originator_id, version in rows:
        versions.setdefault(originator_id, []).append(version)
    for originator_id, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), originator_id
    assert created == 1  # initialize() raced too, and made one lock
    assert locked == wins

    snapshots = ROUNDS // 2 + ROUNDS % 2
    lock_id = PhaseLock.create_id("default")
    assert set(versions) == {lock_id.hex} | {
        Snapshot.create_id("default", n).hex for n in range(1, snapshots + 1)
    }
    with EventsourcingLog.open_sqlite(data_dir) as log:
        lock = log.get(lock_id, PhaseLock)
        assert not lock.is_held
        assert lock.last_snapshot_id == snapshots
        for n in range(1, snapshots + 1):
            snapshot = log.get(Snapshot.create_id("default", n), Snapshot)
            assert snapshot.integrity_ok(integrity_hash)
