"""The kit itself (infrastructure/testkit.py): each invariant holds on a real log and store and
flags the one thing it guards when that thing is broken on purpose; the strategies, the fault
plan and the stepping pruner process do what they say; and every example in
docs/testing-your-phases.md runs as written."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from domain.phases import PrunePhase
from infrastructure import smt
from infrastructure.clock import ManualClock
from infrastructure.eventlog import STATE_FILE
from infrastructure.runtime import Runtime
from infrastructure.state_store import SqliteStateStore
from infrastructure.testkit import (
    FAULT_METHODS,
    Adapters,
    FaultPlan,
    FaultSpec,
    LogFold,
    MachineConfig,
    PrunerProcess,
    WriterTx,
    audit_violations,
    check_invariants,
    faults,
    garbage_violations,
    legality_violations,
    lock_violations,
    open_pruner,
    snapshot_use_violations,
    store_violations,
    unaudited_deletions,
    writer_transactions,
)
from infrastructure.workload import WorkloadWriter

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing-your-phases.md"
CONFIG = MachineConfig()
QUICK_FIND = settings(max_examples=500, phases=(Phase.generate,), database=None)


# --- a real log: cycles, then a takeover after the lock timed out ----------------------------


@dataclass
class Rig:
    data_dir: Path
    store: SqliteStateStore
    clock: ManualClock
    observer: Runtime

    def events(self) -> list[Any]:
        return list(self.observer.log.events())

    def close(self) -> None:
        self.observer.close()
        self.store.close()


def open_rig(data_dir: Path, txs: int = 24) -> Rig:
    data_dir.mkdir(parents=True)
    store = SqliteStateStore.open(data_dir / STATE_FILE)
    WriterTx({b"genesis": b"g"}, {}).commit(store)
    WorkloadWriter(store, 11, keys=24, ops_per_tx=3).run(txs)
    clock = ManualClock()
    return Rig(data_dir, store, clock, Runtime(CONFIG.settings(data_dir), clock=clock))


def run_cycles(rig: Rig, owner: str, cycles: int) -> None:
    parts = open_pruner(CONFIG.settings(rig.data_dir), rig.clock, owner, Adapters())
    try:
        for _ in range(cycles):
            parts.pruner.run_cycle()
    finally:
        parts.close()


@pytest.fixture(scope="module")
def taken_over(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """pruner-a runs a cycle, then takes a snapshot and dies holding the lock; once the lock
    timed out, pruner-b takes over and runs two cycles."""
    rig = open_rig(tmp_path_factory.mktemp("kit") / "data")
    run_cycles(rig, "pruner-a", 1)
    parts = open_pruner(CONFIG.settings(rig.data_dir), rig.clock, "pruner-a", Adapters())
    parts.manager.create_snapshot(PrunePhase.BUILD_REACH)
    parts.close()
    WorkloadWriter(rig.store, 12, keys=24, ops_per_tx=3).run(8)
    rig.clock.advance(ms=CONFIG.lock_timeout_ms + 1)
    run_cycles(rig, "pruner-b", 2)
    yield rig
    rig.close()


@pytest.fixture
def pruned(tmp_path: Path) -> Iterator[Rig]:
    rig = open_rig(tmp_path / "data")
    run_cycles(rig, "pruner-a", 2)
    yield rig
    rig.close()


def only(events: list[Any], kind: str) -> list[Any]:
    return [e for e in events if type(e).__qualname__ == kind]


def swap(events: list[Any], old: Any, new: Any) -> list[Any]:
    return [new if e is old else e for e in events]


def test_a_real_log_and_store_satisfy_every_invariant(taken_over: Rig) -> None:
    events = taken_over.events()
    assert only(events, "PhaseLock.Expired"), "the fixture should contain a takeover"
    assert only(events, "PruneCycle.NodesSwept"), "the fixture should delete something"
    runner = taken_over.observer.projections()
    assert check_invariants(taken_over.store, events, runner=runner) == {}


def test_a_takeover_before_the_lock_expired_is_a_lock_violation(taken_over: Rig) -> None:
    events = taken_over.events()
    expired = only(events, "PhaseLock.Expired")[0]
    early = dataclasses.replace(expired, at=expired.at - timedelta(seconds=10))
    assert lock_violations(events) == []
    found = lock_violations(swap(events, expired, early))
    assert len(found) == 1 and "live lock" in found[0], found


def test_a_takeover_from_an_exited_holder_is_legal_only_if_it_really_exited(
    taken_over: Rig,
) -> None:
    events = taken_over.events()
    expired = only(events, "PhaseLock.Expired")[0]
    early = dataclasses.replace(
        expired, at=expired.at - timedelta(seconds=10), reason="holder process exited"
    )
    forged = swap(events, expired, early)
    assert lock_violations(forged, gone={"pruner-a"}.__contains__) == []
    found = lock_violations(forged, gone=set[str]().__contains__)
    assert len(found) == 1 and "still running" in found[0], found


def test_two_holders_at_once_are_a_lock_violation(taken_over: Rig) -> None:
    events = taken_over.events()
    expired = only(events, "PhaseLock.Expired")[0]
    found = lock_violations([e for e in events if e is not expired])
    assert found and "while pruner-a held" in found[0], found


def test_a_phase_started_before_the_previous_one_completed_is_out_of_order(
    taken_over: Rig,
) -> None:
    events = taken_over.events()
    completed = only(events, "PruneCycle.PhaseCompleted")[0]
    later = [
        e
        for e in events
        if e.originator_id == completed.originator_id
        and e.originator_version > completed.originator_version
    ]
    renumbered = {
        id(e): dataclasses.replace(e, originator_version=e.originator_version - 1) for e in later
    }
    broken = [renumbered.get(id(e), e) for e in events if e is not completed]
    assert legality_violations(events) == []
    found = legality_violations(broken)
    assert len(found) == 1 and "PhaseStarted" in found[0], found


def test_a_phase_on_another_snapshot_is_a_snapshot_use_violation(taken_over: Rig) -> None:
    events = taken_over.events()
    started = only(events, "PruneCycle.PhaseStarted")[-1]
    forged = swap(events, started, dataclasses.replace(started, snapshot_id=1))
    assert snapshot_use_violations(events) == []
    found = snapshot_use_violations(forged)
    assert len(found) == 1 and "used snapshot 1" in found[0], found


def test_the_fold_knows_the_protected_window_and_the_holder(taken_over: Rig) -> None:
    fold = LogFold().feed(taken_over.events())
    newest = max(fold.snapshots.values(), key=lambda s: s.snapshot_id)
    assert fold.protected_since() == newest.latest_order - CONFIG.protection_orders
    assert fold.holder() is None  # pruner-b finished and released it
    snapshots = {s.snapshot_id for s in fold.snapshots.values()}
    assert {row.snapshot_id for row in fold.audit} <= snapshots


def test_a_live_node_deleted_behind_the_pruners_back_is_a_safety_violation(pruned: Rig) -> None:
    latest = pruned.store.latest()
    assert latest is not None
    assert store_violations(pruned.store, latest.tx_order - CONFIG.protection_orders) == []
    leaf = next(
        h
        for h, data in smt.reachable(pruned.store.read_node, latest.state_root).items()
        if smt.is_leaf(data)
    )
    pruned.store.connection.execute("DELETE FROM nodes WHERE hash = ?", (leaf,))
    found = store_violations(pruned.store, latest.tx_order)
    assert found == [f"1 node(s) missing under roots with order >= {latest.tx_order}"]


def test_an_orphan_node_is_garbage_and_an_unaudited_deletion_is_an_audit_gap(
    pruned: Rig,
) -> None:
    latest = pruned.store.latest()
    assert latest is not None
    since = latest.tx_order - CONFIG.protection_orders
    assert garbage_violations(pruned.store, since) == []
    orphan = smt.encode_leaf(smt.key_hash(b"nobody"), smt.encode_value(b"x"))
    pruned.store.connection.execute(
        "INSERT INTO nodes(hash, data, written_order) VALUES (?, ?, 0)",
        (smt.node_hash(orphan), orphan),
    )
    assert garbage_violations(pruned.store, since) == [
        f"1 stored node(s) are reachable from no root with order >= {since}"
    ]
    events = pruned.events()
    ever = [smt.node_hash(orphan)]
    assert unaudited_deletions(events, ever, pruned.store) == []
    pruned.store.connection.execute("DELETE FROM nodes WHERE hash = ?", (ever[0],))
    assert len(unaudited_deletions(events, ever, pruned.store)) == 1


def test_an_audited_hash_still_stored_under_the_snapshot_is_an_audit_violation(
    pruned: Rig,
) -> None:
    events = pruned.events()
    assert audit_violations(events, pruned.store) == []
    swept = only(events, "PruneCycle.NodesSwept")[0]
    gone = bytes(swept.hashes[0])
    pruned.store.connection.execute(
        "INSERT INTO nodes(hash, data, written_order) VALUES (?, ?, 0)", (gone, b"\x02" * 40)
    )
    found = audit_violations(events, pruned.store)
    assert len(found) == 1 and gone.hex()[:16] in found[0], found
    # A writer that wrote it again AFTER the deleting snapshot is fine.
    pruned.store.connection.execute(
        "UPDATE nodes SET written_order = 1000000 WHERE hash = ?", (gone,)
    )
    assert audit_violations(events, pruned.store) == []


# --- strategies and the fault plan -----------------------------------------------------------


def test_writer_transactions_bring_earlier_values_back() -> None:
    def reverts(txs: list[WriterTx]) -> bool:
        seen: dict[bytes, list[bytes | None]] = {}
        for tx in txs:
            for key, value in tx.changes.items():
                history = seen.setdefault(key, [])
                if value is not None and history and value in history[:-1]:
                    return True
                history.append(value)
        return False

    found = find(st.lists(writer_transactions(), min_size=3), reverts, settings=QUICK_FIND)
    assert reverts(found)


def test_objects_in_writer_transactions_share_field_trees() -> None:
    found = find(
        writer_transactions(),
        lambda tx: (
            len([f for f in tx.objects.values() if f is not None])
            > len({repr(f) for f in tx.objects.values() if f is not None})
        ),
    )
    assert len(found.objects) >= 2


@given(txs=st.lists(writer_transactions(), min_size=1, max_size=4))
def test_writer_transactions_commit_one_order_each(
    tmp_path_factory: pytest.TempPathFactory, txs: list[WriterTx]
) -> None:
    path = tmp_path_factory.mktemp("writer") / STATE_FILE
    with SqliteStateStore.open(path) as store:
        orders = [tx.commit(store) for tx in txs]
        assert orders == list(range(len(txs)))
        assert store_violations(store, 0) == []


@given(spec=faults())
def test_faults_name_a_port_method(spec: FaultSpec) -> None:
    assert spec.method in FAULT_METHODS


def test_a_fault_names_a_real_method() -> None:
    with pytest.raises(ValueError, match="no NodeStorePort method"):
        FaultSpec("vacuum")


def test_a_fault_plan_lets_skipped_calls_through_then_fails_once() -> None:
    plan = FaultPlan()
    plan.arm(FaultSpec("ids_of", skip=2))
    plan.arm(FaultSpec("delete_guarded", after_call=True))
    assert plan.enter("ids_of") is None
    assert plan.enter("ids_of") is None
    with pytest.raises(Exception, match="injected into ids_of"):
        plan.enter("ids_of")
    assert plan.enter("ids_of") is None
    assert plan.enter("delete_guarded") == FaultSpec("delete_guarded", after_call=True)
    assert plan.armed == []


# --- the stepping pruner process -------------------------------------------------------------


def test_a_pruner_process_stops_at_every_kind_of_yield_point_in_cycle_order(
    tmp_path: Path,
) -> None:
    rig = open_rig(tmp_path / "data", txs=30)
    process = PrunerProcess(CONFIG.settings(rig.data_dir), rig.clock, "a", Adapters())
    try:
        stops: list[tuple[str, str]] = []
        while (outcome := process.advance("next")) is None:
            assert process.paused_at is not None
            stops.append((process.paused_at.kind, process.paused_at.detail))
        assert outcome.error is None, outcome.describe()
    finally:
        process.close()
        rig.close()
    kinds = [k for k, _ in stops]
    assert stops[0] == ("phase_start", "PhaseStarted BuildReach")
    assert {"mark", "delete", "deleted"} <= set(kinds)
    assert [d for k, d in stops if k == "phase_end"] == [p.value for p in PrunePhase]
    deletes = [i for i, k in enumerate(kinds) if k == "delete"]
    assert all(kinds[i + 1] == "deleted" for i in deletes)


def test_a_crashed_pruner_process_leaves_its_cycle_to_the_next_process(tmp_path: Path) -> None:
    rig = open_rig(tmp_path / "data", txs=30)
    settings = CONFIG.settings(rig.data_dir)
    first = PrunerProcess(settings, rig.clock, "a", Adapters())
    assert first.advance("batch") is None
    first.crash()
    assert not first.alive
    rig.clock.advance(ms=CONFIG.lock_timeout_ms + 1)
    second = PrunerProcess(settings, rig.clock, "a2", Adapters())
    try:
        outcome = second.run_cycle()
        events = rig.events()
        assert check_invariants(rig.store, events, gone=set[str]().__contains__) == {}
    finally:
        second.close()
        rig.close()
    assert outcome.report is not None and outcome.report.cycle_no == 1, outcome.describe()
    assert [e.message for e in only(events, "PruneCycle.PhaseFailed")] == [
        "the pruner stopped in the middle of it"
    ]


# --- the documentation -----------------------------------------------------------------------


@functools.cache
def doc_namespace() -> dict[str, Any]:
    """Runs every ```python block of the doc, in order, in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    namespace: dict[str, Any] = {"__name__": "testing_your_phases"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    return namespace


def doc_tests() -> list[str]:
    names = re.findall(r"^def (test_\w+)\(", DOC.read_text(), flags=re.MULTILINE)
    assert names, f"{DOC} has no test functions"
    return names


@pytest.mark.parametrize("name", doc_tests())
def test_the_examples_in_testing_your_phases_run_as_written(name: str) -> None:
    test: Callable[[], None] = doc_namespace()[name]
    test()
