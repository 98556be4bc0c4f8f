"""SnapshotValidator and quick_health_check: the spec's validation suite, as data."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from domain.config import RecoveryConfig
from domain.errors import ReachSetCorruptError
from domain.health import HealthStatus, health_from
from domain.manager import AtomicSnapshotManager
from domain.ports import EventHistory, ReachStorePort
from domain.recovery import ErrorRecoveryManager
from domain.snapshot import Snapshot, snapshot_uuid
from domain.validation import ValidationResult


@dataclass(frozen=True)
class ValidationReport:
    results: list[ValidationResult]

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.results)

    def summary(self) -> str:
        n = {s: sum(r.status == s for r in self.results) for s in ("passed", "failed", "skipped")}
        verdict = "PASSED" if self.passed else "FAILED"
        return f"{verdict}: {n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped"

    def detailed_report(self) -> str:
        return "\n".join([self.summary(), *(str(r) for r in self.results)])

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"check": r.check, "status": r.status, "message": r.message} for r in self.results]


class SnapshotValidator:
    def __init__(
        self,
        manager: AtomicSnapshotManager,
        recovery: ErrorRecoveryManager | None = None,
        *,
        history: EventHistory,
        reach_store: ReachStorePort | None = None,
    ) -> None:
        self.manager = manager
        self.recovery = recovery
        self.history = history
        self.reach_store = reach_store

    def run_comprehensive_validation(self, *, record: bool = True) -> ValidationReport:
        """Runs every check; with `record`, appends the results as Recovery.ValidationRecorded."""
        events = list(self.history.events())
        snapshot = self._current()
        checks: list[tuple[str, Callable[[], ValidationResult]]] = [
            ("internal_consistency", lambda: self._internal(snapshot)),
            ("cross_phase_consistency", lambda: _cross_phase(events)),
            ("chain_state", lambda: self._chain(snapshot)),
            ("age", lambda: self._age(snapshot)),
            ("lock_integrity", lambda: self._locks(events)),
            ("log_legality", lambda: _legality(events)),
            ("reach_set_integrity", lambda: self._reach(snapshot)),
        ]
        results = []
        for name, check in checks:
            try:
                results.append(check())
            except Exception as exc:
                results.append(ValidationResult.Failed(name, f"{type(exc).__name__}: {exc}"))
        report = ValidationReport(results)
        if record and self.recovery is not None:
            ledger = self.recovery.ledger()
            ledger.record_validation(report.as_dicts(), self.manager.clock.now())
            self.manager.log.save(ledger)
        return report

    def _current(self) -> Snapshot | None:
        lock = self.manager.lock_info()
        if lock.current_snapshot_id is None:
            return None
        sid = snapshot_uuid(self.manager.group, lock.current_snapshot_id)
        return self.manager.log.get(sid, Snapshot)

    def _internal(self, s: Snapshot | None) -> ValidationResult:
        name = "internal_consistency"
        if s is None:
            return ValidationResult.Skipped(name, "no snapshot yet")
        if s.integrity_ok(self.manager.hasher):
            return ValidationResult.Passed(name, f"snapshot {s.snapshot_id}: hash recomputes")
        return ValidationResult.Failed(name, f"snapshot {s.snapshot_id}: integrity hash mismatch")

    def _chain(self, s: Snapshot | None) -> ValidationResult:
        if s is None:
            return ValidationResult.Skipped("chain_state", "no snapshot yet")
        return ValidationResult.Passed("chain_state", self.manager._ensure_on_chain(s))

    def _age(self, s: Snapshot | None) -> ValidationResult:
        name = "age"
        if s is None:
            return ValidationResult.Skipped(name, "no snapshot yet")
        if not self.manager.lock_info().is_held:
            return ValidationResult.Skipped(name, f"snapshot {s.snapshot_id} is not in use")
        age, limit = s.age_ms(self.manager.clock.now()), self.manager.config.max_snapshot_age_ms
        if age > limit:
            return ValidationResult.Failed(name, f"{age:.0f} ms old > max_snapshot_age_ms {limit}")
        return ValidationResult.Passed(name, f"{age:.0f} ms old (max {limit})")

    def _locks(self, events: list[Any]) -> ValidationResult:
        name = "lock_integrity"
        lock = self.manager.lock_info()
        if lock.is_expired(self.manager.clock.now()):
            return ValidationResult.Failed(name, f"held past its timeout: {lock.describe_holder()}")
        holder: dict[UUID, str | None] = defaultdict(lambda: None)
        for e in events:
            kind = type(e).__qualname__
            if kind == "PhaseLock.Locked":
                if holder[e.originator_id] not in (None, e.owner):
                    return ValidationResult.Failed(
                        name, f"two holders: {holder[e.originator_id]} and {e.owner}"
                    )
                holder[e.originator_id] = e.owner
            elif kind in ("PhaseLock.Released", "PhaseLock.Expired"):
                holder[e.originator_id] = None
        return ValidationResult.Passed(name, f"one holder at a time; now {lock.describe_holder()}")

    def _reach(self, s: Snapshot | None) -> ValidationResult:
        name = "reach_set_integrity"
        if s is None or s.reach_digest is None or self.reach_store is None:
            return ValidationResult.Skipped(name, "no persisted reach set for the current snapshot")
        try:
            reach = self.reach_store.load(s.snapshot_id, s.reach_digest)
        except ReachSetCorruptError as exc:
            return ValidationResult.Failed(name, str(exc))
        return ValidationResult.Passed(name, f"{len(reach):,} nodes, digest matches")


_USES_SNAPSHOT = ("PruneCycle.PhaseStarted", "PruneCycle.PhaseResumed", "PruneCycle.NodesSwept")


def _cross_phase(events: list[Any]) -> ValidationResult:
    """Every phase of a cycle ran on the cycle's snapshot (a rollback names the new one)."""
    name = "cross_phase_consistency"
    current: dict[UUID, int] = {}
    for e in events:
        kind = type(e).__qualname__
        if kind == "PruneCycle.Created":
            current[e.originator_id] = e.snapshot_id
        elif kind == "PruneCycle.RolledBack":
            current[e.originator_id] = e.new_snapshot_id
        elif kind in _USES_SNAPSHOT and e.snapshot_id != current.get(e.originator_id):
            had = current.get(e.originator_id)
            return ValidationResult.Failed(
                name, f"{kind} used snapshot {e.snapshot_id}, cycle had {had}"
            )
    return ValidationResult.Passed(name, f"{len(current)} cycle(s), one snapshot per attempt")


def _legality(events: list[Any]) -> ValidationResult:
    """Replays every aggregate through its event methods, so the phase table re-checks order."""
    aggregates: dict[UUID, Any] = {}
    for e in events:
        try:
            aggregates[e.originator_id] = e.mutate(aggregates.get(e.originator_id))
        except Exception as exc:
            return ValidationResult.Failed(
                "log_legality",
                f"{type(e).__qualname__} v{e.originator_version} of {e.originator_id}: {exc}",
            )
    return ValidationResult.Passed("log_legality", f"{len(events):,} events replay legally")


def quick_health_check(
    history: EventHistory, config: RecoveryConfig | None = None
) -> ValidationResult:
    """Passed when healthy, Failed with the reasons otherwise, Skipped on an empty log."""
    events = list(history.events())
    if not events:
        return ValidationResult.Skipped("health", "the event log is empty")
    report = health_from(events, config)
    if report.overall == HealthStatus.HEALTHY:
        return ValidationResult.Passed("health", "system healthy")
    reasons = ", ".join(a.name for a in report.active_alerts) or "recent failures"
    return ValidationResult.Failed("health", f"{report.overall}: {reasons}")
