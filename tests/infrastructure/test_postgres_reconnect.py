"""The PostgreSQL log goes away: at start (a clear error; `run` retries with backoff) and in the
middle of a phase (the test server is stopped and started again under a running pruner: the
phase fails and is resumed through events, with nothing lost)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infrastructure.eventlog import STATE_FILE
from infrastructure.state_store import SqliteStateStore
from infrastructure.testkit import LogFold, audit_violations, store_violations
from tests.conftest import postgres_url
from tests.infrastructure.pg_nodes import (
    GROUP,
    LogTail,
    Node,
    audited,
    deleted_log,
    group_dir,
    kind,
    make_template,
    node_env,
    prunelog,
)
from tests.infrastructure.test_crash import REPO, crash

PGCTL_ENV = "PRUNELOG_TEST_PGCTL"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://prunelog:s3cret@127.0.0.1:{port}/postgres?schema=nowhere"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return group_dir(make_template(tmp_path / "template"), tmp_path / "data")


# --- unreachable at start --------------------------------------------------------------------


def test_status_with_an_unreachable_log_fails_with_one_clear_line(data_dir: Path) -> None:
    done = prunelog(data_dir, closed_port_url(), "status")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert (
        "cannot reach the PostgreSQL event log at postgresql://prunelog:***@127.0.0.1:" in lines[0]
    )
    assert "s3cret" not in done.stderr
    assert done.stdout == ""


def test_run_retries_an_unreachable_log_with_backoff_until_sigterm(data_dir: Path) -> None:
    node = Node(data_dir, closed_port_url(), "unreachable")
    try:
        deadline = time.monotonic() + 30
        while len(re.findall(r"retrying in", node.stderr())) < 3:
            assert node.proc.poll() is None, node.stderr()
            assert time.monotonic() < deadline, node.stderr()
            time.sleep(0.1)
    finally:
        code = node.stop()
    retries = [ln for ln in node.stderr().splitlines() if "retrying in" in ln]
    assert all("event log unavailable" in ln and "s3cret" not in ln for ln in retries)
    delays = [float(d) for d in re.findall(r"retrying in ([\d.]+)s", node.stderr())]
    assert delays[:3] == [0.5, 1.0, 2.0]  # exponential backoff
    assert code == 0 and "stopped while waiting for the event log" in node.stderr()
    assert not list(data_dir.glob("events.sqlite"))  # it never fell back to a local log


def test_three_nodes_starting_at_once_on_a_fresh_log_and_data_dir_all_start(
    tmp_path: Path,
) -> None:
    """Source bugs, found here: on a fresh schema, concurrent CREATE TABLE / CREATE OR REPLACE
    FUNCTION by eventsourcing raised "tuple concurrently updated" (now serialised by an advisory
    lock in postgres.prepare); on a fresh data dir, the read models' setup raised "database is
    locked" (now one BEGIN IMMEDIATE transaction in ProjectionRunner._setup)."""
    template = make_template(tmp_path / "template")
    for attempt in range(2):
        url = postgres_url()
        data_dir = group_dir(template, tmp_path / f"data{attempt}")
        starts = [
            subprocess.Popen(
                [*crash.prunelog_command(), "--data-dir", str(data_dir), "status", "--json"],
                env=node_env(url),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=str(REPO),
            )
            for _ in range(3)
        ]
        for proc in starts:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert json.loads(out)["group"] == GROUP


# --- the server stops in the middle of a phase -----------------------------------------------


@pytest.fixture
def pgctl() -> Iterator[str]:
    """Stops/starts the test server; whatever a test does, the server is up afterwards."""
    script = os.environ.get(PGCTL_ENV)
    if not script:
        postgres_url()  # skips (or fails under PRUNELOG_REQUIRE_POSTGRES) without a server
        if os.environ.get("PRUNELOG_REQUIRE_POSTGRES"):
            pytest.fail(f"{PGCTL_ENV} is not set but PRUNELOG_REQUIRE_POSTGRES is")
        pytest.skip(f"{PGCTL_ENV} is not set: run under .ci/with-postgres")
    yield script
    subprocess.run([script, "start"], capture_output=True, check=False, timeout=120)


def restart_server(pgctl: str, down_s: float) -> None:
    subprocess.run([pgctl, "stop"], capture_output=True, check=True, timeout=120)
    time.sleep(down_s)
    subprocess.run([pgctl, "start"], capture_output=True, check=True, timeout=120)


@pytest.mark.parametrize(
    "down_s", [3.0, pytest.param(40.0, marks=pytest.mark.soak, id="long-outage")]
)
def test_a_run_outlives_a_server_restart_mid_phase_and_resumes_the_phase(
    data_dir: Path, pgctl: str, down_s: float
) -> None:
    url = postgres_url()
    node = Node(data_dir, url, "reconnect", "--cycles", "3")
    tail = LogTail(url)
    try:
        swept = tail.wait_for(lambda: tail.last("PruneCycle.NodesSwept"), "first NodesSwept")
        tail.close()
        restart_server(pgctl, down_s)
        code = node.proc.wait(timeout=180)
    finally:
        node.stop()
        tail.close()
    err = node.stderr()
    assert code == 0, err
    assert "cycle interrupted: " in err or "event log unavailable: " in err
    if down_s > 10:  # longer than a command's wait for the server: `run` retried, with backoff
        assert err.count("event log unavailable: ") >= 3 and "retrying in" in err
    assert [r["cycle"] for r in node.records() if "cycle" in r] == [1, 2, 3]

    tail = LogTail(url)
    tail.poll()
    tail.close()
    events: list[Any] = [e for _, e in tail.events]
    cycle = [e for e in events if e.originator_id == swept.originator_id]
    kinds = [kind(e) for e in cycle]
    # The phase failed (lost connection, or found interrupted by the next cycle), then resumed.
    failed = next(e for e in cycle if kind(e) == "PruneCycle.PhaseFailed")
    assert failed.phase == swept.phase
    assert failed.error_type in ("EventLogUnreachableError", "Interrupted")
    resumed = kinds.index("PruneCycle.PhaseResumed")
    assert resumed > kinds.index("PruneCycle.PhaseFailed")
    assert cycle[resumed].phase == swept.phase
    assert kinds[-1] == "PruneCycle.Completed"
    assert "PruneCycle.RecoveryExhausted" not in kinds

    fold = LogFold().feed(events)
    assert (fold.legality, fold.snapshot_use, fold.lock) == ([], [], [])
    # The audit lists exactly the nodes gone from the store, each deletion once.
    assert Counter(h for h, _ in deleted_log(data_dir)) == audited(tail.events)
    with SqliteStateStore.open(data_dir / STATE_FILE) as store:
        assert store_violations(store, fold.protected_since()) == []
        assert audit_violations(fold, store) == []
