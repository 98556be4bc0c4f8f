"""Health, per phase and overall, as a fold over the event log; and the spec's four alerts.

Health returns to healthy only after `min_healthy_cycles` consecutive completed cycles."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from domain.config import RecoveryConfig
from domain.errors import PrunerStoppedError
from domain.phases import PrunePhase

# PhaseFailed.error_type of a phase stopped on request (not a failure of the pruner)
STOPPED_ON_REQUEST = PrunerStoppedError.__name__


class HealthStatus(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


@dataclass
class PhaseHealth:
    phase: str
    status: HealthStatus = HealthStatus.HEALTHY
    last_success: datetime | None = None
    consecutive_failures: int = 0
    last_error: str | None = None


@dataclass
class Alert:
    name: str
    active: bool
    message: str


@dataclass
class HealthReport:
    overall: HealthStatus
    phases: dict[str, PhaseHealth]
    alerts: list[Alert]
    successful_cycles_since_trouble: int
    last_event_at: datetime | None

    @property
    def active_alerts(self) -> list[Alert]:
        return [a for a in self.alerts if a.active]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["active_alerts"] = [a.name for a in self.active_alerts]
        return out


@dataclass
class HealthMonitor:
    """Feed it events in log order with `apply`; read `report()` at any point."""

    config: RecoveryConfig = field(default_factory=RecoveryConfig)
    snapshot_failure_threshold: int = 3  # alert on MORE than this many in a row
    lock_timeout_threshold: int = 3  # alert on this many lock expiries ...
    lock_timeout_window: timedelta = timedelta(hours=1)  # ... within this window

    def __post_init__(self) -> None:
        self.phases = {p.value: PhaseHealth(p.value) for p in PrunePhase}
        self.severity = HealthStatus.HEALTHY
        self.successes = 0
        self.snapshot_failures = 0
        self.lock_expiries: deque[datetime] = deque()
        self.validation_failure: str | None = None
        self.exhausted: str | None = None
        self.last_at: datetime | None = None

    def _trouble(self, severity: HealthStatus) -> None:
        self.successes = 0
        if severity == HealthStatus.UNHEALTHY or self.severity == HealthStatus.HEALTHY:
            self.severity = severity

    def apply(self, event: Any) -> None:
        name = type(event).__qualname__
        at = getattr(event, "at", None)
        if isinstance(at, datetime):
            self.last_at = at
        handler = getattr(self, "_on_" + name.replace(".", "_"), None)
        if handler is not None:
            handler(event)

    def apply_all(self, events: Iterable[Any]) -> HealthMonitor:
        for e in events:
            self.apply(e)
        return self

    # --- handlers, named after the event they fold -------------------------------------

    def _on_PruneCycle_PhaseCompleted(self, e: Any) -> None:
        ph = self.phases[e.phase]
        ph.consecutive_failures, ph.last_success, ph.status = 0, e.at, HealthStatus.HEALTHY

    def _on_PruneCycle_PhaseFailed(self, e: Any) -> None:
        if e.error_type == STOPPED_ON_REQUEST:
            return  # an operator's SIGINT/SIGTERM: the phase resumes next run, nothing failed
        ph = self.phases[e.phase]
        ph.consecutive_failures += 1
        ph.last_error = f"{e.error_type}: {e.message}"
        too_many = ph.consecutive_failures > self.config.max_phase_retries
        ph.status = HealthStatus.UNHEALTHY if too_many else HealthStatus.DEGRADED
        self._trouble(HealthStatus.DEGRADED)

    def _on_PruneCycle_RolledBack(self, e: Any) -> None:
        self._trouble(HealthStatus.DEGRADED)

    def _on_PruneCycle_RecoveryExhausted(self, e: Any) -> None:
        if e.phase in self.phases:
            self.phases[e.phase].status = HealthStatus.UNHEALTHY
        self.exhausted = e.reason
        self._trouble(HealthStatus.UNHEALTHY)

    def _on_PruneCycle_Completed(self, e: Any) -> None:
        self.successes += 1
        if self.successes >= self.config.min_healthy_cycles:
            self.severity = HealthStatus.HEALTHY
            self.validation_failure = None
            self.exhausted = None

    def _on_Snapshot_Created(self, e: Any) -> None:
        self.snapshot_failures = 0

    def _on_Snapshot_Invalidated(self, e: Any) -> None:
        self.validation_failure = e.reason
        self._trouble(HealthStatus.DEGRADED)

    def _on_Recovery_SnapshotCreationFailed(self, e: Any) -> None:
        self.snapshot_failures += 1
        self._trouble(HealthStatus.DEGRADED)

    def _on_Recovery_ValidationRecorded(self, e: Any) -> None:
        failed = [r for r in e.results if r.get("status") == "failed"]
        if failed:
            self.validation_failure = "; ".join(f"{r['check']}: {r['message']}" for r in failed)
            self._trouble(HealthStatus.DEGRADED)

    def _on_PhaseLock_Expired(self, e: Any) -> None:
        self.lock_expiries.append(e.at)
        self._trouble(HealthStatus.DEGRADED)

    # --- persistence of the fold (for the health projection) ---------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "phases": {k: asdict(v) for k, v in self.phases.items()},
            "severity": self.severity.value,
            "successes": self.successes,
            "snapshot_failures": self.snapshot_failures,
            "lock_expiries": list(self.lock_expiries),
            "validation_failure": self.validation_failure,
            "exhausted": self.exhausted,
            "last_at": self.last_at,
        }

    def load_state(self, state: dict[str, Any]) -> HealthMonitor:
        self.phases = {
            k: PhaseHealth(**(v | {"status": HealthStatus(v["status"])}))
            for k, v in state["phases"].items()
        }
        self.severity = HealthStatus(state["severity"])
        self.successes = state["successes"]
        self.snapshot_failures = state["snapshot_failures"]
        self.lock_expiries = deque(state["lock_expiries"])
        self.validation_failure = state["validation_failure"]
        self.exhausted = state["exhausted"]
        self.last_at = state["last_at"]
        return self

    # --- the report ------------------------------------------------------------------------

    def report(self) -> HealthReport:
        now = self.last_at
        while now and self.lock_expiries and now - self.lock_expiries[0] > self.lock_timeout_window:
            self.lock_expiries.popleft()
        snap_alert = self.snapshot_failures > self.snapshot_failure_threshold
        alerts = [
            Alert(
                "snapshot_creation_failures",
                snap_alert,
                f"{self.snapshot_failures} consecutive snapshot creation failures "
                f"(alert above {self.snapshot_failure_threshold})",
            ),
            Alert(
                "lock_timeouts",
                len(self.lock_expiries) >= self.lock_timeout_threshold,
                f"{len(self.lock_expiries)} lock timeouts within {self.lock_timeout_window}",
            ),
            Alert(
                "validation_failure",
                self.validation_failure is not None,
                self.validation_failure or "no validation failure",
            ),
            Alert("recovery_exhausted", self.exhausted is not None, self.exhausted or "none"),
        ]
        overall = HealthStatus.UNHEALTHY if snap_alert else self.severity
        return HealthReport(overall, dict(self.phases), alerts, self.successes, self.last_at)


def health_from(events: Iterable[Any], config: RecoveryConfig | None = None) -> HealthReport:
    return HealthMonitor(config or RecoveryConfig()).apply_all(events).report()
