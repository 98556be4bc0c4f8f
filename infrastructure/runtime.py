"""The composition root: wires the ports to their adapters for one data directory (and, if
configured, a shared PostgreSQL event log)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.config import PruneConfig, RecoveryConfig, SnapshotManagerConfig
from domain.manager import AtomicSnapshotManager
from domain.ports import Clock, Progress
from domain.pruning import Pruner
from domain.recovery import ErrorRecoveryManager
from infrastructure import faults
from infrastructure.chain import SqliteChainState
from infrastructure.clock import SystemClock
from infrastructure.eventlog import STATE_FILE, EventsourcingLog, ensure_data_dir
from infrastructure.hashing import integrity_hash
from infrastructure.liveness import ProcessLiveness, node_id
from infrastructure.sqlite_nodes import FileReachStore, SqliteNodeStore
from projections.models import ALL, HealthProjection
from projections.runner import ProjectionRunner

PROJECTIONS_FILE = "projections.sqlite"
EVENT_STORE_ENV = "PRUNELOG_EVENT_STORE"


@dataclass
class Settings:
    data_dir: Path
    group: str = "default"
    snapshot: SnapshotManagerConfig = field(default_factory=SnapshotManagerConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    # None/"sqlite": events.sqlite in data_dir; or a postgresql:// URL shared by many nodes.
    event_store: str | None = None

    def resolved_event_store(self) -> str | None:
        """PRUNELOG_EVENT_STORE, when set, wins over the config file."""
        return os.environ.get(EVENT_STORE_ENV) or self.event_store


class Runtime:
    """Everything a pruner process needs, opened once and closed together."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        owner: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self._projections: ProjectionRunner | None = None
        data_dir = ensure_data_dir(settings.data_dir)
        self.state_path = data_dir / STATE_FILE
        self.log = EventsourcingLog.open(data_dir, settings.resolved_event_store())
        self.chain = SqliteChainState(self.state_path)
        self.nodes = SqliteNodeStore(self.state_path)
        self.reach_store = FileReachStore(data_dir / "reach")
        self.manager = AtomicSnapshotManager(
            self.log,
            self.chain,
            clock or SystemClock(),
            integrity_hash,
            settings.snapshot,
            group=settings.group,
            owner=owner or node_id(),
            protection_orders=settings.prune.protection_orders,
            liveness=ProcessLiveness(),
        )
        self.manager.initialize()
        self.recovery = ErrorRecoveryManager(self.manager, settings.recovery, sleep=time.sleep)
        self.pruner = Pruner(
            self.manager,
            self.nodes,
            self.reach_store,
            settings.prune,
            progress=progress,
            recovery=self.recovery,
        )
        # Crash harness only (benchmarks/crash.py): a no-op unless PRUNELOG_FAULT_KILL_AT is set.
        faults.install_on_pruner(self.pruner)

    def projections(self) -> ProjectionRunner:
        """The read models beside the log; opened on demand and caught up by the caller."""
        if self._projections is None:
            self._projections = ProjectionRunner(
                self.settings.data_dir / PROJECTIONS_FILE,
                self.log,
                [cls() for cls in ALL if cls is not HealthProjection]
                + [HealthProjection(self.settings.recovery)],
            )
            # Crash harness only: a no-op unless PRUNELOG_FAULT_KILL_AT is set.
            faults.install_on_projections(self._projections)
        return self._projections

    def close(self) -> None:
        if self._projections is not None:
            self._projections.close()
        self.nodes.close()
        self.chain.close()
        self.log.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
