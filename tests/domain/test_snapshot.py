"""The snapshot's integrity hash: a real hash over a canonical encoding of every other field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.phases import PrunePhase
from domain.ports import ChainMetadata, ChainView
from domain.snapshot import Snapshot, integrity_fields
from infrastructure.hashing import integrity_hash

AT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def fields(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "group": "default",
        "snapshot_id": 1,
        "cycle_no": 1,
        "latest_order": 1_000,
        "state_root": "ab" * 32,
        "chain_metadata": {
            "block_height": 100,
            "chain_timestamp": 1_700_000_000,
            "latest_block_hash": "cd" * 32,
            "mempool_size": None,
            "sync_status": None,
        },
        "created_at": AT,
        "created_phase": "BuildReach",
        "protection_orders": 30_000,
    }
    meta_changes = changes.pop("chain_metadata", {})
    base.update(changes)
    base["chain_metadata"] = {**base["chain_metadata"], **meta_changes}
    return integrity_fields(**base)


def test_the_integrity_hash_is_a_deterministic_256_bit_hex_digest() -> None:
    digest = integrity_hash(fields())
    assert digest == integrity_hash(fields())
    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_the_integrity_hash_does_not_depend_on_key_order() -> None:
    forward = fields()
    backward = dict(reversed(list(forward.items())))
    backward["chain_metadata"] = dict(reversed(list(forward["chain_metadata"].items())))
    assert integrity_hash(backward) == integrity_hash(forward)


@pytest.mark.parametrize(
    "change",
    [
        {"group": "other"},
        {"snapshot_id": 2},
        {"cycle_no": 2},
        {"latest_order": 1_001},
        {"state_root": "ab" * 31 + "ac"},
        {"created_at": AT + timedelta(microseconds=1)},
        {"created_phase": "SweepExpired"},
        {"protection_orders": 29_999},
        {"chain_metadata": {"block_height": 101}},
        {"chain_metadata": {"chain_timestamp": 1_700_000_001}},
        {"chain_metadata": {"latest_block_hash": "cd" * 31 + "ce"}},
        {"chain_metadata": {"mempool_size": 0}},
        {"chain_metadata": {"sync_status": False}},
    ],
    ids=lambda change: (
        next(iter(change))
        + ("." + next(iter(change["chain_metadata"])) if "chain_metadata" in change else "")
    ),
)
def test_the_integrity_hash_changes_when_any_field_changes(change: dict[str, Any]) -> None:
    assert integrity_hash(fields(**change)) != integrity_hash(fields())


def test_integer_and_string_forms_of_a_value_hash_differently() -> None:
    assert integrity_hash(fields(latest_order=1)) != integrity_hash(fields(latest_order="1"))


def take() -> Snapshot:
    view = ChainView(1_000, "ab" * 32, ChainMetadata(100, 1_700_000_000, "cd" * 32))
    return Snapshot.take("default", 1, 1, view, PrunePhase.BUILD_REACH, 30_000, AT, integrity_hash)


def test_a_taken_snapshot_carries_the_hash_of_its_own_fields() -> None:
    snapshot = take()
    assert snapshot.integrity_hash == integrity_hash(fields())
    assert snapshot.integrity_ok(integrity_hash)


@pytest.mark.parametrize(
    ("name", "value"),
    [("latest_order", 999), ("state_root", "00" * 32), ("created_at", AT - timedelta(hours=3))],
)
def test_a_snapshot_whose_field_was_changed_no_longer_passes_its_integrity_check(
    name: str, value: object
) -> None:
    snapshot = take()
    setattr(snapshot, name, value)
    assert not snapshot.integrity_ok(integrity_hash)


def test_as_value_round_trips_every_field() -> None:
    value = take().as_value()
    assert value.created_phase is PrunePhase.BUILD_REACH
    assert value.chain_metadata == ChainMetadata(100, 1_700_000_000, "cd" * 32)
    assert value.retained_from_order == 0
    assert value.status == "created"
