"""kill -9: the fault hook kills the pruner exactly where it is told to, the state a kill leaves
is the one the design promises, a restart recovers from it, and the crash harness
(benchmarks/crash.py) survives a series of kills with no violation."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from infrastructure import faults
from infrastructure.eventlog import EventsourcingLog
from infrastructure.faults import KillAt, Trigger
from infrastructure.sqlite_nodes import journaled_nodes

REPO = Path(__file__).resolve().parents[2]


def _load_harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crash_harness", REPO / "benchmarks/crash.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


crash = _load_harness()


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared data dir (store, config, deleted_log trigger); each test copies it. One
    audit batch per transaction, so the tests below count batches at the kill points."""
    path = tmp_path_factory.mktemp("crash-template") / "data"
    crash.prepare(path, crash.Options(seed=5, batches_per_commit=1))
    return path


@pytest.fixture
def data_dir(template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "data"
    shutil.copytree(template, path)
    return path


def kill_at(data_dir: Path, spec: str) -> tuple[int, str, int]:
    """Runs `prunelog run` (forever) with the hook set; returns (exit code, stderr, pid)."""
    err = data_dir / "killed.err"
    proc = crash.start_pruner(data_dir, kill_at=spec, stderr_path=err)
    try:
        rc = proc.wait(timeout=120)
    except Exception:
        proc.kill()
        proc.wait()
        raise
    return rc, err.read_text(errors="replace"), proc.pid


def restart(data_dir: Path) -> None:
    err = data_dir / "restart.err"
    proc = crash.start_pruner(data_dir, "--once", stderr_path=err)
    assert proc.wait(timeout=120) == 0, err.read_text(errors="replace")


def events(data_dir: Path) -> list[tuple[str, Any]]:
    with EventsourcingLog.open_sqlite(data_dir) as log:
        return [(type(e).__qualname__, e) for e in log.events()]


def swept(evs: list[tuple[str, Any]]) -> list[Any]:
    return [e for kind, e in evs if kind == "PruneCycle.NodesSwept"]


def state_rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(data_dir / "state.sqlite")) as db:
        return list(db.execute(sql))


def deleted_log(data_dir: Path) -> Counter[bytes]:
    return Counter(bytes(h) for (h,) in state_rows(data_dir, "SELECT hash FROM deleted_log"))


def audited(evs: list[tuple[str, Any]]) -> Counter[bytes]:
    return Counter(h for e in swept(evs) for h in e.hashes)


def assert_killed_by_hook(rc: int, stderr: str, spec: str) -> None:
    assert rc == -signal.SIGKILL, stderr
    assert f"{faults.MARKER} {spec}" in stderr


def assert_recovers(data_dir: Path) -> list[tuple[str, Any]]:
    """A restart completes a cycle, and every harness check passes afterwards."""
    restart(data_dir)
    results = crash.Checker(data_dir).run()
    assert results == {name: [] for name in crash.CHECKS}
    return events(data_dir)


# --- the hook --------------------------------------------------------------------------------


def test_a_kill_spec_names_a_known_point_and_a_positive_count() -> None:
    assert KillAt.parse("mid_delete:3") == KillAt("mid_delete", 3)
    assert KillAt.parse("build_reach") == KillAt("build_reach", 1)
    for bad in ("nowhere:1", "mid_delete:x", "mid_delete:0", "mid_delete:-1"):
        with pytest.raises(ValueError):
            KillAt.parse(bad)
    assert faults.from_env({}) is None
    assert faults.from_env({faults.ENV_VAR: "between_batches:2"}) == KillAt("between_batches", 2)


def test_a_trigger_fires_once_on_the_nth_reach_of_its_own_point() -> None:
    fired: list[KillAt] = []
    trigger = Trigger(KillAt("mid_delete", 3), kill=fired.append)
    for point in ("mid_delete", "build_reach", "mid_delete", "mid_delete", "mid_delete"):
        trigger.reached(point)
    assert fired == [KillAt("mid_delete", 3)]


def test_without_the_env_var_the_runtime_is_not_wrapped(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infrastructure.config_file import load_settings
    from infrastructure.runtime import Runtime

    monkeypatch.delenv(faults.ENV_VAR, raising=False)
    with Runtime(load_settings(data_dir)) as rt:
        assert rt.pruner.nodes is rt.nodes
        assert all("apply" not in vars(p) for p in rt.projections().projections.values())


def test_with_the_env_var_the_runtime_wraps_the_node_store_and_the_read_models(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infrastructure.config_file import load_settings
    from infrastructure.runtime import Runtime

    monkeypatch.setenv(faults.ENV_VAR, "projection_update:1000000")
    with Runtime(load_settings(data_dir)) as rt:
        assert isinstance(rt.pruner.nodes, faults.FaultyNodeStore)
        assert all("apply" in vars(p) for p in rt.projections().projections.values())


def test_the_mid_delete_point_fires_inside_the_open_delete_transaction(data_dir: Path) -> None:
    """In-process, with a kill that only records: the point is reached while the DELETE runs,
    its transaction open and nothing of it visible to another connection."""
    from infrastructure.config_file import load_settings
    from infrastructure.runtime import Runtime

    seen: list[tuple[bool, int]] = []
    with Runtime(load_settings(data_dir)) as rt:
        before = deleted_log(data_dir)

        def record(at: KillAt) -> None:
            seen.append((rt.nodes.conn.in_transaction, sum(deleted_log(data_dir).values())))

        trigger = Trigger(KillAt("mid_delete", 2), kill=record)
        rt.pruner.nodes = faults.FaultyNodeStore(rt.nodes, trigger)
        rt.pruner.run_cycle()
        first = swept(events(data_dir))[0]
    assert not before
    assert seen == [(True, len(first.hashes))]  # during batch 2: only batch 1 is visible
    assert trigger.count > 2  # counted once per delete transaction, on to the end


# --- each targeted kill point, in a real process ---------------------------------------------


def test_build_reach_kill_leaves_the_cycle_in_build_reach_and_the_restart_takes_over(
    data_dir: Path,
) -> None:
    nodes_before = state_rows(data_dir, "SELECT COUNT(*) FROM nodes")[0][0]
    rc, stderr, pid = kill_at(data_dir, "build_reach:3")
    assert_killed_by_hook(rc, stderr, "build_reach:3")

    evs = events(data_dir)
    kinds = [k for k, _ in evs]
    cycle_events = [(k, e) for k, e in evs if k.startswith("PruneCycle.")]
    assert cycle_events[-1][0] == "PruneCycle.PhaseStarted"
    assert cycle_events[-1][1].phase == "BuildReach"
    assert "Snapshot.ReachBuilt" not in kinds and not swept(evs)
    assert state_rows(data_dir, "SELECT COUNT(*) FROM nodes")[0][0] == nodes_before
    assert not deleted_log(data_dir)
    locked = [e for k, e in evs if k == "PhaseLock.Locked"]
    assert f":{pid}:" in locked[-1].owner  # the dead process still holds the lock

    after = assert_recovers(data_dir)[len(evs) :]
    kinds = [k for k, _ in after]
    failed = next(e for k, e in after if k == "PruneCycle.PhaseFailed")
    assert (failed.phase, failed.error_type) == ("BuildReach", "Interrupted")
    assert kinds.index("PruneCycle.PhaseFailed") < kinds.index("PruneCycle.RetryScheduled")
    assert kinds.index("PruneCycle.RetryScheduled") < kinds.index("PruneCycle.PhaseResumed")
    takeover = next(e for k, e in after if k == "PhaseLock.Expired")
    assert f":{pid}:" in takeover.previous_owner
    assert takeover.reason == "holder process exited"
    assert "PruneCycle.Completed" in kinds


def test_between_batches_kill_leaves_the_journal_consistent_with_the_log(
    data_dir: Path,
) -> None:
    rc, stderr, _ = kill_at(data_dir, "between_batches:2")
    assert_killed_by_hook(rc, stderr, "between_batches:2")

    evs = events(data_dir)
    batches = swept(evs)
    assert [e.batch_no for e in batches] == [1, 2]
    # Killed right after the 2nd NodesSwept was saved, before its journal row was dropped: the
    # row is still there, and names exactly what the event names.
    journal = state_rows(data_dir, "SELECT batch_no, logged, deleted FROM sweep_journal")
    assert [(b, logged) for b, logged, _ in journal] == [(2, 0)]
    assert journaled_nodes(journal[0][2]).hashes == batches[1].hashes
    assert deleted_log(data_dir) == audited(evs)

    after = assert_recovers(data_dir)
    cycle_one = [e.batch_no for e in swept(after) if e.originator_id == batches[0].originator_id]
    assert len(cycle_one) == len(set(cycle_one))  # the journal did not log batch 2 twice
    assert not state_rows(data_dir, "SELECT * FROM sweep_journal")


def test_mid_delete_kill_rolls_back_the_open_transaction(data_dir: Path) -> None:
    nodes_before = state_rows(data_dir, "SELECT COUNT(*) FROM nodes")[0][0]
    rc, stderr, _ = kill_at(data_dir, "mid_delete:2")
    assert_killed_by_hook(rc, stderr, "mid_delete:2")

    evs = events(data_dir)
    batches = swept(evs)
    assert [e.batch_no for e in batches] == [1]
    # The second batch's DELETE ran inside an open transaction: no journal row, no node gone,
    # not even the trigger's own rows; only batch 1 is gone, and it is audited.
    assert not state_rows(data_dir, "SELECT * FROM sweep_journal")
    assert deleted_log(data_dir) == audited(evs)
    assert state_rows(data_dir, "SELECT COUNT(*) FROM nodes")[0][0] == nodes_before - len(
        batches[0].hashes
    )
    assert_recovers(data_dir)


def test_projection_update_kill_leaves_the_read_models_at_their_last_commit(
    data_dir: Path,
) -> None:
    # A fresh data dir: the startup catch-up applies 1 event to each of the 5 read models; the
    # 20th apply is inside the catch-up after the first cycle, in one uncommitted transaction.
    rc, stderr, _ = kill_at(data_dir, "projection_update:20")
    assert_killed_by_hook(rc, stderr, "projection_update:20")

    evs = events(data_dir)
    assert "PruneCycle.Completed" in [k for k, _ in evs] and swept(evs)
    with closing(sqlite3.connect(data_dir / "projections.sqlite")) as db:
        positions = dict(db.execute("SELECT name, position FROM tracking").fetchall())
        audit_rows = db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    assert set(positions.values()) == {1}
    assert audit_rows == 0

    after = assert_recovers(data_dir)
    with closing(sqlite3.connect(data_dir / "projections.sqlite")) as db:
        assert db.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == sum(
            audited(after).values()
        )


def test_a_restart_takes_over_from_a_killed_pruner_that_is_not_yet_reaped(
    data_dir: Path,
) -> None:
    """Source bug, infrastructure/liveness.py: until its parent reaps it, a SIGKILLed pruner is a
    zombie whose /proc/<pid>/stat still exists with the same start time, so ProcessLiveness
    calls it alive; the restart cannot take its lock over and the resumed cycle ends in
    RecoveryExhausted (until lock_timeout_ms, 30 min by default). A supervisor that restarts
    before it reaps, or a container whose PID 1 does not reap, hits this. Fix: read the state
    field of /proc/<pid>/stat as well and count 'Z' (zombie) and 'X' (dead) as gone."""
    from infrastructure.liveness import ProcessLiveness

    err = data_dir / "killed.err"
    proc = crash.start_pruner(data_dir, kill_at="build_reach:3", stderr_path=err)
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # dead, but not reaped
        assert faults.MARKER in err.read_text()
        owner = [e for k, e in events(data_dir) if k == "PhaseLock.Locked"][-1].owner
        assert f":{proc.pid}:" in owner
        assert ProcessLiveness().is_gone(owner), "a killed, unreaped holder counts as alive"
        restart(data_dir)
    finally:
        proc.wait()


def test_two_catch_ups_at_once_apply_each_event_once(data_dir: Path) -> None:
    """Source bug, projections/runner.py `catch_up`: the tracked positions are read before
    BEGIN IMMEDIATE. When another process (`prunelog run` after a cycle, and `prunelog health`
    from an operator or a probe) commits a catch-up in between, this one applies the same
    events again: the timeline gets each run twice and health counts twice (the audit's
    batch key then raises IntegrityError instead). Fix: re-read each position after
    BEGIN IMMEDIATE, inside the transaction, and apply only events past it."""
    from infrastructure.config_file import load_settings
    from infrastructure.runtime import Runtime
    from projections.runner import ProjectionRunner

    with Runtime(load_settings(data_dir)) as rt:
        rt.pruner.run_cycle()
        other = rt.projections()  # the other process's runner, on the same file
        runner = ProjectionRunner(
            data_dir / "projections.sqlite", rt.log, crash.fresh_projections(rt)
        )
        log = rt.log

        class Interleaved:
            """The log as `runner` sees it; the other runner commits while a page is read."""

            def head(self) -> int:
                return log.head()

            def read(self, start: int, limit: int) -> list[tuple[int, Any]]:
                other.catch_up(["timeline", "health"])
                return log.read(start, limit)

        runner.source = Interleaved()
        runner.catch_up(["timeline", "health"])
        runner.source = log
        assert other.verify("timeline") and other.verify("health")


def test_the_kill_plan_is_seeded_and_covers_every_kind_early() -> None:
    plans = crash.plan_kills(25, 7)
    assert plans == crash.plan_kills(25, 7)
    assert plans != crash.plan_kills(25, 8)
    assert {p.kind for p in plans[: len(crash.KINDS)]} == set(crash.KINDS)
    for p in plans:
        if p.kind == "timed":
            assert p.delay_s > 0 and p.kill_at is None
        else:
            assert 1 <= p.n <= crash.MAX_N[p.kind] and p.kill_at == f"{p.kind}:{p.n}"


def _assert_clean(summary: dict[str, Any], kills: int) -> None:
    assert summary["violations"] == 0, summary["violation_details"]
    assert summary["restarts"] == kills
    assert all(count > 0 for count in summary["kills_by_kind"].values()), summary
    assert summary["checks_passed"] == kills * len(crash.CHECKS)


@pytest.fixture
def harness_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "harness"


def test_25_kills_while_the_writer_writes_leave_no_violation(harness_dir: Path) -> None:
    summary = crash.run(crash.Options(kills=25, seed=11, data_dir=harness_dir))
    _assert_clean(summary, 25)


@pytest.mark.soak
@pytest.mark.timeout(3 * 3600)
def test_soak_300_kills(harness_dir: Path) -> None:
    summary = crash.run(crash.Options(kills=300, seed=1, verify_every=30, data_dir=harness_dir))
    _assert_clean(summary, 300)
