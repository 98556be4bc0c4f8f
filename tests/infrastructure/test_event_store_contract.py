"""What every durable event-log backend must do, written once and run on SQLite and on a real
PostgreSQL server: two processes' view of one log, waking on appends, conflicts, projections
and a whole prune cycle."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from domain.config import PruneConfig
from domain.errors import (
    ConcurrencyConflictError,
    ConfigError,
    EventLogUnreachableError,
    LockContendedError,
)
from domain.lock import PhaseLock
from domain.manager import AtomicSnapshotManager
from domain.phases import PrunePhase
from infrastructure.clock import ManualClock
from infrastructure.eventlog import EventsourcingLog
from infrastructure.hashing import integrity_hash
from infrastructure.runtime import Runtime, Settings
from infrastructure.state_store import SqliteStateStore
from infrastructure.testkit import LogFold, audit_violations, store_violations
from infrastructure.workload import WorkloadWriter
from projections.runner import ProjectionRunner
from tests.conftest import open_log, postgres_url
from tests.fakes import FakeChain

DURABLE = ("sqlite", "postgresql")
OpenLog = Callable[[], EventsourcingLog]


@pytest.fixture(params=DURABLE)
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, OpenLog]]:
    """A backend and a way to open another connection to the same log (another node)."""
    backend = str(request.param)
    url = postgres_url() if backend == "postgresql" else None
    opened: list[EventsourcingLog] = []

    def again() -> EventsourcingLog:
        log = open_log(backend, tmp_path / "data", url)
        opened.append(log)
        return log

    yield backend, again
    for log in opened:
        log.close()


def manager_for(log: EventsourcingLog, owner: str, clock: ManualClock) -> AtomicSnapshotManager:
    m = AtomicSnapshotManager(log, FakeChain(), clock, integrity_hash, owner=owner)
    m.initialize()
    return m


def test_an_append_by_one_node_is_read_by_another(durable: tuple[str, OpenLog]) -> None:
    _, again = durable
    a, b = again(), again()
    manager_for(a, "a", ManualClock())
    assert b.head() == a.head() > 0
    assert [type(e).__qualname__ for _, e in b.read(1, 10)] == ["PhaseLock.Created"]


def test_two_nodes_saving_the_same_aggregate_version_conflict(
    durable: tuple[str, OpenLog],
) -> None:
    _, again = durable
    a, b = again(), again()
    clock = ManualClock()
    manager_for(a, "a", clock)
    lock_a = a.get(PhaseLock.create_id("default"), PhaseLock)
    lock_b = b.get(PhaseLock.create_id("default"), PhaseLock)
    lock_a.lock(PrunePhase.BUILD_REACH, "a", 1, clock.now(), 1000)
    lock_b.lock(PrunePhase.BUILD_REACH, "b", 1, clock.now(), 1000)
    a.save(lock_a)
    with pytest.raises(ConcurrencyConflictError):
        b.save(lock_b)
    assert b.get(PhaseLock.create_id("default"), PhaseLock).owner == "a"


def test_only_one_of_two_racing_nodes_gets_the_lock(durable: tuple[str, OpenLog]) -> None:
    _, again = durable
    clock = ManualClock()
    managers = []
    for owner in ("a", "b"):
        m = AtomicSnapshotManager(again(), FakeChain(), clock, integrity_hash, owner=owner)
        m.initialize()
        managers.append(m)
    outcomes: list[str] = []

    def take(m: AtomicSnapshotManager) -> None:
        try:
            m.create_snapshot(PrunePhase.BUILD_REACH)
            outcomes.append("won")
        except LockContendedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=take, args=(m,)) for m in managers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused", "won"]


def test_waiting_on_the_log_wakes_when_another_node_appends(
    durable: tuple[str, OpenLog],
) -> None:
    _, again = durable
    reader, writer = again(), again()
    head = reader.head()
    assert reader.wait(head, 0.2) is False
    timer = threading.Timer(0.3, lambda: manager_for(writer, "w", ManualClock()))
    started = time.monotonic()
    timer.start()
    try:
        assert reader.wait(head, 10.0) is True
    finally:
        timer.join()
    assert time.monotonic() - started < 5.0
    assert reader.head() > head


def test_a_following_projection_runner_applies_another_nodes_events(
    durable: tuple[str, OpenLog], tmp_path: Path
) -> None:
    _, again = durable
    reader, writer = again(), again()
    runner = ProjectionRunner(tmp_path / "projections.sqlite", reader)
    try:
        threading.Timer(0.2, lambda: manager_for(writer, "w", ManualClock())).start()
        deadline = time.monotonic() + 10
        runner.follow(
            lambda: time.monotonic() > deadline or runner.position("locks") >= writer.head() > 0,
            wait_s=0.2,
        )
        assert runner.position("locks") == writer.head()
        assert runner.rows("SELECT grp FROM locks")[0]["grp"] == "default"
    finally:
        runner.close()


def test_a_whole_prune_cycle_on_each_backend_deletes_only_garbage_and_audits_it(
    durable: tuple[str, OpenLog], tmp_path: Path
) -> None:
    backend, _ = durable
    data = tmp_path / "node"
    data.mkdir()
    with SqliteStateStore.open(data / "state.sqlite") as store:
        WorkloadWriter(store, 3, keys=200, ops_per_tx=8).run(120)
    url = postgres_url() if backend == "postgresql" else "sqlite"
    settings = Settings(
        data_dir=data,
        event_store=url,
        prune=PruneConfig(protection_orders=20, delete_batch_size=50),
    )
    with Runtime(settings, owner="n1") as rt:
        report = rt.pruner.run_cycle()
        assert rt.log.backend == backend
        assert sum(s.deleted for s in report.phases.values()) > 0
        fold = LogFold().feed(rt.log.events())
        assert fold.legality == fold.snapshot_use == fold.lock == []
        with SqliteStateStore.open(data / "state.sqlite") as store:
            assert store_violations(store, fold.protected_since()) == []
            assert audit_violations(fold, store) == []


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u@h/db",
        "postgresql://h/db",
        "postgresql://u@/db",
        "postgresql://u@h:notaport/db",
        "postgresql://u@h/db?schema=bad-name",
        "postgresql://u@h/db?colour=red",
    ],
)
def test_a_bad_event_store_url_is_a_clear_config_error(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        EventsourcingLog.open(tmp_path, url)


def test_an_unreachable_server_is_reported_quickly_and_names_the_url_without_its_password(
    tmp_path: Path,
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(EventLogUnreachableError) as caught:
        EventsourcingLog.open(tmp_path, f"postgresql://u:secret@127.0.0.1:{port}/db")
    assert time.monotonic() - started < 10
    assert "secret" not in str(caught.value)
    assert f"127.0.0.1:{port}" in str(caught.value)
