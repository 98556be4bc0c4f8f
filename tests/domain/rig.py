"""A data dir with a real state store and Runtime, for the pruner's scenario tests, and the
helpers they share (the `make_rig` fixture is in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from domain.config import PruneConfig, RecoveryConfig
from domain.phases import PrunePhase
from domain.ports import NodeStorePort, ReachSet
from domain.pruning import CycleReport, Pruner
from infrastructure import smt
from infrastructure.audit_checks import StoreCheck, check_store
from infrastructure.clock import ManualClock
from infrastructure.eventlog import STATE_FILE
from infrastructure.runtime import Runtime, Settings
from infrastructure.state_store import SqliteStateStore, TxResult

SE, IS = PrunePhase.SWEEP_EXPIRED, PrunePhase.INCREMENTAL_SWEEP
FAST_RETRIES = RecoveryConfig(base_retry_delay_ms=1, max_retry_delay_ms=5)
K, J = b"k", b"j"


class Rig:
    """A data dir with a state store (genesis committed) and a Runtime on a manual clock."""

    def __init__(self, data_dir: Path, protection_orders: int, delete_batch_size: int) -> None:
        data_dir.mkdir(parents=True)
        self.protection_orders = protection_orders
        self.store = SqliteStateStore.open(data_dir / STATE_FILE)
        self.commit({b"genesis": b"g"})
        self.clock = ManualClock()
        prune = PruneConfig(
            protection_orders=protection_orders, delete_batch_size=delete_batch_size
        )
        settings = Settings(data_dir, prune=prune, recovery=FAST_RETRIES)
        self.rt = Runtime(settings, clock=self.clock, owner="pruner-a")
        self._filler = 0

    def close(self) -> None:
        self.rt.close()
        self.store.close()

    # --- writing ---------------------------------------------------------------------------

    def commit(
        self,
        changes: Mapping[bytes, bytes | None] | None = None,
        objects: Mapping[bytes, Mapping[bytes, bytes] | None] | None = None,
    ) -> TxResult:
        latest = self.store.latest()
        order = 0 if latest is None else latest.tx_order + 1
        return self.store.commit_tx(changes or {}, chain_timestamp=order, objects=objects)

    def filler(self, count: int) -> None:
        """Txs that touch keys nothing else uses, to move the protection window along."""
        for _ in range(count):
            self._filler += 1
            self.commit({b"filler-%d" % self._filler: b"x"})

    def latest_order(self) -> int:
        latest = self.store.latest()
        assert latest is not None
        return latest.tx_order

    def latest_root(self) -> bytes:
        latest = self.store.latest()
        assert latest is not None
        return latest.state_root

    def root_at(self, order: int) -> bytes:
        row = self.store.root_at(order)
        assert row is not None
        return row.state_root

    # --- pruning and looking -------------------------------------------------------------

    def pruner_over(self, nodes: NodeStorePort) -> Pruner:
        """A pruner of the same group, owner and recovery whose node store is `nodes`."""
        rt = self.rt
        return Pruner(rt.manager, nodes, rt.reach_store, rt.settings.prune, recovery=rt.recovery)

    def reach(self, report: CycleReport) -> ReachSet:
        return self.rt.reach_store.load(report.snapshot_id, report.reach_digest)

    def row(self, h: bytes) -> tuple[int, int] | None:
        """(row id, written_order) of a stored node, or None."""
        where, params = self.store.hash_index.one(h)
        found = self.store.connection.execute(
            f"SELECT id, written_order FROM nodes WHERE {where}", params
        ).fetchone()
        return None if found is None else (int(found[0]), int(found[1]))

    def is_stored(self, h: bytes) -> bool:
        return self.row(h) is not None

    def is_marked(self, report: CycleReport, h: bytes) -> bool:
        row = self.row(h)
        assert row is not None, f"{h.hex()} is not stored"
        return row[0] in self.reach(report)

    def check(self, report: CycleReport) -> StoreCheck:
        return check_store(self.store, report.latest_order - self.protection_orders)


MakeRig = Callable[..., Rig]


def leaf_hash(key: bytes, raw: bytes) -> bytes:
    return smt.node_hash(smt.encode_leaf(smt.key_hash(key), smt.encode_value(raw)))


def field_root_of(store: SqliteStateStore, root: bytes, key: bytes) -> bytes:
    value = store.get(root, key)
    assert value is not None
    field_root = smt.decode_value(value)[1]
    assert field_root is not None
    return field_root


def assert_whole(rig: Rig, report: CycleReport) -> None:
    check = rig.check(report)
    assert check.missing == 0 and check.corrupt == 0, check
    assert rig.store.verify(rig.latest_root()).ok


def k_was_v1_then_v2(rig: Rig) -> bytes:
    """Orders 1-2 set k to v1 then v2, and fillers push both out of the window: k's leaf for
    v1 is garbage at the snapshot. Returns that leaf's hash."""
    rig.commit({K: b"v1", J: b"w1"})
    rig.commit({K: b"v2", J: b"w2"})
    rig.filler(7)
    return leaf_hash(K, b"v1")
