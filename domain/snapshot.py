"""The Snapshot aggregate: one atomic view of the chain that a whole prune cycle uses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import (
    SnapshotExpiredError,
    SnapshotIntegrityError,
    SnapshotInvalidatedError,
)
from domain.phases import PrunePhase
from domain.ports import ChainMetadata, ChainView, IntegrityHasher

NAMESPACE = UUID("6c1f4a43-5d7e-4e35-9d43-3b2f3c0b7a10")


@dataclass(frozen=True)
class AtomicSnapshot:
    """The spec's AtomicSnapshot, as an immutable value handed to phases."""

    snapshot_id: int
    group: str
    cycle_no: int
    latest_order: int
    state_root: str
    chain_metadata: ChainMetadata
    created_at: datetime
    created_phase: PrunePhase
    protection_orders: int
    integrity_hash: str
    status: str

    @property
    def retained_from_order(self) -> int:
        """Roots at or above this order are protected by this snapshot."""
        return max(0, self.latest_order - self.protection_orders)


def integrity_fields(
    group: str,
    snapshot_id: int,
    cycle_no: int,
    latest_order: int,
    state_root: str,
    chain_metadata: Mapping[str, Any],
    created_at: datetime,
    created_phase: str,
    protection_orders: int,
) -> dict[str, object]:
    """Every field of a snapshot except its hash, in one canonical shape."""
    return {
        "group": group,
        "snapshot_id": snapshot_id,
        "cycle_no": cycle_no,
        "latest_order": latest_order,
        "state_root": state_root,
        "chain_metadata": dict(chain_metadata),
        "created_at": created_at,
        "created_phase": created_phase,
        "protection_orders": protection_orders,
    }


class Snapshot(Aggregate):
    """Created once per cycle. Validated, invalidated or expired; never edited."""

    @staticmethod
    def create_id(group: str, snapshot_id: int) -> UUID:
        return snapshot_uuid(group, snapshot_id)

    @classmethod
    def take(
        cls,
        group: str,
        snapshot_id: int,
        cycle_no: int,
        view: ChainView,
        phase: PrunePhase,
        protection_orders: int,
        now: datetime,
        hasher: IntegrityHasher,
    ) -> Snapshot:
        meta = view.chain_metadata.as_dict()
        digest = hasher(
            integrity_fields(
                group,
                snapshot_id,
                cycle_no,
                view.latest_order,
                view.state_root,
                meta,
                now,
                phase.value,
                protection_orders,
            )
        )
        return cls(
            group=group,
            snapshot_id=snapshot_id,
            cycle_no=cycle_no,
            latest_order=view.latest_order,
            state_root=view.state_root,
            chain_metadata=meta,
            created_at=now,
            created_phase=phase.value,
            protection_orders=protection_orders,
            integrity_hash=digest,
        )

    class Created(Aggregate.Created):
        group: str
        snapshot_id: int
        cycle_no: int
        latest_order: int
        state_root: str
        chain_metadata: dict[str, Any]
        created_at: datetime
        created_phase: str
        protection_orders: int
        integrity_hash: str

    @event(Created)
    def __init__(
        self,
        group: str,
        snapshot_id: int,
        cycle_no: int,
        latest_order: int,
        state_root: str,
        chain_metadata: dict[str, Any],
        created_at: datetime,
        created_phase: str,
        protection_orders: int,
        integrity_hash: str,
    ) -> None:
        self.group = group
        self.snapshot_id = snapshot_id
        self.cycle_no = cycle_no
        self.latest_order = latest_order
        self.state_root = state_root
        self.chain_metadata = chain_metadata
        self.created_at = created_at
        self.created_phase = created_phase
        self.protection_orders = protection_orders
        self.integrity_hash = integrity_hash
        self.status = "created"
        self.status_reason = ""
        self.reach_digest: str | None = None

    # --- queries -------------------------------------------------------------------------

    def fields_for_hash(self) -> dict[str, object]:
        return integrity_fields(
            self.group,
            self.snapshot_id,
            self.cycle_no,
            self.latest_order,
            self.state_root,
            self.chain_metadata,
            self.created_at,
            self.created_phase,
            self.protection_orders,
        )

    def integrity_ok(self, hasher: IntegrityHasher) -> bool:
        return hasher(self.fields_for_hash()) == self.integrity_hash

    def age_ms(self, now: datetime) -> float:
        return (now - self.created_at) / timedelta(milliseconds=1)

    def is_too_old(self, now: datetime, max_age_ms: int) -> bool:
        return self.age_ms(now) > max_age_ms

    def as_value(self) -> AtomicSnapshot:
        return AtomicSnapshot(
            snapshot_id=self.snapshot_id,
            group=self.group,
            cycle_no=self.cycle_no,
            latest_order=self.latest_order,
            state_root=self.state_root,
            chain_metadata=ChainMetadata(**self.chain_metadata),
            created_at=self.created_at,
            created_phase=PrunePhase(self.created_phase),
            protection_orders=self.protection_orders,
            integrity_hash=self.integrity_hash,
            status=self.status,
        )

    def ensure_usable(self, now: datetime, max_age_ms: int, hasher: IntegrityHasher) -> None:
        """Raises the precise reason this snapshot may not be used by a phase. Integrity comes
        first: the age check reads `created_at`, which is only trustworthy once the hash holds."""
        if not self.integrity_ok(hasher):
            raise SnapshotIntegrityError(
                f"snapshot {self.snapshot_id}: integrity hash does not match its fields"
            )
        if self.status == "invalidated":
            raise SnapshotInvalidatedError(
                f"snapshot {self.snapshot_id} was invalidated: {self.status_reason}"
            )
        if self.status == "expired":
            raise SnapshotExpiredError(f"snapshot {self.snapshot_id} has expired")
        if self.is_too_old(now, max_age_ms):
            raise SnapshotExpiredError(
                f"snapshot {self.snapshot_id} is {self.age_ms(now):.0f} ms old; "
                f"max_snapshot_age_ms is {max_age_ms}"
            )

    # --- commands ------------------------------------------------------------------------

    def validate(self, checks: list[str], now: datetime) -> None:
        if self.status in ("invalidated", "expired"):
            raise SnapshotInvalidatedError(f"snapshot {self.snapshot_id} is {self.status}")
        self._validated(checks=checks, at=now)

    @event("Validated")
    def _validated(self, checks: list[str], at: datetime) -> None:
        self.status = "validated"

    def invalidate(self, reason: str, now: datetime) -> None:
        if self.status == "invalidated":
            return
        self._invalidated(reason=reason, at=now)

    @event("Invalidated")
    def _invalidated(self, reason: str, at: datetime) -> None:
        self.status = "invalidated"
        self.status_reason = reason

    def expire(self, now: datetime) -> None:
        if self.status in ("invalidated", "expired"):
            return
        self._expired(at=now)

    @event("Expired")
    def _expired(self, at: datetime) -> None:
        self.status = "expired"

    def record_reach(self, node_count: int, digest: str, now: datetime) -> None:
        self._reach_built(node_count=node_count, digest=digest, at=now)

    @event("ReachBuilt")
    def _reach_built(self, node_count: int, digest: str, at: datetime) -> None:
        self.reach_digest = digest


def snapshot_uuid(group: str, snapshot_id: int) -> UUID:
    return uuid5(NAMESPACE, f"prunelog/snapshot/{group}/{snapshot_id}")
