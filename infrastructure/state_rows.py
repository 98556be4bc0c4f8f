"""The rows the state store hands out (roots, the chain view, a tx's result), the input of
`commit_many`, and the block hash the store derives for each root."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from infrastructure import smt

ROOT_COLUMNS = "tx_order, state_root, block_height, block_hash, chain_timestamp, swept"


class EmptyStoreError(LookupError):
    """The store has no committed transaction yet, so there is no chain to view."""


def block_hash_for(tx_order: int, state_root: bytes) -> bytes:
    return smt.sha256(b"block" + tx_order.to_bytes(8, "big") + state_root)


@dataclass(frozen=True, slots=True)
class TxSpec:
    """One tx for `commit_many`; fields as in `commit_tx`."""

    changes: Mapping[bytes, bytes | None]
    chain_timestamp: int
    objects: Mapping[bytes, Mapping[bytes, bytes] | None] | None = None


@dataclass(frozen=True, slots=True)
class TxResult:
    tx_order: int
    state_root: bytes
    nodes_written: int  # inserts and re-stamps
    nodes_reused: int = 0  # of those, hashes that were already stored (re-stamped)
    stale_written: int = 0


@dataclass(frozen=True, slots=True)
class RootRow:
    tx_order: int
    state_root: bytes
    block_height: int
    block_hash: bytes
    chain_timestamp: int
    swept: bool


@dataclass(frozen=True, slots=True)
class ChainViewRow:
    latest_order: int
    state_root: bytes
    block_height: int
    block_hash: bytes
    chain_timestamp: int
    genesis_root: bytes
    pinned_roots: tuple[bytes, ...]
    # Roots with order in [latest_order - protection_orders, latest_order], oldest first;
    # empty unless `read_chain_view` was asked for them.
    window_roots: tuple[bytes, ...] = ()


def root_row(row: tuple[int, bytes, int, bytes, int, int]) -> RootRow:
    return RootRow(row[0], row[1], row[2], row[3], row[4], bool(row[5]))
