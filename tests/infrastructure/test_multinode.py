"""Three `prunelog run` processes on one PostgreSQL log: one pruner group.

The nodes share one data directory on purpose: it is the store they prune (state.sqlite and its
sweep journal, which a successor reconciles), the reach sets a successor needs to resume a
sweep, the config, and the read models. Sharing projections.sqlite is safe: a catch-up re-reads
each position inside BEGIN IMMEDIATE and the health fold loads its state inside that
transaction (test_crash.py, test_two_catch_ups_at_once_apply_each_event_once), and a fresh file
opened by three nodes at once is set up in one write transaction.

One run of the group (module-scoped, ~15 s; see `group_run`) is shared by the tests: a holder
"on another host" dies mid-sweep and is taken over once its lock times out; a holder on this host
dies and is taken over at once. The tests then read the log, the store and the read models.
Helpers: pg_nodes.py."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from domain.cycle import cycle_uuid
from infrastructure.config_file import load_settings
from infrastructure.eventlog import STATE_FILE
from infrastructure.runtime import Runtime
from infrastructure.state_store import SqliteStateStore
from infrastructure.testkit import (
    LogFold,
    audit_violations,
    projection_violations,
    store_violations,
)
from tests.conftest import postgres_url
from tests.infrastructure.pg_nodes import (
    GROUP,
    LOCK_TIMEOUT_MS,
    OPTS,
    LogTail,
    Node,
    audited,
    completed,
    deleted_log,
    group_dir,
    kind,
    make_template,
    pid_of,
)
from tests.infrastructure.test_crash import crash


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template(tmp_path_factory.mktemp("pg-template") / "data")


# --- one run of the group ----------------------------------------------------------------------


@dataclass
class GroupRun:
    data_dir: Path
    url: str
    nodes: list[Node]
    events: list[tuple[int, Any]] = field(default_factory=list)
    remote: str = ""  # the holder on "another host", SIGKILLed mid-sweep: its lock times out
    remote_cycle: Any = None
    remote_expires_at: Any = None
    killed: str = ""  # then a holder on this host, SIGKILLed: seen exited, taken over at once
    killed_cycle: Any = None


def cycle_of_lock(tail: LogTail, locked: Any) -> Any:
    snapshot = tail.last("Snapshot.Created", lambda e: e.snapshot_id == locked.snapshot_id)
    return cycle_uuid(GROUP, snapshot.cycle_no)


def live_local_holder(tail: LogTail, nodes: list[Node]) -> Any:
    lock = tail.last("PhaseLock.")
    live = {n.proc.pid for n in nodes if n.proc.poll() is None}
    if kind(lock) == "PhaseLock.Locked" and lock.owner.startswith(f"{socket.gethostname()}:"):
        return lock if pid_of(lock.owner) in live else None
    return None


def kill_while_holding(tail: LogTail, nodes: list[Node]) -> Any:
    """SIGKILLs a local node that holds the lock, and returns its Locked event. The node is
    frozen (SIGSTOP) first and the log read again: a node that released the lock meanwhile
    (its cycle ended) is let go on, so the kill always lands on a holder."""
    while True:
        locked = tail.wait_for(lambda: live_local_holder(tail, nodes), "a local holder")
        pid = pid_of(locked.owner)
        os.kill(pid, signal.SIGSTOP)
        while Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in "TtZX":
            time.sleep(0.001)  # stopped for sure before the log is read again
        time.sleep(0.3)  # ...and a COMMIT it had already sent has landed on the server
        tail.poll()
        last = tail.last("PhaseLock.")
        if kind(last) == "PhaseLock.Locked" and last.owner == locked.owner:
            os.kill(pid, signal.SIGKILL)  # an append in flight dies with its connection
            return last
        os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def group_run(template: Path, tmp_path_factory: pytest.TempPathFactory) -> GroupRun:
    """1. A node "on another host" starts alone and is SIGKILLed in the middle of its first
    sweep. 2. Two nodes on this host start: one takes its lock over once it times out, and
    finishes the cycle. 3. That holder is SIGKILLed while it holds the lock: the third node
    sees it exited and takes over at once. A writer writes throughout."""
    url = postgres_url()
    data_dir = group_dir(template, tmp_path_factory.mktemp("fleet") / "data")
    writer = crash.start_writer(data_dir, OPTS.seed + 1, OPTS.writer_sleep_ms)
    run = GroupRun(data_dir, url, [Node(data_dir, url, "remote", host="other-host")])
    tail = LogTail(url)
    try:
        swept = tail.wait_for(lambda: tail.last("PruneCycle.NodesSwept"), "first NodesSwept")
        os.kill(run.nodes[0].proc.pid, signal.SIGKILL)
        run.nodes[0].proc.wait()
        tail.poll()
        run.remote, run.remote_cycle = tail.last("PhaseLock.Locked").owner, swept.originator_id
        held = tail.last("PhaseLock.", lambda e: getattr(e, "owner", None) == run.remote)
        run.remote_expires_at = held.at + timedelta(milliseconds=LOCK_TIMEOUT_MS)
        run.nodes += [Node(data_dir, url, f"local{i}") for i in (1, 2)]
        tail.wait_for(lambda: completed(tail, run.remote_cycle), "completion after the timeout")
        locked = kill_while_holding(tail, run.nodes)
        run.killed, run.killed_cycle = locked.owner, cycle_of_lock(tail, locked)
        tail.wait_for(lambda: completed(tail, run.killed_cycle), "completion after the kill")
    finally:
        for node in run.nodes:
            node.stop()
        writer.send_signal(signal.SIGTERM)
        writer.communicate(timeout=60)
        tail.poll()
        run.events = tail.events
        tail.close()
    return run


def lock_intervals(events: list[tuple[int, Any]]) -> list[tuple[str, int, int]]:
    """(owner, from, to): log positions from each Locked to the Released or Expired ending it."""
    out: list[tuple[str, int, int]] = []
    held: tuple[str, int] | None = None
    for pos, e in events:
        if kind(e) == "PhaseLock.Locked":
            if held is not None and held[0] != e.owner:
                out.append((held[0], held[1], pos))  # an overlap: the check below names it
            held = (e.owner, pos) if held is None or held[0] != e.owner else held
        elif kind(e) in ("PhaseLock.Released", "PhaseLock.Expired") and held is not None:
            out.append((held[0], held[1], pos))
            held = None
    return out + ([(held[0], held[1], events[-1][0])] if held else [])


# --- the tests ---------------------------------------------------------------------------------


def takeover_of(run: GroupRun, owner: str) -> tuple[Any, list[Any]]:
    """The Expired event that took `owner`'s lock, and every event after it."""
    events = [e for _, e in run.events]
    found = [i for i, e in enumerate(events) if kind(e) == "PhaseLock.Expired"]
    i = next(i for i in found if events[i].previous_owner == owner)
    return events[i], events[i + 1 :]


def test_exactly_one_node_of_the_group_works_at_a_time(group_run: GroupRun) -> None:
    killed = {group_run.killed}  # the remote one is "not certainly gone" for the others
    fold = LogFold(gone=lambda owner: owner in killed).feed(e for _, e in group_run.events)
    assert fold.lock == []
    intervals = lock_intervals(group_run.events)
    for (a, _, a_end), (b, b_start, _) in itertools.pairwise(intervals):
        assert a == b or a_end <= b_start, f"{a} and {b} held the lock at once"
    assert len({owner for owner, _, _ in intervals}) == 3  # the lock passed to every node
    for node in group_run.nodes:
        worked = any(f":{node.proc.pid}:" in owner for owner, _, _ in intervals)
        waited = any(r.get("waiting") for r in node.records())
        assert worked or waited, node.stderr()[-2000:]
    survivors = [n for n in group_run.nodes if n.proc.returncode != -signal.SIGKILL]
    assert len(survivors) == 1 and survivors[0].proc.returncode == 0, survivors[0].stderr()


def test_a_holder_on_another_host_is_taken_over_once_its_lock_times_out(
    group_run: GroupRun,
) -> None:
    takeover, after = takeover_of(group_run, group_run.remote)
    assert group_run.remote.startswith("other-host:")
    assert takeover.reason == "timed out"
    assert takeover.previous_phase == "SweepExpired"
    assert takeover.at >= group_run.remote_expires_at
    assert takeover.taken_over_by not in (None, group_run.remote)
    assert kind(after[0]) == "PhaseLock.Locked" and after[0].owner == takeover.taken_over_by
    # The successor records the dead holder's phase as interrupted (before it takes the lock
    # for that phase), then resumes it, or rolls the cycle back, and completes it.
    cycle = [e for _, e in group_run.events if e.originator_id == group_run.remote_cycle]
    failed = next(e for e in cycle if kind(e) == "PruneCycle.PhaseFailed")
    assert (failed.phase, failed.error_type) == ("SweepExpired", "Interrupted")
    kinds = [kind(e) for e in cycle[cycle.index(failed) :]]
    # Resumed where the dead holder stopped, or rolled back and done again: both legal.
    assert "PruneCycle.PhaseResumed" in kinds or "PruneCycle.RolledBack" in kinds
    assert kinds[-1] == "PruneCycle.Completed"


def test_a_killed_holder_on_this_host_is_taken_over_at_once(group_run: GroupRun) -> None:
    takeover, after = takeover_of(group_run, group_run.killed)
    assert takeover.reason == "holder process exited"
    assert takeover.taken_over_by not in (None, group_run.killed, group_run.remote)
    assert kind(after[0]) == "PhaseLock.Locked" and after[0].owner == takeover.taken_over_by
    # The successor finishes the cycle, unless the holder died after completing it but before
    # releasing the lock (two appends): then there is nothing left to finish.
    cycle = [kind(e) for _, e in group_run.events if e.originator_id == group_run.killed_cycle]
    assert cycle[-1] == "PruneCycle.Completed"


def test_no_node_is_deleted_twice_and_no_reachable_node_is_lost(group_run: GroupRun) -> None:
    deletions = deleted_log(group_run.data_dir)
    assert deletions, "the group deleted nothing"
    # Every row the store deleted is in exactly one audit event, and a hash deleted twice was
    # written again in between (a later written_order each time).
    assert Counter(h for h, _ in deletions) == audited(group_run.events)
    orders: dict[bytes, list[int]] = {}
    for h, order in deletions:
        orders.setdefault(h, []).append(order)
    twice = {h: o for h, o in orders.items() if len(o) > 1}
    assert all(o == sorted(set(o)) for o in twice.values()), twice
    fold = LogFold().feed(e for _, e in group_run.events)
    assert fold.legality == [] and fold.snapshot_use == []
    with SqliteStateStore.open(group_run.data_dir / STATE_FILE) as store:
        assert store_violations(store, fold.protected_since()) == []
        assert audit_violations(fold, store) == []


def test_the_shared_read_models_equal_a_rebuild_from_the_log(group_run: GroupRun) -> None:
    settings = load_settings(group_run.data_dir)
    settings.event_store = group_run.url
    with Runtime(settings) as rt:
        assert projection_violations(rt.projections()) == []
        rows = rt.projections().rows("SELECT DISTINCT grp FROM audit_batches")
        assert [r[0] for r in rows] == [GROUP]
