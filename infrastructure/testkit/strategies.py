"""Hypothesis strategies for the writer and for faults. The alphabets are small on purpose, so
that reverts (old hashes back) and shared subtrees come up often."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from hypothesis import strategies as st

from infrastructure.state_store import SqliteStateStore
from infrastructure.workload import chain_timestamp_for

#: Field sets that objects draw from, so that equal field trees sit under different keys.
TEMPLATES: Final[tuple[Mapping[bytes, bytes], ...]] = (
    {b"f0": b"t0"},
    {b"f0": b"t1", b"f1": b"t1"},
    {b"f0": b"t2", b"f1": b"t2", b"f2": b"t2"},
    {b"f0": b"t0", b"f1": b"t1", b"f2": b"t2", b"f3": b"t3"},
)


@dataclass(frozen=True)
class WriterTx:
    """One writer transaction for `SqliteStateStore.commit_tx`: plain keys set to a value
    (None deletes) and object keys set to a field map (None deletes the object)."""

    changes: Mapping[bytes, bytes | None]
    objects: Mapping[bytes, Mapping[bytes, bytes] | None]

    def commit(self, store: SqliteStateStore) -> int:
        """Commits as the next tx_order; returns that order."""
        latest = store.latest()
        order = 0 if latest is None else latest.tx_order + 1
        store.commit_tx(
            self.changes, chain_timestamp=chain_timestamp_for(order), objects=self.objects
        )
        return order


def writer_transactions(
    keys: int = 6, values: int = 4, objects: int = 3, max_changes: int = 4
) -> st.SearchStrategy[WriterTx]:
    """Transactions over a small key space and a small value alphabet, so that a key often goes
    back to a value it had (a revert: the old leaf hash comes back), and objects that draw
    their fields from TEMPLATES (equal field trees shared under different keys: a DAG)."""
    plain = st.dictionaries(
        st.integers(0, keys - 1).map(lambda i: b"k%d" % i),
        st.one_of(st.none(), st.integers(0, values - 1).map(lambda i: b"v%d" % i)),
        max_size=max_changes,
    )
    objs = st.dictionaries(
        st.integers(0, objects - 1).map(lambda i: b"o%d" % i),
        st.one_of(st.none(), st.sampled_from(TEMPLATES)),
        max_size=max(1, max_changes // 2),
    )
    return st.builds(WriterTx, plain, objs).filter(lambda tx: bool(tx.changes or tx.objects))


#: NodeStorePort methods a fault can hit.
FAULT_METHODS: Final = (
    "retained_roots",
    "expired_roots",
    "ids_of",
    "expand",
    "delete_guarded",
    "stale_entries",
    "sweep_stale",
    "unlogged_journal",
)


@dataclass(frozen=True)
class FaultSpec:
    """A one-shot fault: after `skip` calls of `method` go through, the next one raises
    sqlite3.OperationalError ("database is locked"). With `after_call`, that call does its
    work first (a delete commits) and the error comes after: a lost reply."""

    method: str
    after_call: bool = False
    skip: int = 0

    def __post_init__(self) -> None:
        if self.method not in FAULT_METHODS:
            raise ValueError(f"no NodeStorePort method {self.method!r}; one of {FAULT_METHODS}")


def faults(
    methods: Sequence[str] = FAULT_METHODS, max_skip: int = 3
) -> st.SearchStrategy[FaultSpec]:
    return st.builds(
        FaultSpec, st.sampled_from(list(methods)), st.booleans(), st.integers(0, max_skip)
    )


def fault_schedules(
    methods: Sequence[str] = FAULT_METHODS, max_size: int = 3
) -> st.SearchStrategy[list[FaultSpec]]:
    return st.lists(faults(methods), max_size=max_size)


#: How far one pruner rule runs: to the next yield point of any kind, to the next phase
#: start, delete batch or phase end, or to the end of the cycle.
GRANULARITIES: Final = ("next", "phase_start", "batch", "phase_end", "cycle")


def granularities() -> st.SearchStrategy[str]:
    return st.sampled_from(GRANULARITIES)
