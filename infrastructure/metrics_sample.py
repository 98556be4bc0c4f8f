"""Prints /metrics after one real cycle on a small temporary store (for `promtool check
metrics` in CI): every metric family then has samples."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prometheus_client import generate_latest

from domain.config import PruneConfig
from infrastructure.metrics import MetricsFeeder, PrunerMetrics
from infrastructure.runtime import Runtime, Settings
from infrastructure.state_store import SqliteStateStore
from infrastructure.workload import WorkloadWriter


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        with SqliteStateStore.open(data / "state.sqlite") as store:
            WorkloadWriter(store, seed=1).run(120)
        with Runtime(Settings(data_dir=data, prune=PruneConfig(protection_orders=20))) as rt:
            metrics = PrunerMetrics()
            metrics.instrument(rt.manager)
            rt.pruner.run_cycle()
            MetricsFeeder(metrics, rt.settings.recovery).feed(rt.log.read)
            print(generate_latest(metrics.registry).decode(), end="")


if __name__ == "__main__":
    main()
