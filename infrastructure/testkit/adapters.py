"""Building one pruner from replaceable parts (`Adapters`), so that the machine and the tests
can run the same checks over your own stores, manager or Pruner subclass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from domain.manager import AtomicSnapshotManager
from domain.phases import PrunePhase
from domain.ports import EventLog, HolderLiveness, NodeStorePort, ReachStorePort
from domain.pruning import Pruner
from domain.recovery import ErrorRecoveryManager
from infrastructure.clock import ManualClock
from infrastructure.hashing import integrity_hash
from infrastructure.runtime import Runtime, Settings
from infrastructure.sqlite_nodes import FileReachStore, SqliteNodeStore
from infrastructure.testkit.stepping import FaultPlan, Pause, SteppingLog, SteppingNodeStore


class KnownLiveness:
    """HolderLiveness for the machine: an owner is gone once the machine has killed it."""

    def __init__(self, gone: set[str]) -> None:
        self.gone = gone

    def is_gone(self, owner: str) -> bool:
        return owner in self.gone


@dataclass(frozen=True)
class Adapters:
    """How the kit builds a pruner. Replace any part with your own implementation:
    - `node_store(state_path)`: the NodeStorePort, over the state store file;
    - `reach_store(directory)`: the ReachStorePort, keeping reach sets in `directory`;
    - `manager`: an AtomicSnapshotManager (sub)class, same constructor;
    - `pruner`: a Pruner (sub)class, same constructor (override a phase body to test yours).
    """

    node_store: Callable[[Path], NodeStorePort] = SqliteNodeStore
    reach_store: Callable[[Path], ReachStorePort] = FileReachStore
    manager: type[AtomicSnapshotManager] = AtomicSnapshotManager
    pruner: type[Pruner] = Pruner


@dataclass
class PrunerParts:
    """One opened pruner: its Runtime (log, chain), manager, node store and Pruner."""

    runtime: Runtime
    manager: AtomicSnapshotManager
    inner_nodes: NodeStorePort
    stepping: SteppingNodeStore | None
    pruner: Pruner

    def close(self) -> None:
        close = getattr(self.inner_nodes, "close", None)
        if callable(close):
            close()
        self.runtime.close()


def open_pruner(
    settings: Settings,
    clock: ManualClock,
    owner: str,
    adapters: Adapters,
    liveness: HolderLiveness | None = None,
    pause: Pause | None = None,
    plan: FaultPlan | None = None,
) -> PrunerParts:
    """Opens the Runtime on `settings.data_dir` and builds a pruner from `adapters`. With
    `pause`, the node store and the log are wrapped to call it at every yield point, and the
    node store raises the faults `plan` arms."""
    rt = Runtime(settings, clock=clock, owner=owner)
    try:
        inner = adapters.node_store(rt.state_path)
        stepping = None if pause is None else SteppingNodeStore(inner, pause, plan)
        nodes: NodeStorePort = inner if stepping is None else stepping
        log: EventLog = rt.log if pause is None else SteppingLog(rt.log, pause)
        manager = adapters.manager(
            log,
            rt.chain,
            clock,
            integrity_hash,
            settings.snapshot,
            group=settings.group,
            owner=owner,
            protection_orders=settings.prune.protection_orders,
            liveness=liveness,
        )
        manager.initialize()
        recovery = ErrorRecoveryManager(manager, settings.recovery, sleep=lambda _s: None)

        def progress(phase: str, done: int, total: int | None) -> None:
            if pause is not None and phase == PrunePhase.BUILD_REACH.value:
                pause("mark", f"{done} marked")

        reach = adapters.reach_store(settings.data_dir / "reach")
        pruner = adapters.pruner(
            manager, nodes, reach, settings.prune, progress=progress, recovery=recovery
        )
    except BaseException:
        rt.close()
        raise
    return PrunerParts(rt, manager, inner, stepping, pruner)
