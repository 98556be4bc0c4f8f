"""The PhaseLock aggregate: one per pruner group. Exclusivity comes from optimistic concurrency:
two nodes that append at the same version cannot both win."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import LockContendedError, LockNotHeldError
from domain.phases import PrunePhase
from domain.snapshot import NAMESPACE


class PhaseLock(Aggregate):
    @staticmethod
    def create_id(group: str) -> UUID:
        return lock_uuid(group)

    @event("Created")
    def __init__(self, group: str) -> None:
        self.group = group
        self.owner: str | None = None
        self.phase: str | None = None
        self.snapshot_id: int | None = None
        self.locked_at: datetime | None = None
        self.timeout_ms = 0
        self.last_snapshot_id = 0
        self.current_snapshot_id: int | None = None
        self.takeovers = 0
        # Counts Locked events: a fencing token. Every new holding (a takeover included) gets
        # a higher one, and the state store refuses deletes under an older one.
        self.fence_token = 0

    # --- queries -------------------------------------------------------------------------

    @property
    def is_held(self) -> bool:
        return self.owner is not None

    def expires_at(self) -> datetime | None:
        if self.locked_at is None:
            return None
        return self.locked_at + timedelta(milliseconds=self.timeout_ms)

    def is_expired(self, now: datetime) -> bool:
        expiry = self.expires_at()
        return self.is_held and expiry is not None and now >= expiry

    def holds(self, owner: str, phase: PrunePhase) -> bool:
        return self.owner == owner and self.phase == phase.value

    def describe_holder(self) -> str:
        if not self.is_held:
            return "nobody"
        return (
            f"{self.owner} for {self.phase} since {self.locked_at} (timeout {self.timeout_ms} ms)"
        )

    # --- commands ------------------------------------------------------------------------

    def lock(
        self,
        phase: PrunePhase,
        owner: str,
        snapshot_id: int,
        now: datetime,
        timeout_ms: int,
        holder_gone: bool = False,
    ) -> None:
        """Takes the lock for `phase`. The holder may hand over to its own next phase; an expired
        holder, or one known to have exited (`holder_gone`), is taken over, and that takeover is
        an event of its own."""
        if self.is_held:
            if self.is_expired(now) or (holder_gone and self.owner != owner):
                self._expired(
                    previous_owner=self.owner,
                    previous_phase=self.phase,
                    taken_over_by=owner,
                    at=now,
                    reason="timed out" if self.is_expired(now) else "holder process exited",
                )
            elif self.owner == owner:
                if self.phase == phase.value and self.snapshot_id == snapshot_id:
                    return
                self._released(owner=owner, phase=self.phase, at=now)
            else:
                raise LockContendedError(
                    f"lock of group {self.group!r} is held by {self.describe_holder()}"
                )
        self._locked(
            phase=phase.value,
            owner=owner,
            snapshot_id=snapshot_id,
            at=now,
            timeout_ms=timeout_ms,
        )

    def release(self, phase: PrunePhase, owner: str, now: datetime) -> None:
        if not self.holds(owner, phase):
            raise LockNotHeldError(
                f"{owner} does not hold the {phase.value} lock of group {self.group!r}; "
                f"it is held by {self.describe_holder()}"
            )
        self._released(owner=owner, phase=phase.value, at=now)

    def renew(self, phase: PrunePhase, owner: str, now: datetime) -> None:
        """Extends a live lock by its timeout from `now`: a phase that runs longer than the
        timeout keeps its lock while it works. An expired lock cannot be renewed: another node
        may already be entitled to it."""
        if not self.holds(owner, phase):
            raise LockNotHeldError(
                f"{owner} cannot renew the {phase.value} lock of group {self.group!r}; "
                f"it is held by {self.describe_holder()}"
            )
        if self.is_expired(now):
            raise LockNotHeldError(
                f"{owner}'s {phase.value} lock of group {self.group!r} expired at "
                f"{self.expires_at()}; it can be taken over, not renewed"
            )
        self._renewed(owner=owner, phase=phase.value, at=now)

    def expire(self, now: datetime) -> None:
        """Frees a lock whose holder is past its timeout (a recovery step)."""
        if self.is_expired(now):
            self._expired(
                previous_owner=self.owner,
                previous_phase=self.phase,
                taken_over_by=None,
                at=now,
                reason="timed out",
            )

    @event("Locked")
    def _locked(
        self, phase: str, owner: str, snapshot_id: int, at: datetime, timeout_ms: int
    ) -> None:
        self.owner = owner
        self.phase = phase
        self.snapshot_id = snapshot_id
        self.locked_at = at
        self.timeout_ms = timeout_ms
        self.current_snapshot_id = snapshot_id
        self.last_snapshot_id = max(self.last_snapshot_id, snapshot_id)
        self.fence_token += 1

    @event("Renewed")
    def _renewed(self, owner: str, phase: str, at: datetime) -> None:
        self.locked_at = at

    @event("Released")
    def _released(self, owner: str, phase: str | None, at: datetime) -> None:
        self._clear()

    @event("Expired")
    def _expired(
        self,
        previous_owner: str | None,
        previous_phase: str | None,
        taken_over_by: str | None,
        at: datetime,
        reason: str,
    ) -> None:
        self.takeovers += 1 if taken_over_by else 0
        self._clear()

    def _clear(self) -> None:
        self.owner = None
        self.phase = None
        self.locked_at = None
        self.timeout_ms = 0


def lock_uuid(group: str) -> UUID:
    return uuid5(NAMESPACE, f"prunelog/lock/{group}")
