"""Independent checks of the store after pruning: nothing the pruner itself computed is trusted."""

from __future__ import annotations

from dataclasses import dataclass

from infrastructure import smt
from infrastructure.state_store import SqliteStateStore


@dataclass
class StoreCheck:
    roots_checked: int
    reachable: int
    missing: int
    corrupt: int
    unreachable_stored: int

    @property
    def violations(self) -> int:
        return self.missing + self.corrupt


def protected_roots(store: SqliteStateStore, since_order: int) -> list[bytes]:
    """Every root a pruner must keep whole: orders >= since_order, genesis and pinned roots."""
    rows = store.connection.execute(
        "SELECT state_root FROM roots WHERE tx_order >= ? OR tx_order = 0 "
        "UNION SELECT state_root FROM pinned_roots",
        (since_order,),
    ).fetchall()
    return [bytes(r[0]) for r in rows]


def reachable_from(store: SqliteStateStore, roots: list[bytes]) -> set[bytes]:
    """The hashes of the stored nodes `roots` reach, walked by hash (independent of `kids`)."""
    reachable: set[bytes] = set()
    frontier = [r for r in roots if r != smt.EMPTY_ROOT]
    while frontier:
        batch = [h for h in dict.fromkeys(frontier[-400:]) if h not in reachable]
        del frontier[-400:]
        for h, data in store.fetch_nodes(batch).items():
            reachable.add(h)
            frontier.extend(c for c in smt.children(data) if c not in reachable)
    return reachable


def check_store(store: SqliteStateStore, since_order: int) -> StoreCheck:
    """Hash-verifies every protected root and counts stored nodes none of them reaches."""
    roots = protected_roots(store, since_order)
    report = store.verify_roots(roots)
    reachable = reachable_from(store, roots)
    return StoreCheck(
        roots_checked=len(roots),
        reachable=len(reachable),
        missing=len(report.missing),
        corrupt=len(report.corrupt),
        unreachable_stored=store.node_count() - len(reachable),
    )
