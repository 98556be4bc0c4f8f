"""SweepExpired's delete transactions: full ones, whatever the root groups' sizes (the rest of
a group's garbage waits for the next group's), deleted from the end of the walk backwards,
with each root group marked swept in the transaction that deletes the last of its garbage.
So a stop after any transaction leaves every garbage node reachable from a root that is not
yet marked swept, and the next run deletes it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from domain.config import PruneConfig
from domain.errors import PrunerStoppedError
from domain.ports import JournalEntry
from infrastructure.audit_checks import check_store, reachable_from
from infrastructure.state_store import SqliteStateStore
from tests.fakes import PrunerRig, open_rig, write_chain

PRUNE = PruneConfig(protection_orders=20, delete_batch_size=40, batches_per_commit=2)
COMMIT_ROWS = PRUNE.delete_batch_size * PRUNE.batches_per_commit


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[PrunerRig]:
    write_chain(tmp_path / "data" / "state.sqlite", 300)
    opened = open_rig(tmp_path / "data", prune=PRUNE)
    yield opened
    opened.close()


def record_transactions(rig: PrunerRig) -> list[tuple[int, list[int]]]:
    """(rows asked to delete, root orders marked swept) of each SweepExpired transaction."""
    seen: list[tuple[int, list[int]]] = []
    inner = rig.nodes.delete_guarded

    def recording(
        row_ids: list[int], max_order: int, journal: JournalEntry, swept: list[int]
    ) -> list[tuple[bytes, int]]:
        deleted = inner(row_ids, max_order, journal, swept)
        seen.append((len(row_ids), list(swept)))
        return deleted

    setattr(rig.nodes, "delete_guarded", recording)  # noqa: B010 (a method, on purpose)
    return seen


def orphans(store: SqliteStateStore, since_order: int) -> int:
    """Stored nodes that neither a protected root nor an unswept expired root reaches: garbage
    that no later SweepExpired would ever walk to."""
    roots = [
        bytes(r)
        for (r,) in store.connection.execute(
            "SELECT state_root FROM roots WHERE tx_order >= ? OR tx_order = 0 OR swept = 0 "
            "UNION SELECT state_root FROM pinned_roots",
            (since_order,),
        )
    ]
    reached = reachable_from(store, roots)
    stored = {bytes(h) for (h,) in store.connection.execute("SELECT hash FROM nodes")}
    return len(stored - reached)


def test_every_sweep_expired_transaction_but_the_last_deletes_a_full_commit(
    rig: PrunerRig,
) -> None:
    transactions = record_transactions(rig)

    report = rig.pruner.run_cycle()

    sizes = [rows for rows, _ in transactions]
    assert report.phases["SweepExpired"].deleted == sum(sizes) > 3 * COMMIT_ROWS
    assert all(rows == COMMIT_ROWS for rows in sizes[:-1])
    assert 0 < sizes[-1] <= COMMIT_ROWS
    # Every expired root is marked swept exactly once, and the last transaction marks the
    # first group (its garbage heads the walk, so it goes last).
    marked = [order for _, swept in transactions for order in swept]
    assert len(marked) == len(set(marked)) == report.phases["SweepExpired"].roots
    assert min(marked) in transactions[-1][1]


@pytest.mark.parametrize("stop_after", [1, 2, 4, 7])
def test_a_stop_after_any_transaction_leaves_all_garbage_under_unswept_roots_and_resumes(
    rig: PrunerRig, stop_after: int
) -> None:
    transactions = record_transactions(rig)
    rig.pruner.should_stop = lambda: len(transactions) >= stop_after

    with pytest.raises(PrunerStoppedError, match="SweepExpired"):
        rig.pruner.run_cycle()

    since = rig.rt.chain.read_chain_view().latest_order - PRUNE.protection_orders
    with SqliteStateStore.open(rig.rt.state_path) as store:
        assert check_store(store, since).violations == 0
        assert orphans(store, since) == 0
    rig.pruner.should_stop = lambda: False
    report = rig.pruner.run_cycle()
    with SqliteStateStore.open(rig.rt.state_path) as store:
        check = check_store(store, report.latest_order - PRUNE.protection_orders)
    assert check.violations == 0 and check.unreachable_stored == 0
