"""Invariant I under a live chain: the seeded workload writer runs as its own OS process (or
thread) while the pruner runs cycles in this one. After every delete transaction and after
every cycle, an independent traversal re-hashes every retained root and every root written
since (`check_store`); once the writer stops, two more cycles leave nothing unreachable.

The default run covers a few seeds; `--soak` adds many more, with longer runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from domain.config import PruneConfig, RecoveryConfig
from domain.pruning import Pruner
from infrastructure.audit_checks import StoreCheck, check_store
from infrastructure.clock import ManualClock
from infrastructure.eventlog import STATE_FILE
from infrastructure.runtime import Runtime, Settings
from infrastructure.state_store import SqliteStateStore
from infrastructure.workload import StopFlag, WorkloadWriter
from tests.fakes import HookedNodeStore

REPO = Path(__file__).resolve().parents[2]
PROTECTION = 5
KEYS = 300
SEEDS = (101, 202, 303, 404)
SOAK_SEEDS = tuple(range(1_000, 1_032))
FAST_RETRIES = RecoveryConfig(base_retry_delay_ms=5, max_retry_delay_ms=50)
# A pause after each commit: a chain of a few hundred txs a second, so that a cycle overlaps
# tens of commits and the pruner can still keep up (and win the write lock now and then).
WRITER_SLEEP_MS = 10.0


class Writer(Protocol):
    def alive(self) -> bool: ...

    def stop(self) -> None:
        """Stops between txs; raises AssertionError if the writer failed."""
        ...


class ProcessWriter:
    """`python -m infrastructure.workload` as a child process, stopped by SIGTERM."""

    def __init__(self, db: Path, seed: int, sleep_ms: float) -> None:
        command = [
            sys.executable,
            "-m",
            "infrastructure.workload",
            *("--db", str(db), "--txs", "0", "--seed", str(seed)),
            *("--keys", str(KEYS), "--sleep-ms", str(sleep_ms)),
        ]
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        summary = json.loads(out.strip().splitlines()[-1])
        assert self.proc.returncode == 0 and summary["error"] is None, summary

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.communicate(timeout=60)


class ThreadWriter:
    """The same writer on a thread of this process, with its own connection."""

    def __init__(self, db: Path, seed: int, sleep_ms: float) -> None:
        self.flag = StopFlag()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(db, seed, sleep_ms), daemon=True)
        self.thread.start()

    def _run(self, db: Path, seed: int, sleep_ms: float) -> None:
        try:
            with SqliteStateStore.open(db) as store:
                WorkloadWriter(store, seed, keys=KEYS).run(0, sleep_ms, should_stop=self.flag)
        except BaseException as exc:
            self.error = exc

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.flag.stop = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the writer thread did not stop"
        assert self.error is None, f"the writer failed: {self.error!r}"

    def kill(self) -> None:
        self.flag.stop = True
        self.thread.join(timeout=60)


@dataclass
class Outcome:
    cycles: int = 0
    cycles_overlapping_writes: int = 0
    batch_checks: int = 0
    deleted: int = 0
    kept_by_guard: int = 0
    violations: list[str] = field(default_factory=list)


def wait_for_order(reader: SqliteStateStore, order: int, writer: Writer) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        latest = reader.latest()
        if latest is not None and latest.tx_order >= order:
            return
        assert writer.alive(), "the writer stopped before the chain got going"
        time.sleep(0.01)
    raise AssertionError(f"the writer did not reach order {order} within 60 s")


def window_and_latest(reader: SqliteStateStore, snapshot_order: int) -> list[bytes]:
    """The roots a snapshot at `snapshot_order` retains (its window and genesis) and the
    newest root, which every later commit builds on."""
    rows = reader.roots_between(snapshot_order - PROTECTION, snapshot_order)
    genesis, latest = reader.root_at(0), reader.latest()
    assert genesis is not None and latest is not None
    return [*(r.state_root for r in rows), genesis.state_root, latest.state_root]


def describe(where: str, check: StoreCheck) -> str:
    return f"{where}: {check.missing} missing, {check.corrupt} corrupt ({check})"


def prune_while_writing(
    data_dir: Path, start_writer: type[ProcessWriter | ThreadWriter], seed: int, cycles: int
) -> Outcome:
    data_dir.mkdir()
    db = data_dir / STATE_FILE
    SqliteStateStore.open(db).close()  # the schema first, so nobody races its creation
    writer = start_writer(db, seed, WRITER_SLEEP_MS)
    outcome = Outcome()
    try:
        with SqliteStateStore.open(db) as reader:
            wait_for_order(reader, PROTECTION + 40, writer)
            prune = PruneConfig(protection_orders=PROTECTION, delete_batch_size=96)
            settings = Settings(data_dir, prune=prune, recovery=FAST_RETRIES)
            with Runtime(settings, clock=ManualClock(), owner="pruner") as rt:
                hooked = HookedNodeStore(rt.nodes)

                def after_each_delete(max_order: int, deleted: list[tuple[bytes, int]]) -> None:
                    # Invariant I after every delete, not only after every cycle: the
                    # snapshot's window and the newest root (the full check is per cycle).
                    if not deleted:
                        return
                    verified = reader.verify_roots(window_and_latest(reader, max_order))
                    outcome.batch_checks += 1
                    if not verified.ok:
                        outcome.violations.append(
                            f"after a delete batch: {len(verified.missing)} missing, "
                            f"{len(verified.corrupt)} corrupt"
                        )

                hooked.after_delete.append(after_each_delete)
                pruner = Pruner(rt.manager, hooked, rt.reach_store, prune, recovery=rt.recovery)
                for cycle in range(cycles):
                    report = pruner.run_cycle()
                    latest = reader.latest()
                    assert latest is not None
                    outcome.cycles += 1
                    outcome.cycles_overlapping_writes += latest.tx_order > report.latest_order
                    outcome.deleted += sum(p.deleted for p in report.phases.values())
                    outcome.kept_by_guard += sum(p.kept_by_guard for p in report.phases.values())
                    check = check_store(reader, report.latest_order - PROTECTION)
                    if check.violations:
                        outcome.violations.append(describe(f"after cycle {cycle + 1}", check))
                    if not writer.alive():  # e.g. a MissingNodeError under its latest root
                        writer.stop()  # raises with the writer's own error
                        raise AssertionError("the writer stopped by itself during pruning")
                writer.stop()

                # Liveness: the chain is still, so two cycles leave no unreachable node.
                for _ in range(2):
                    report = pruner.run_cycle()
                final = check_store(reader, report.latest_order - PROTECTION)
                assert final.violations == 0, describe("after the writer stopped", final)
                assert final.unreachable_stored == 0, final
    finally:
        writer.kill()
    assert outcome.violations == [], f"seed {seed}: {outcome.violations}"
    assert outcome.deleted > 0
    assert outcome.cycles_overlapping_writes >= cycles // 2, outcome
    return outcome


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.mark.parametrize("seed", SEEDS)
def test_every_protected_root_stays_whole_while_a_writer_process_commits_during_the_cycles(
    data_dir: Path, seed: int
) -> None:
    outcome = prune_while_writing(data_dir, ProcessWriter, seed, cycles=6)
    assert outcome.batch_checks > 0


def test_every_protected_root_stays_whole_while_a_writer_thread_commits_during_the_cycles(
    data_dir: Path,
) -> None:
    outcome = prune_while_writing(data_dir, ThreadWriter, 505, cycles=6)
    assert outcome.batch_checks > 0


@pytest.mark.soak
@pytest.mark.parametrize("seed", SOAK_SEEDS)
def test_soak_every_protected_root_stays_whole_under_a_writer_process(
    data_dir: Path, seed: int
) -> None:
    prune_while_writing(data_dir, ProcessWriter, seed, cycles=20)


@pytest.mark.soak
@pytest.mark.parametrize("seed", SOAK_SEEDS[:8])
def test_soak_every_protected_root_stays_whole_under_a_writer_thread(
    data_dir: Path, seed: int
) -> None:
    prune_while_writing(data_dir, ThreadWriter, seed, cycles=20)
