"""AtomicSnapshotManager: creates, locks, validates and releases the cycle's one snapshot.

An application service in the eventsourcing sense: get, call a command, save. It talks to the
world only through ports, so it runs the same on SQLite, PostgreSQL or in-memory fakes."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from datetime import datetime, timedelta
from typing import TypeVar

from domain.config import SnapshotManagerConfig
from domain.errors import (
    AggregateNotFoundError,
    ChainStateMismatchError,
    ConcurrencyConflictError,
    LockContendedError,
    LockNotHeldError,
    NoSnapshotError,
)
from domain.lock import PhaseLock, lock_uuid
from domain.phases import PrunePhase
from domain.ports import ChainStatePort, Clock, EventLog, HolderLiveness, IntegrityHasher
from domain.snapshot import AtomicSnapshot, Snapshot, snapshot_uuid
from domain.validation import ValidationResult

T = TypeVar("T")


class AtomicSnapshotManager:
    def __init__(
        self,
        log: EventLog,
        chain: ChainStatePort,
        clock: Clock,
        hasher: IntegrityHasher,
        config: SnapshotManagerConfig | None = None,
        *,
        group: str = "default",
        owner: str,
        protection_orders: int = 30_000,
        liveness: HolderLiveness | None = None,
    ) -> None:
        self.log = log
        self.chain = chain
        self.clock = clock
        self.hasher = hasher
        self.config = config or SnapshotManagerConfig()
        self.group = group
        self.owner = owner
        self.protection_orders = protection_orders
        self.liveness = liveness

    # --- lifecycle -----------------------------------------------------------------------

    def initialize(self) -> None:
        """Creates the group's lock aggregate once; safe when several nodes race to do it."""
        try:
            self.log.get(lock_uuid(self.group), PhaseLock)
        except AggregateNotFoundError:
            # Another node may create it first: that is the same lock.
            with suppress(ConcurrencyConflictError):
                self.log.save(PhaseLock(group=self.group))

    def _lock(self) -> PhaseLock:
        try:
            return self.log.get(lock_uuid(self.group), PhaseLock)
        except AggregateNotFoundError:
            raise NoSnapshotError(
                f"group {self.group!r} is not initialized; call initialize() first"
            ) from None

    def _save_lock_change(self, *aggregates: Snapshot | PhaseLock) -> None:
        try:
            self.log.save(*aggregates)
        except ConcurrencyConflictError:
            raise LockContendedError(
                f"another pruner changed the lock of group {self.group!r} first; try again later"
            ) from None

    # --- the spec's Basic Usage ----------------------------------------------------------

    def create_snapshot(
        self, phase: PrunePhase | str, *, cycle_no: int | None = None
    ) -> AtomicSnapshot:
        """Reads the chain in one read transaction, records the snapshot and locks it for
        `phase`. A new cycle starts with it unless `cycle_no` names the cycle it replaces in."""
        phase = PrunePhase.parse(phase)
        lock = self._lock()
        now = self.clock.now()
        snapshot_id = lock.last_snapshot_id + 1
        view = self.chain.read_chain_view()
        snapshot = Snapshot.take(
            self.group,
            snapshot_id,
            cycle_no if cycle_no is not None else snapshot_id,
            view,
            phase,
            self.protection_orders,
            now,
            self.hasher,
        )
        lock.lock(
            phase, self.owner, snapshot_id, now, self.config.lock_timeout_ms, self._gone(lock)
        )
        if self.config.enable_validation:
            results = self._checks(snapshot)
            if all(r.ok for r in results):
                snapshot.validate([r.check for r in results], now)
        self._save_lock_change(lock, snapshot)
        return snapshot.as_value()

    def lock_snapshot(self, phase: PrunePhase | str) -> AtomicSnapshot:
        """Locks the current snapshot for `phase`; refuses an expired, invalidated, tampered or
        off-chain one, and a lock someone else holds. Appends nothing when it refuses."""
        phase = PrunePhase.parse(phase)
        lock = self._lock()
        snapshot = self._current(lock)
        now = self.clock.now()
        snapshot.ensure_usable(now, self.config.max_snapshot_age_ms, self.hasher)
        if self.config.enable_validation:
            self._ensure_on_chain(snapshot)
        lock.lock(
            phase,
            self.owner,
            snapshot.snapshot_id,
            now,
            self.config.lock_timeout_ms,
            self._gone(lock),
        )
        self._save_lock_change(lock)
        return snapshot.as_value()

    def held_by_live_other(self) -> PhaseLock | None:
        """The lock, when another pruner holds it and is neither past its timeout nor known to
        have exited: that pruner's cycle is not this one's to touch."""
        lock = self._lock()
        if (
            lock.is_held
            and lock.owner != self.owner
            and not lock.is_expired(self.clock.now())
            and not self._gone(lock)
        ):
            return lock
        return None

    def _gone(self, lock: PhaseLock) -> bool:
        holder = lock.owner
        return bool(
            holder and holder != self.owner and self.liveness and self.liveness.is_gone(holder)
        )

    def release_snapshot(self, phase: PrunePhase | str) -> None:
        phase = PrunePhase.parse(phase)
        lock = self._lock()
        lock.release(phase, self.owner, self.clock.now())
        self._save_lock_change(lock)

    def invalidate(self, snapshot_id: int, reason: str) -> None:
        """Marks a snapshot unusable (recovery found it tampered, expired or off-chain)."""
        snapshot = self._snapshot(snapshot_id)
        snapshot.invalidate(reason, self.clock.now())
        self.log.save(snapshot)

    def expire_stale_lock(self) -> bool:
        """Frees a lock whose holder is past its timeout. True if it did."""
        lock = self._lock()
        before = lock.version
        lock.expire(self.clock.now())
        if lock.version == before:
            return False
        self._save_lock_change(lock)
        return True

    # --- queries -------------------------------------------------------------------------

    @property
    def current_snapshot(self) -> AtomicSnapshot | None:
        lock = self._lock()
        if lock.current_snapshot_id is None:
            return None
        return self._current(lock).as_value()

    def get_snapshot(self, snapshot_id: int) -> AtomicSnapshot:
        return self._snapshot(snapshot_id).as_value()

    def lock_info(self) -> PhaseLock:
        return self._lock()

    def renew_lock(self, phase: PrunePhase | str) -> bool:
        """Keeps a long phase's lock: renews it (PhaseLock.Renewed) once half its timeout has
        passed, so a live holder is never taken over. Returns whether it appended. Raises
        LockNotHeldError if the lock is no longer ours or already expired."""
        phase = PrunePhase.parse(phase)
        lock = self._lock()
        now = self.clock.now()
        half = timedelta(milliseconds=self.config.lock_timeout_ms / 2)
        fresh = lock.locked_at is not None and now - lock.locked_at < half
        if fresh and lock.holds(self.owner, phase):
            return False
        lock.renew(phase, self.owner, now)
        try:
            self.log.save(lock)
        except ConcurrencyConflictError:
            raise LockNotHeldError(
                f"{self.owner} lost the {phase.value} lock of group {self.group!r} "
                "while renewing it"
            ) from None
        return True

    def _snapshot(self, snapshot_id: int) -> Snapshot:
        try:
            return self.log.get(snapshot_uuid(self.group, snapshot_id), Snapshot)
        except AggregateNotFoundError:
            raise NoSnapshotError(f"group {self.group!r} has no snapshot {snapshot_id}") from None

    def _current(self, lock: PhaseLock) -> Snapshot:
        if lock.current_snapshot_id is None:
            raise NoSnapshotError(f"group {self.group!r} has no snapshot yet; create one first")
        return self._snapshot(lock.current_snapshot_id)

    # --- validation ----------------------------------------------------------------------

    def validate_snapshot(self, snapshot_id: int | None = None) -> list[ValidationResult]:
        """Runs the snapshot checks and records the outcome as an event: Validated when all
        pass, Expired when it is too old, Invalidated when its fields or chain are wrong."""
        snapshot = (
            self._current(self._lock()) if snapshot_id is None else self._snapshot(snapshot_id)
        )
        results = self._checks(snapshot)
        now = self.clock.now()
        failed = [r for r in results if not r.ok]
        if not failed:
            snapshot.validate([r.check for r in results], now)
        elif [r.check for r in failed] == ["age"]:
            snapshot.expire(now)
        else:
            snapshot.invalidate("; ".join(f"{r.check}: {r.message}" for r in failed), now)
        self.log.save(snapshot)
        return results

    def _checks(self, snapshot: Snapshot) -> list[ValidationResult]:
        now = self.clock.now()
        return [
            _check("internal_consistency", lambda: _integrity(snapshot, self.hasher)),
            _check("age", lambda: _age(snapshot, now, self.config.max_snapshot_age_ms)),
            _check("chain_state", lambda: self._ensure_on_chain(snapshot)),
        ]

    def _ensure_on_chain(self, snapshot: Snapshot) -> str:
        height = int(snapshot.chain_metadata["block_height"])
        expected = str(snapshot.chain_metadata["latest_block_hash"])
        actual = self.chain.block_hash_at(height)
        if actual != expected:
            raise ChainStateMismatchError(
                f"snapshot {snapshot.snapshot_id}: block at height {height} is now "
                f"{actual!r}, snapshot recorded {expected!r}"
            )
        return f"block {height} is still {expected[:16]}"


def _integrity(snapshot: Snapshot, hasher: IntegrityHasher) -> str:
    if not snapshot.integrity_ok(hasher):
        raise ValueError("integrity hash does not match the snapshot's fields")
    return "integrity hash recomputes"


def _age(snapshot: Snapshot, now: datetime, max_age_ms: int) -> str:
    age = snapshot.age_ms(now)
    if age > max_age_ms:
        raise ValueError(f"{age:.0f} ms old, max_snapshot_age_ms is {max_age_ms}")
    return f"{age:.0f} ms old"


def _check(name: str, run: Callable[[], str]) -> ValidationResult:
    try:
        return ValidationResult.Passed(name, run())
    except Exception as exc:
        return ValidationResult.Failed(name, str(exc))
