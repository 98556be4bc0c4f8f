"""Error recovery: retries with exponential backoff (tenacity), snapshot recovery and phase
rollback. Every attempt, failure, retry and recovery step is an event."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from domain.config import RecoveryConfig
from domain.cycle import PruneCycle, cycle_uuid
from domain.errors import (
    AggregateNotFoundError,
    IllegalPhaseOrderError,
    LockError,
    NoSnapshotError,
    PrunelogError,
    TransientError,
)
from domain.manager import AtomicSnapshotManager
from domain.phases import PrunePhase
from domain.snapshot import NAMESPACE, AtomicSnapshot

T = TypeVar("T")


class Recovery(Aggregate):
    """The group's recovery ledger: one per pruner group."""

    @staticmethod
    def create_id(group: str) -> UUID:
        return recovery_uuid(group)

    @event("Created")
    def __init__(self, group: str) -> None:
        self.group = group
        self.active_cycle: int | None = None
        self.consecutive_snapshot_failures = 0

    def start(self, cycle_no: int, phase: str, error_type: str, reason: str, at: datetime) -> None:
        self._started(cycle_no=cycle_no, phase=phase, error_type=error_type, reason=reason, at=at)

    @event("Started")
    def _started(
        self, cycle_no: int, phase: str, error_type: str, reason: str, at: datetime
    ) -> None:
        self.active_cycle = cycle_no

    def snapshot_recreated(self, cycle_no: int, old: int, new: int, at: datetime) -> None:
        self._snapshot_recreated(cycle_no=cycle_no, old_snapshot_id=old, new_snapshot_id=new, at=at)

    @event("SnapshotRecreated")
    def _snapshot_recreated(
        self, cycle_no: int, old_snapshot_id: int, new_snapshot_id: int, at: datetime
    ) -> None:
        pass

    def succeed(self, cycle_no: int, at: datetime) -> None:
        if self.active_cycle == cycle_no:
            self._succeeded(cycle_no=cycle_no, at=at)

    @event("Succeeded")
    def _succeeded(self, cycle_no: int, at: datetime) -> None:
        self.active_cycle = None

    def exhaust(self, cycle_no: int, phase: str, reason: str, at: datetime) -> None:
        self._exhausted(cycle_no=cycle_no, phase=phase, reason=reason, at=at)

    @event("Exhausted")
    def _exhausted(self, cycle_no: int, phase: str, reason: str, at: datetime) -> None:
        self.active_cycle = None

    def snapshot_creation_failed(self, error_type: str, message: str, at: datetime) -> None:
        self._snapshot_creation_failed(error_type=error_type, message=message, at=at)

    @event("SnapshotCreationFailed")
    def _snapshot_creation_failed(self, error_type: str, message: str, at: datetime) -> None:
        self.consecutive_snapshot_failures += 1

    def record_validation(self, results: list[dict[str, str]], at: datetime) -> None:
        self._validation_recorded(results=results, at=at)

    @event("ValidationRecorded")
    def _validation_recorded(self, results: list[dict[str, str]], at: datetime) -> None:
        pass


def recovery_uuid(group: str) -> UUID:
    return uuid5(NAMESPACE, f"prunelog/recovery/{group}")


def is_transient(exc: BaseException) -> bool:
    """Our own errors are deterministic (a snapshot, lock or invariant problem) unless marked
    TransientError; anything else (I/O, a busy database) is worth another try."""
    if isinstance(exc, TransientError):
        return True
    return isinstance(exc, Exception) and not isinstance(exc, PrunelogError)


class ErrorRecoveryManager:
    def __init__(
        self,
        manager: AtomicSnapshotManager,
        config: RecoveryConfig | None = None,
        *,
        sleep: Callable[[float], None],
        async_sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.manager = manager
        self.log = manager.log
        self.config = config or RecoveryConfig()
        self.sleep = sleep
        self.async_sleep = async_sleep

    # --- the ledger ----------------------------------------------------------------------

    def ledger(self) -> Recovery:
        try:
            return self.log.get(recovery_uuid(self.manager.group), Recovery)
        except AggregateNotFoundError:
            return Recovery(group=self.manager.group)

    def _now(self) -> datetime:
        return self.manager.clock.now()

    # --- retries -------------------------------------------------------------------------

    def _policy(self) -> dict[str, Any]:
        c = self.config
        return {
            "stop": stop_after_attempt(c.max_phase_retries + 1),
            "wait": wait_exponential(
                multiplier=c.base_retry_delay_ms / 1000,
                exp_base=c.backoff_multiplier,
                max=c.max_retry_delay_ms / 1000,
            ),
            "retry": retry_if_exception(is_transient),
            "reraise": True,
        }

    def _cycle(self, snap: AtomicSnapshot | None) -> PruneCycle:
        """The cycle of `snap` (the phase's own snapshot); else the current snapshot's."""
        snap = snap or self.manager.current_snapshot
        if snap is None:
            raise IllegalPhaseOrderError("no current snapshot, so no cycle to recover")
        return self.log.get(cycle_uuid(snap.group, snap.cycle_no), PruneCycle)

    def _record_failure(
        self, phase: PrunePhase, exc: BaseException, snap: AtomicSnapshot | None
    ) -> None:
        if self.manager.held_by_live_other() is not None:
            return  # taken over while it ran: the cycle is the new holder's to record
        cycle = self._cycle(snap)
        if cycle.state == phase.value:
            cycle.fail_phase(phase, type(exc).__name__, str(exc)[:2000], self._now())
            self.log.save(cycle)

    def _scheduler(self, snap: AtomicSnapshot | None) -> Callable[[RetryCallState], None]:
        def schedule(state: RetryCallState) -> None:
            delay = state.next_action.sleep if state.next_action else 0.0
            cycle = self._cycle(snap)
            cycle.schedule_retry(state.attempt_number + 1, round(delay * 1000), self._now())
            self.log.save(cycle)

        return schedule

    def _resume(self, phase: PrunePhase, snap: AtomicSnapshot | None) -> None:
        cycle = self._cycle(snap)
        cycle.resume_phase(phase, cycle.snapshot_id, self._now())
        self.log.save(cycle)

    def run_phase_with_recovery(
        self,
        phase: PrunePhase | str,
        operation: Callable[[], T],
        *,
        snapshot: AtomicSnapshot | None = None,
    ) -> T:
        """Runs `operation` inside a started phase; transient failures are retried with
        backoff, each failure/retry/resume recorded on the cycle (of `snapshot`, else of the
        current snapshot). Re-raises the last error."""
        phase = PrunePhase.parse(phase)
        policy = self._policy()
        retrying = Retrying(sleep=self.sleep, before_sleep=self._scheduler(snapshot), **policy)
        for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self._resume(phase, snapshot)
                try:
                    result = operation()
                except Exception as exc:
                    self._record_failure(phase, exc, snapshot)
                    raise
        return result

    async def execute_phase_with_recovery(
        self,
        phase: PrunePhase | str,
        operation: Callable[[], Awaitable[T]],
        *,
        snapshot: AtomicSnapshot | None = None,
    ) -> T:
        """The spec's async form of run_phase_with_recovery."""
        import asyncio

        phase = PrunePhase.parse(phase)
        retrying = AsyncRetrying(
            sleep=self.async_sleep or asyncio.sleep,
            before_sleep=self._scheduler(snapshot),
            **self._policy(),
        )
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self._resume(phase, snapshot)
                try:
                    result = await operation()
                except Exception as exc:
                    self._record_failure(phase, exc, snapshot)
                    raise
        return result

    # --- snapshot recovery, rollback and exhaustion --------------------------------------

    def create_snapshot_with_recovery(self, cycle_no: int | None = None) -> AtomicSnapshot:
        """create_snapshot(BuildReach), retried with backoff; each failure is an event."""

        def record(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            ledger = self.ledger()
            ledger.snapshot_creation_failed(type(exc).__name__, str(exc)[:2000], self._now())
            self.log.save(ledger)

        policy = self._policy() | {"retry": retry_if_exception(_creation_retryable)}
        retrying = Retrying(sleep=self.sleep, after=record, **policy)
        snap: AtomicSnapshot = retrying(
            self.manager.create_snapshot, PrunePhase.BUILD_REACH, cycle_no=cycle_no
        )
        return snap

    def failing_phase(self, snap: AtomicSnapshot) -> str:
        """The phase that broke: the running one, or the one a Failed cycle failed in."""
        cycle = self._cycle_of(snap)
        if cycle.state in {p.value for p in PrunePhase}:
            return cycle.state
        return cycle.failed_phase or cycle.state

    def roll_back(self, snap: AtomicSnapshot, exc: BaseException) -> AtomicSnapshot:
        """Invalidates `snap`, takes a fresh snapshot for the same cycle (retried like any
        snapshot creation) and sends the cycle back to BuildReach, all through events and the
        legal phase path."""
        now = self._now()
        phase = self.failing_phase(snap)
        ledger = self.ledger()
        ledger.start(snap.cycle_no, phase, type(exc).__name__, str(exc)[:2000], now)
        self.log.save(ledger)
        self.manager.invalidate(snap.snapshot_id, f"{type(exc).__name__}: {exc}")
        fresh = self.create_snapshot_with_recovery(cycle_no=snap.cycle_no)
        cycle = self._cycle_of(snap)
        if cycle.state == phase and phase in {p.value for p in PrunePhase}:
            cycle.fail_phase(PrunePhase(phase), type(exc).__name__, str(exc)[:2000], now)
        cycle.roll_back(f"{type(exc).__name__}: {exc}"[:2000], fresh.snapshot_id, now)
        ledger = self.ledger()
        ledger.snapshot_recreated(snap.cycle_no, snap.snapshot_id, fresh.snapshot_id, now)
        self.log.save(cycle, ledger)
        return fresh

    def give_up(self, snap: AtomicSnapshot, exc: BaseException) -> None:
        now = self._now()
        phase = self.failing_phase(snap)
        cycle = self._cycle_of(snap)
        if cycle.state == phase and phase in {p.value for p in PrunePhase}:
            cycle.fail_phase(PrunePhase(phase), type(exc).__name__, str(exc)[:2000], now)
        if not cycle.finished:
            cycle.give_up(f"{type(exc).__name__}: {exc}"[:2000], now)
        ledger = self.ledger()
        ledger.exhaust(snap.cycle_no, phase, f"{type(exc).__name__}: {exc}"[:2000], now)
        self.log.save(cycle, ledger)

    def succeeded(self, cycle_no: int) -> None:
        ledger = self.ledger()
        before = ledger.version
        ledger.succeed(cycle_no, self._now())
        if ledger.version != before:
            self.log.save(ledger)

    def _cycle_of(self, snap: AtomicSnapshot) -> PruneCycle:
        return self.log.get(cycle_uuid(snap.group, snap.cycle_no), PruneCycle)


def _creation_retryable(exc: BaseException) -> bool:
    """A contended lock or an empty chain will not change by retrying now."""
    return isinstance(exc, Exception) and not isinstance(exc, LockError | NoSnapshotError)
