"""Shared fixtures. Contract tests take `log`, which runs them once per event-log backend."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from domain.config import SnapshotManagerConfig
from domain.manager import AtomicSnapshotManager
from infrastructure.clock import ManualClock
from infrastructure.eventlog import EventsourcingLog, PrunelogApplication
from infrastructure.hashing import integrity_hash
from tests.fakes import FakeChain

BACKENDS = ("sqlite", "postgresql", "memory")
# Set by .ci/with-postgres (make test, .ci/run): the URL of a throwaway server.
POSTGRES_ENV = "PRUNELOG_TEST_POSTGRES"

MakeManager = Callable[..., AtomicSnapshotManager]


def postgres_url(schema: str | None = None) -> str:
    """The test server's URL, with a schema of its own for one test; skips the test when no
    server is configured (`make test` always starts one; CI fails instead of skipping)."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("PRUNELOG_REQUIRE_POSTGRES"):
            pytest.fail(f"{POSTGRES_ENV} is not set but PRUNELOG_REQUIRE_POSTGRES is")
        pytest.skip(f"no PostgreSQL: run under .ci/with-postgres (make test) to set {POSTGRES_ENV}")
    name = schema or f"t_{uuid.uuid4().hex[:16]}"
    return f"{url}?schema={name}"


def open_log(backend: str, data_dir: Path, url: str | None = None) -> EventsourcingLog:
    if backend == "sqlite":
        return EventsourcingLog.open_sqlite(data_dir)
    if backend == "postgresql":
        return EventsourcingLog.open_postgres(url or postgres_url())
    if backend == "memory":
        return EventsourcingLog(
            PrunelogApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
        )
    raise ValueError(f"unknown backend {backend!r}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def log(backend: str, tmp_path: Path) -> Iterator[EventsourcingLog]:
    opened = open_log(backend, tmp_path / "data")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def chain() -> FakeChain:
    return FakeChain()


@pytest.fixture
def make_manager(log: EventsourcingLog, chain: FakeChain, clock: ManualClock) -> MakeManager:
    """Managers that share one log, chain and clock: one per pruner node (`owner`)."""

    def make(
        owner: str = "node-a",
        config: SnapshotManagerConfig | None = None,
        group: str = "default",
    ) -> AtomicSnapshotManager:
        manager = AtomicSnapshotManager(
            log,
            chain,
            clock,
            integrity_hash,
            config or SnapshotManagerConfig(),
            group=group,
            owner=owner,
            protection_orders=100,
        )
        manager.initialize()
        return manager

    return make


@pytest.fixture
def manager(make_manager: MakeManager) -> AtomicSnapshotManager:
    return make_manager()


# --- long runs -------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="also run the long tests marked @pytest.mark.soak (deselected otherwise)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without --soak, soak tests are deselected (not skipped), so a default run reports
    neither their count as skips nor their time. Under `HYPOTHESIS_PROFILE=soak` no test has
    the default 300 s limit: thousands of programs take hours, and a cut-off run reports a
    timeout (and a flaky replay) instead of what it found."""
    if os.environ.get("HYPOTHESIS_PROFILE") == "soak":
        for item in items:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(0))
    if config.getoption("--soak"):
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]


# --- Hypothesis profiles ---------------------------------------------------------------------
# `ci`, the default: derandomized and without the example database, so every run tries the same
# examples; sized so that the stateful machine (tests/infrastructure/test_stateful.py) stays
# within about two minutes on two cores. `HYPOTHESIS_PROFILE=soak`: thousands of random,
# longer programs (see docs/testing-your-phases.md).
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=25,
    stateful_step_count=30,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "soak",
    database=None,
    deadline=None,
    # PRUNELOG_SOAK_EXAMPLES bounds a run (3,000 programs take hours on two cores).
    max_examples=int(os.environ.get("PRUNELOG_SOAK_EXAMPLES", "3000")),
    stateful_step_count=50,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
