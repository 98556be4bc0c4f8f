"""A property-testing kit for prunelog: invariants, Hypothesis strategies and a stateful machine.

Three layers, each usable on its own (see docs/testing-your-phases.md):

1. **Invariants** as plain functions that return a list of violation strings (empty = holds),
   and `assert_invariants`, which raises an `InvariantViolation` subclass naming every
   violation. They read only the state store and the event log, never the pruner's memory:
   - `store_violations`: invariant I, every protected root is whole (re-hashed);
   - `legality_violations`: every aggregate replays through its event methods, so the phase
     table re-checks the order of every cycle;
   - `snapshot_use_violations`: each cycle attempt used one snapshot, its own;
   - `lock_violations`: one live lock holder at a time; a takeover only after a timeout or
     from a holder that really exited;
   - `audit_violations`: every hash an audit event names is gone from the store, or was
     written again after the deleting snapshot;
   - `unaudited_deletions`, `garbage_violations` and `projection_violations`.
2. **Strategies**: `writer_transactions` (updates, deletes, reverts that reuse hashes,
   objects sharing field trees), `faults` and `fault_schedules`, `granularities`.
3. **A stateful machine**, `PruningMachine`, that runs the real components on temp files: a
   writer on the SQLite state store, a pruner process in its own thread that stops at every
   yield point (a phase start, a marking batch, a delete batch, a phase end) so that writes,
   crashes, clock jumps, a second pruner and injected faults land between its steps. The
   invariants are checked after every step; at teardown the writer stops, two clean cycles
   run, and no garbage may remain. `pruning_machine(Adapters(...), MachineConfig(...))` builds
   a machine over your own NodeStorePort, ReachStorePort, manager or Pruner subclass.

Needs the `test` extra (Hypothesis).
"""

from __future__ import annotations

from infrastructure.testkit.adapters import Adapters, KnownLiveness, PrunerParts, open_pruner
from infrastructure.testkit.checks import (
    CHECK_ORDER,
    assert_invariants,
    audit_violations,
    check_invariants,
    garbage_violations,
    legality_violations,
    lock_violations,
    projection_violations,
    protected_since,
    snapshot_use_violations,
    store_violations,
    unaudited_deletions,
)
from infrastructure.testkit.fold import AUDIT_EVENTS, AuditRow, LockHolder, LogFold, SnapshotFacts
from infrastructure.testkit.machine import PruningMachine, pruning_machine
from infrastructure.testkit.machine_state import MachineConfig
from infrastructure.testkit.process import CycleOutcome, PrunerProcess, SimulatedCrash, YieldPoint
from infrastructure.testkit.stepping import FaultPlan, SteppingLog, SteppingNodeStore
from infrastructure.testkit.stepping import Pause as Pause
from infrastructure.testkit.stepping import injected_error as injected_error
from infrastructure.testkit.strategies import (
    FAULT_METHODS,
    GRANULARITIES,
    TEMPLATES,
    FaultSpec,
    WriterTx,
    fault_schedules,
    faults,
    granularities,
    writer_transactions,
)
from infrastructure.testkit.violations import (
    AuditViolation,
    ContentionViolation,
    InvariantViolation,
    LivenessViolation,
    LockViolation,
    LogOrderViolation,
    ProjectionViolation,
    SafetyViolation,
    SnapshotUseViolation,
)

__all__ = [
    "AUDIT_EVENTS",
    "CHECK_ORDER",
    "FAULT_METHODS",
    "GRANULARITIES",
    "TEMPLATES",
    "Adapters",
    "AuditRow",
    "AuditViolation",
    "ContentionViolation",
    "CycleOutcome",
    "FaultPlan",
    "FaultSpec",
    "InvariantViolation",
    "KnownLiveness",
    "LivenessViolation",
    "LockHolder",
    "LockViolation",
    "LogFold",
    "LogOrderViolation",
    "MachineConfig",
    "ProjectionViolation",
    "PrunerParts",
    "PrunerProcess",
    "PruningMachine",
    "SafetyViolation",
    "SimulatedCrash",
    "SnapshotFacts",
    "SnapshotUseViolation",
    "SteppingLog",
    "SteppingNodeStore",
    "WriterTx",
    "YieldPoint",
    "assert_invariants",
    "audit_violations",
    "check_invariants",
    "fault_schedules",
    "faults",
    "garbage_violations",
    "granularities",
    "legality_violations",
    "lock_violations",
    "open_pruner",
    "projection_violations",
    "protected_since",
    "pruning_machine",
    "snapshot_use_violations",
    "store_violations",
    "unaudited_deletions",
    "writer_transactions",
]
