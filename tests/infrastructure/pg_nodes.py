"""Helpers for the tests that run `prunelog` processes on the PostgreSQL test server
(test_multinode.py, test_postgres_*.py): a store and its config, nodes, and the log as a test
reads it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

from infrastructure.config_file import CONFIG_FILE
from infrastructure.eventlog import STATE_FILE, EventsourcingLog
from tests.infrastructure.test_crash import REPO, crash

T = TypeVar("T")
GROUP = "fleet-a"
LOCK_TIMEOUT_MS = 3000
OPTS = crash.Options(
    seed=5, initial_txs=300, protection_orders=40, delete_batch_size=50, interval_s=0.2
)


def kind(event: Any) -> str:
    return type(event).__qualname__


def pid_of(owner: str) -> int:
    """Owner ids are host:pid:starttime (infrastructure/liveness.py)."""
    return int(owner.rsplit(":", 2)[1])


def make_template(path: Path) -> Path:
    """A store of ~7,000 nodes (crash harness: workload writer and its deleted_log trigger)."""
    crash.prepare(path, OPTS)
    return path


def group_dir(template: Path, path: Path, group: str = GROUP) -> Path:
    shutil.copytree(template, path)
    (path / CONFIG_FILE).write_text(
        f'group = "{group}"\n[snapshot]\nlock_timeout_ms = {LOCK_TIMEOUT_MS}\n'
        + crash.config_toml(OPTS)
    )
    return path


def node_env(url: str) -> dict[str, str]:
    env: dict[str, str] = crash.child_env(None)
    return env | {"PRUNELOG_EVENT_STORE": url}


def prunelog(data_dir: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*crash.prunelog_command(), "--data-dir", str(data_dir), *args],
        env=node_env(url),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
    )


# Owner ids and the liveness check use socket.gethostname(): a node started through this
# launcher is on another host for the others, so they cannot see it exit and wait for its
# lock to time out, as they would for a node on another machine.
HOST_ENV = "PRUNELOG_TEST_HOSTNAME"
ON_ANOTHER_HOST = f"""\
import os, socket
socket.gethostname = lambda: os.environ[{HOST_ENV!r}]
from infrastructure.cli import main
main()
"""


class Node:
    """`prunelog --data-dir D run --json ARGS` in its own process, its output in files."""

    def __init__(
        self, data_dir: Path, url: str, name: str, *args: str, host: str | None = None
    ) -> None:
        self.out = data_dir.parent / f"{name}.out"
        self.err = data_dir.parent / f"{name}.err"
        env = node_env(url)
        command = [*crash.prunelog_command()]
        if host is not None:  # a node on another machine, as far as the others can tell
            env[HOST_ENV] = host
            command = [sys.executable, "-c", ON_ANOTHER_HOST]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [*command, "--data-dir", str(data_dir), "run", "--json", *args],
                env=env,
                stdout=out,
                stderr=err,
                cwd=str(REPO),
            )

    def records(self) -> list[dict[str, Any]]:
        lines = self.out.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class LogTail:
    """The group's log as the test sees it, read incrementally from its own connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.log: EventsourcingLog | None = None
        self.events: list[tuple[int, Any]] = []

    def poll(self) -> list[tuple[int, Any]]:
        if self.log is None:
            self.log = EventsourcingLog.open_postgres(self.url)
        start = self.events[-1][0] + 1 if self.events else 1
        new = self.log.read(start, 10_000)
        self.events.extend(new)
        return new

    def wait_for(self, found: Callable[[], T | None], what: str, timeout: float = 60) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            result = found()
            if result is not None:
                return result
            time.sleep(0.02)
        raise AssertionError(f"no {what} within {timeout} s")

    def last(self, prefix: str, where: Callable[[Any], bool] = lambda e: True) -> Any:
        return next(
            (e for _, e in reversed(self.events) if kind(e).startswith(prefix) and where(e)), None
        )

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def deleted_log(data_dir: Path) -> list[tuple[bytes, int]]:
    """(hash, written_order) of every row the store deleted (the crash harness's trigger)."""
    with closing(sqlite3.connect(data_dir / STATE_FILE)) as db:
        rows = db.execute("SELECT hash, written_order FROM deleted_log ORDER BY rowid")
        return [(bytes(h), int(o)) for h, o in rows]


def audited(events: list[tuple[int, Any]]) -> Counter[bytes]:
    kinds = ("PruneCycle.NodesSwept", "PruneCycle.BatchRecovered")
    return Counter(bytes(h) for _, e in events if kind(e) in kinds for h in e.hashes)


def completed(tail: LogTail, cycle_id: Any) -> Any:
    return tail.last("PruneCycle.Completed", lambda e: e.originator_id == cycle_id)
