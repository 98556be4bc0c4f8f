"""The whole pruner under Hypothesis: the kit's PruningMachine (infrastructure/testkit.py) drives
the real SQLite state store, the event log, the projections and a pruner process that stops at
every phase start, marking batch, delete batch and phase end, so that writer transactions
(updates, reverts that reuse hashes, objects sharing field trees), crashes, clock jumps past
the lock timeout or the snapshot age, a second pruner and injected faults land between any two
of its steps. Every invariant is checked after every step; at the end the writer stops, two
clean cycles run and no garbage may remain.

The profile comes from tests/conftest.py: `ci` by default (derandomized; here also without
shrinking, which costs minutes on SQLite files, so a failure prints the program as found),
`HYPOTHESIS_PROFILE=soak` for thousands of random, longer, shrunk programs.

The tests at the end are counterexamples the machine found, written out step by step with the
same machine: regressions for the bugs fixed since, and one that fails until its bug is fixed,
each quickly and by name."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from infrastructure.testkit import (
    FaultSpec,
    MachineConfig,
    PruningMachine,
    pruning_machine,
    unaudited_deletions,
)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")


def machine_settings(**changes: Any) -> settings:
    """The loaded profile; under `ci` without the shrink phase."""
    if PROFILE == "ci":
        changes.setdefault("phases", (Phase.explicit, Phase.reuse, Phase.generate))
    return settings(settings.default, **changes)


# --- the properties --------------------------------------------------------------------------

# Writer, pruner steps, crashes (mid-phase too) and clock jumps: the safety argument's ground.
RacingMachine = pruning_machine(
    config=MachineConfig(contention=False, faults=False), name="RacingMachine"
)
# Everything: also a second pruner contending for the lock, failing operations (before a call,
# or after it, e.g. a delete that committed and then lost its reply) and rotten reach sets.
EverythingMachine = pruning_machine(name="EverythingMachine")


def test_every_invariant_holds_while_the_writer_races_a_crashing_pruner() -> None:
    run_state_machine_as_test(RacingMachine, settings=machine_settings())


def test_every_invariant_holds_with_faults_and_a_second_pruner_as_well() -> None:
    run_state_machine_as_test(EverythingMachine, settings=machine_settings())


# --- programs, step by step ------------------------------------------------------------------


@contextmanager
def machine(config: MachineConfig | None = None) -> Iterator[PruningMachine]:
    """A machine to drive by hand; its teardown (clean cycles, garbage and audit checks) runs
    when the block ends without an error."""
    m = pruning_machine(config=config)()
    try:
        yield m
    except BaseException:
        m.close()
        raise
    m.teardown()


def test_a_crash_between_a_delete_and_its_event_loses_nothing_from_the_audit() -> None:
    with machine() as m:
        m.start_the_chain(seed=5, txs=12)
        m.invariants_hold()
        m.pruner_steps("batch")  # paused before the first delete batch
        m.pruner_steps("next")  # ...and right after it committed, before NodesSwept
        assert m.process is not None and m.process.paused_at is not None
        assert m.process.paused_at.kind == "deleted"
        m.pruner_crashes()
        m.invariants_hold()
        m.pruner_runs("cycle")  # a new process reconciles the journal, then resumes
        m.invariants_hold()
        assert unaudited_deletions(m.fold, m.ever_stored, m.store) == []


def test_a_writer_reverting_keys_between_two_delete_batches_loses_no_node() -> None:
    with machine() as m:
        m.start_the_chain(seed=7, txs=20)
        m.pruner_steps("batch")
        m.writer_reverts_to_an_earlier_state(back=3)
        m.writer_runs_the_workload(txs=3)
        m.invariants_hold()
        m.pruner_steps("batch")
        m.writer_reverts_to_an_earlier_state(back=1)
        m.invariants_hold()
        m.pruner_runs("cycle")
        m.invariants_hold()


def test_a_pruner_resumes_a_cycle_whose_snapshot_aged_out_during_a_crash() -> None:
    with machine() as m:
        m.start_the_chain(seed=3, txs=15)
        m.pruner_runs("phase_end")  # BuildReach done
        m.pruner_crashes()
        m.clock_moves("past max snapshot age")
        m.writer_runs_the_workload(txs=2)
        m.pruner_runs("cycle")  # the sweep refuses the old snapshot: rollback, fresh one
        m.invariants_hold()
        assert any("done" in o for o in m.outcomes), m.outcomes


# --- what the machine found ------------------------------------------------------------------
# Each is a counterexample of the machine (shrunk where it could be), written out. The lost-reply
# programs failed before commit d49d8d4 (journal reconciled before every batch, BatchRecovered)
# and the first contention program before fd3a875 (_interrupted checks the lock); they stay as
# regressions. The last contention program fails until the bug it names is fixed.


def test_a_delete_whose_reply_was_lost_still_reaches_the_audit() -> None:
    """A delete batch commits (nodes and journal row) and its reply is lost (an
    sqlite3.OperationalError after COMMIT). Before d49d8d4 the phase retry gave the next batch
    the same batch_no (counted from the LOGGED batches); deleting nothing, it ran
    `mark_journal_logged` on that key and dropped the orphaned journal row, so those nodes
    were in no audit event."""
    with machine(MachineConfig(contention=False)) as m:
        m.start_the_chain(seed=5, txs=6)
        m.an_operation_fails(FaultSpec("delete_guarded", after_call=True))
        m.pruner_runs("cycle")
        m.invariants_hold()
        m.pruner_runs("cycle")
        assert unaudited_deletions(m.fold, m.ever_stored, m.store) == []


def test_a_delete_whose_reply_was_lost_does_not_wedge_the_pruner() -> None:
    """The same lost reply, when the retried phase deletes again: before d49d8d4 the new
    journal row hit the UNIQUE batch_key, retries and rollbacks ran out, the cycle stopped in
    Failed, and every later run_cycle raised IllegalPhaseOrderError from `reconcile_journal`
    (no batch could be recorded into a finished cycle): the group never pruned again."""
    with machine(MachineConfig(contention=False, initial_txs=(30, 30), workload_keys=16)) as m:
        m.start_the_chain(seed=5, txs=0)
        m.an_operation_fails(FaultSpec("delete_guarded", after_call=True))
        m.pruner_runs("cycle")
        m.invariants_hold()
        for _ in range(3):
            m.pruner_runs("cycle")
        assert m.outcomes[-1].startswith("cycle "), m.outcomes


def test_a_second_pruner_refused_the_lock_appends_nothing_to_the_running_cycle() -> None:
    """While pruner-a runs a cycle and holds an unexpired lock, pruner-b's run_cycle must fail
    with LockContendedError and append nothing. Before fd3a875, `Pruner._interrupted` recorded
    pruner-a's live phase as failed ("Interrupted"), `lock_snapshot` then refused pruner-b, and
    `_give_up` finished pruner-a's cycle (RecoveryExhausted), all without holding the lock."""
    with machine(MachineConfig(faults=False)) as m:
        m.start_the_chain(seed=0, txs=0)
        m.pruner_runs("phase_end")  # pruner-a: BuildReach done, holds the lock
        m.second_pruner_tries_the_lock()
        m.pruner_runs("cycle")
        m.invariants_hold()


def test_a_second_pruner_refused_the_lock_leaves_the_holders_unlogged_batch_alone() -> None:
    """FAILS until fixed. pruner-a stops right after a delete batch committed, before its
    NodesSwept event. pruner-b's run_cycle starts with `reconcile_journal()`, before the lock
    check that `_interrupted` now makes, so it logs pruner-a's in-flight batch into pruner-a's
    cycle and only then is refused. pruner-a's own append of that batch then conflicts
    (ConcurrencyConflictError): its phase fails, its snapshot is invalidated and its cycle
    rolled back, all caused by a pruner that never held the lock."""
    with machine(MachineConfig(faults=False)) as m:
        m.start_the_chain(seed=5, txs=12)
        m.pruner_steps("batch")
        m.pruner_steps("next")
        assert m.process is not None and m.process.paused_at is not None
        assert m.process.paused_at.kind == "deleted"
        m.second_pruner_tries_the_lock()
        m.pruner_runs("cycle")
        m.invariants_hold()
        assert m.outcomes[-1] == "cycle 1 done on snapshot 1", m.outcomes
