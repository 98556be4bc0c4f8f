"""`prunelog run` stops cleanly on SIGINT and SIGTERM: the batch in flight is finished and
logged, the phase is recorded as stopped, the lock is released through an event, the exit code
is 0, and the next `run --once` completes the same cycle."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from infrastructure.config_file import CONFIG_FILE
from infrastructure.eventlog import EVENTS_FILE, STATE_FILE, EventsourcingLog
from infrastructure.state_store import SqliteStateStore
from infrastructure.workload import WorkloadWriter

REPO = Path(__file__).resolve().parents[2]
# The demo's store and protection window; small delete batches, so a sweep has many.
CONFIG = "[prune]\nprotection_orders = 150\ndelete_batch_size = 20\ninterval_s = 0.05\n"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("signals") / "data"
    data.mkdir()
    with SqliteStateStore.open(data / STATE_FILE) as store:
        WorkloadWriter(store, 7).run(1500, batch=50)
    (data / CONFIG_FILE).write_text(CONFIG)
    return data


@pytest.fixture
def data_dir(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "data"))


def command(data_dir: Path, *args: str) -> list[str]:
    script = Path(sys.executable).parent / "prunelog"
    main = [str(script)] if script.exists() else [sys.executable, "-c", _MAIN]
    return [*main, "--data-dir", str(data_dir), *args]


_MAIN = "from infrastructure.cli import main; main()"


def batches_logged(data_dir: Path) -> int:
    try:
        with closing(sqlite3.connect(data_dir / EVENTS_FILE)) as db:
            row = db.execute(
                "SELECT count(*) FROM stored_events WHERE topic = 'prunelog:PruneCycle.NodesSwept'"
            ).fetchone()
    except sqlite3.Error:  # not created yet
        return 0
    return int(row[0])


def wait_for_first_batch(data_dir: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while batches_logged(data_dir) == 0:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no NodesSwept within 60 s"
        time.sleep(0.005)


def events(data_dir: Path) -> list[Any]:
    with EventsourcingLog.open_sqlite(data_dir) as log:
        return list(log.events())


def kinds(evs: list[Any]) -> list[str]:
    return [type(e).__qualname__ for e in evs]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_mid_sweep_stops_the_cycle_cleanly_and_the_next_run_completes_it(
    data_dir: Path, signum: signal.Signals
) -> None:
    proc = subprocess.Popen(
        command(data_dir, "run", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        wait_for_first_batch(data_dir, proc)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 0, err
    assert f"{signum.name}: stopping after the current batch" in err
    stopped = json.loads(out.splitlines()[-1])
    assert stopped["stopped"] is True and stopped["cycle"] == 1

    evs = events(data_dir)
    assert kinds(evs)[-2:] == ["PruneCycle.PhaseFailed", "PhaseLock.Released"]
    failed = evs[-2]
    assert failed.error_type == "PrunerStoppedError" and failed.phase == "SweepExpired"
    assert "PruneCycle.Completed" not in kinds(evs)
    with closing(sqlite3.connect(data_dir / STATE_FILE)) as db:
        assert db.execute("SELECT count(*) FROM sweep_journal").fetchone() == (0,)

    # Bigger batches for the rest (an operator may change the config between runs).
    (data_dir / CONFIG_FILE).write_text(CONFIG.replace("= 20", "= 2000"))
    again = subprocess.run(
        command(data_dir, "run", "--once", "--json"),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )

    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["cycle"] == 1
    after = kinds(events(data_dir)[len(evs) :])
    assert "PruneCycle.PhaseResumed" in after and after[-1] != "PruneCycle.PhaseFailed"
    assert "PruneCycle.Completed" in after and "Snapshot.Created" not in after
    verified = subprocess.run(
        command(data_dir, "audit", "--cycle", "1", "--verify"),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
