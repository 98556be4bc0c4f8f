"""The stateful machine's configuration, and its state and bookkeeping as a mixin: kept apart
from the rules (machine.py) so that each module stays small and the rules read on their own."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from domain.config import PruneConfig, RecoveryConfig, SnapshotManagerConfig
from infrastructure.clock import ManualClock
from infrastructure.eventlog import STATE_FILE
from infrastructure.runtime import Runtime, Settings
from infrastructure.state_store import SqliteStateStore
from infrastructure.testkit.adapters import Adapters, KnownLiveness
from infrastructure.testkit.fold import LogFold
from infrastructure.testkit.process import CycleOutcome, PrunerProcess
from infrastructure.testkit.stepping import FaultPlan
from infrastructure.testkit.strategies import WriterTx
from infrastructure.workload import WorkloadWriter


@dataclass(frozen=True)
class MachineConfig:
    """Knobs of PruningMachine. The feature flags switch rule families on and off."""

    protection_orders: int = 3
    delete_batch_size: int = 6
    batches_per_commit: int = 2  # so a transaction often carries several audit batches
    lock_timeout_ms: int = 60_000
    max_snapshot_age_ms: int = 300_000
    workload_keys: int = 32
    workload_ops: int = 3
    initial_txs: tuple[int, int] = (0, 20)  # the chain before the first step: min, max txs
    crashes: bool = True
    contention: bool = True
    clock: bool = True
    faults: bool = True
    check_projections: bool = True
    check_garbage: bool = True
    final_cycles: int = 2
    final_attempts: int = 6
    timeout_s: float = 120.0
    group: str = "default"

    def settings(self, data_dir: Path) -> Settings:
        return Settings(
            data_dir,
            group=self.group,
            snapshot=SnapshotManagerConfig(
                lock_timeout_ms=self.lock_timeout_ms, max_snapshot_age_ms=self.max_snapshot_age_ms
            ),
            recovery=RecoveryConfig(base_retry_delay_ms=1, max_retry_delay_ms=1),
            prune=PruneConfig(
                protection_orders=self.protection_orders,
                delete_batch_size=self.delete_batch_size,
                batches_per_commit=self.batches_per_commit,
            ),
        )


class MachineState:
    """PruningMachine's temp files, components and bookkeeping, and the helpers its rules share.
    A mixin placed before RuleBasedStateMachine, whose `__init__` it calls first."""

    # Set by the machine class (PruningMachine or a subclass); read here to build the parts.
    adapters: ClassVar[Adapters]
    config: ClassVar[MachineConfig]

    def __init__(self) -> None:
        super().__init__()
        cfg = self.config
        self.tmp = Path(tempfile.mkdtemp(prefix="prunelog-machine-"))
        self.data_dir = self.tmp / "data"
        self.data_dir.mkdir()
        self.settings = cfg.settings(self.data_dir)
        self.clock = ManualClock()
        self.gone: set[str] = set()
        self.liveness = KnownLiveness(self.gone)
        self.plan = FaultPlan()
        self.store = SqliteStateStore.open(self.data_dir / STATE_FILE)
        WriterTx({b"genesis": b"g"}, {}).commit(self.store)
        self.observer = Runtime(self.settings, clock=self.clock, owner="observer")
        self.runner = self.observer.projections() if cfg.check_projections else None
        self.fold = LogFold(self.gone.__contains__)
        self.position = 0
        self.ever_stored: set[bytes] = set()
        self.seen_order = -1
        self._note_writes()
        self.workload: WorkloadWriter | None = None
        self.history: list[dict[bytes, bytes | None]] = [{}]  # the WriterTx keys, per tx
        self.incarnation = 0
        self.contenders = 0
        self.process: PrunerProcess | None = None
        self.outcomes: list[str] = []
        self.stats: dict[str, int] = {}

    # --- helpers ---------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _pruner(self) -> PrunerProcess:
        if self.process is None or not self.process.alive:
            self.incarnation += 1
            self.process = PrunerProcess(
                self.settings,
                self.clock,
                f"pruner-a.{self.incarnation}",
                self.adapters,
                self.liveness,
                plan=self.plan,
                timeout_s=self.config.timeout_s,
            )
        return self.process

    def _note_writes(self) -> None:
        rows = self.store.connection.execute(
            "SELECT hash FROM nodes WHERE written_order > ?", (self.seen_order,)
        )
        self.ever_stored.update(bytes(r[0]) for r in rows)
        latest = self.store.latest()
        self.seen_order = -1 if latest is None else latest.tx_order

    def _sync_log(self) -> list[Any]:
        new: list[Any] = []
        while True:
            page = self.observer.log.read(self.position + 1, 1000)
            if not page:
                break
            self.position = page[-1][0]
            new.extend(e for _, e in page)
        self.fold.feed(new)
        return new

    def _record(self, outcome: CycleOutcome | None) -> None:
        if outcome is not None:
            self._count("cycles ok" if outcome.error is None else "cycles failed")
            self.outcomes.append(outcome.describe())

    def close(self) -> None:
        if self.process is not None:
            self.process.crash()
        with contextlib.suppress(Exception):
            self.observer.close()
        with contextlib.suppress(Exception):
            self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
