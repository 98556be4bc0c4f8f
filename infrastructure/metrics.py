"""Prometheus metrics. Rooch's names are kept where they exist (counters gain the `_total`
suffix that the exposition format requires). Most values are folded from the event log, so
they agree with the audit; timings are measured around the manager's calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from domain.config import RecoveryConfig
from domain.health import STOPPED_ON_REQUEST, HealthMonitor, HealthStatus
from domain.manager import AtomicSnapshotManager
from domain.phases import PrunePhase

F = TypeVar("F", bound=Callable[..., Any])

PHASE_CODE = {"Idle": 0, **{p.value: i for i, p in enumerate(PrunePhase, start=1)}}
HEALTH_CODE = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.UNHEALTHY: 2}
_FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class PrunerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.reachable = Gauge(
            "pruner_reachable_nodes_scanned", "Nodes marked by the last BuildReach", registry=r
        )
        self.deleted = Counter(
            "pruner_sweep_nodes_deleted", "Nodes deleted by sweeps", ["phase"], registry=r
        )
        self.phase = Gauge(
            "pruner_current_phase",
            "0 idle, 1 BuildReach, 2 SweepExpired, 3 IncrementalSweep",
            registry=r,
        )
        self.speed = Gauge(
            "pruner_processing_speed_nodes_per_sec",
            "Nodes per second in the last run of each phase",
            ["phase"],
            registry=r,
        )
        self.errors = Counter(
            "pruner_error_count", "Phase failures", ["phase", "error_type"], registry=r
        )
        self.reclaimed = Counter(
            "pruner_disk_space_reclaimed_bytes",
            "Bytes of node rows deleted (hash plus data, as stored)",
            registry=r,
        )
        self.snapshot_seconds = Histogram(
            "pruner_snapshot_creation_seconds", "Snapshot creation time", buckets=_FAST, registry=r
        )
        self.lock_seconds = Histogram(
            "pruner_lock_acquisition_seconds", "Lock acquisition time", buckets=_FAST, registry=r
        )
        self.validation_seconds = Histogram(
            "pruner_validation_seconds", "Snapshot validation time", buckets=_FAST, registry=r
        )
        self.recovery_attempts = Counter(
            "pruner_recovery_attempts", "Retries and rollbacks", ["kind"], registry=r
        )
        self.health = Gauge(
            "pruner_health_status", "0 healthy, 1 degraded, 2 unhealthy", registry=r
        )
        self.lock_timeouts = Counter(
            "pruner_lock_timeouts", "Locks taken over or expired", registry=r
        )
        self.snapshot_failures = Gauge(
            "pruner_snapshot_creation_consecutive_failures",
            "Snapshot creation failures since the last success",
            registry=r,
        )
        self.validation_failures = Counter(
            "pruner_validation_failures", "Failed validations and invalidated snapshots", registry=r
        )
        self.exhausted = Counter(
            "pruner_recovery_exhausted", "Cycles that stopped in Failed", registry=r
        )

    # --- fold events ---------------------------------------------------------------------

    def observe(self, event: Any) -> None:
        kind = type(event).__qualname__
        if kind == "Snapshot.ReachBuilt":
            self.reachable.set(event.node_count)
        elif kind in ("PruneCycle.NodesSwept", "PruneCycle.BatchRecovered"):
            self.deleted.labels(event.phase).inc(event.count)
            self.reclaimed.inc(event.bytes_freed)
        elif kind in ("PruneCycle.PhaseStarted", "PruneCycle.PhaseResumed"):
            self.phase.set(PHASE_CODE[event.phase])
        elif kind == "PruneCycle.PhaseCompleted":
            seconds = float(event.stats.get("seconds") or 0)
            work = int(event.stats.get("visited") or 0) + int(event.stats.get("deleted") or 0)
            if seconds > 0:
                self.speed.labels(event.phase).set(work / seconds)
        elif kind in ("PruneCycle.Completed", "PruneCycle.RecoveryExhausted"):
            self.phase.set(0)
            if kind == "PruneCycle.RecoveryExhausted":
                self.exhausted.inc()
        elif kind == "PruneCycle.PhaseFailed":
            if event.error_type != STOPPED_ON_REQUEST:
                self.errors.labels(event.phase, event.error_type).inc()
        elif kind == "PruneCycle.RetryScheduled":
            self.recovery_attempts.labels("retry").inc()
        elif kind == "PruneCycle.RolledBack":
            self.recovery_attempts.labels("rollback").inc()
        elif kind == "PhaseLock.Expired":
            self.lock_timeouts.inc()
        elif kind == "Snapshot.Invalidated" or (
            kind == "Recovery.ValidationRecorded"
            and any(r.get("status") == "failed" for r in event.results)
        ):
            self.validation_failures.inc()

    def set_health(self, monitor: HealthMonitor) -> None:
        self.snapshot_failures.set(monitor.snapshot_failures)
        self.health.set(HEALTH_CODE[monitor.report().overall])

    # --- timings -------------------------------------------------------------------------

    def instrument(self, manager: AtomicSnapshotManager) -> None:
        """Times snapshot creation, lock acquisition and validation on this manager."""
        manager.create_snapshot = _timed(manager.create_snapshot, self.snapshot_seconds)  # type: ignore[method-assign]
        manager.lock_snapshot = _timed(manager.lock_snapshot, self.lock_seconds)  # type: ignore[method-assign]
        manager._checks = _timed(manager._checks, self.validation_seconds)  # type: ignore[method-assign]

    def serve(self, port: int) -> None:
        """/metrics on 127.0.0.1 only: metrics are for a local scraper or an SSH tunnel."""
        start_http_server(port, addr="127.0.0.1", registry=self.registry)


class MetricsFeeder:
    """Keeps metrics and health in step with the log, from a remembered position."""

    def __init__(self, metrics: PrunerMetrics, config: RecoveryConfig) -> None:
        self.metrics = metrics
        self.monitor = HealthMonitor(config)
        self.position = 0

    def feed(self, read: Callable[[int, int], list[tuple[int, Any]]]) -> int:
        applied = 0
        while page := read(self.position + 1, 1000):
            for pos, event in page:
                self.metrics.observe(event)
                self.monitor.apply(event)
                self.position = pos
                applied += 1
        self.metrics.set_health(self.monitor)
        return applied


def _timed(fn: F, histogram: Histogram) -> F:
    @wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            histogram.observe(time.perf_counter() - started)

    return timed  # type: ignore[return-value]
