from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from infrastructure import smt
from infrastructure.state_store import SqliteStateStore, block_hash_for
from infrastructure.workload import WorkloadWriter, chain_timestamp_for

REPO = Path(__file__).resolve().parents[2]


def roots_of(path: Path, seed: int, txs: int, keys: int = 300) -> list[bytes]:
    with SqliteStateStore.open(path) as store:
        writer = WorkloadWriter(store, seed, keys=keys)
        return [writer.step().state_root for _ in range(txs)]


def test_the_same_seed_gives_the_same_sequence_of_roots(tmp_path: Path) -> None:
    first = roots_of(tmp_path / "a.db", seed=11, txs=120)
    again = roots_of(tmp_path / "b.db", seed=11, txs=120)
    other = roots_of(tmp_path / "c.db", seed=12, txs=120)
    assert first == again
    assert first != other


def table(store: SqliteStateStore, sql: str) -> set[tuple[object, ...]]:
    return set(store.connection.execute(sql).fetchall())


def test_bulk_commits_give_the_same_roots_stamps_and_stale_rows_as_single_commits(
    tmp_path: Path,
) -> None:
    with (
        SqliteStateStore.open(tmp_path / "one.db") as one,
        SqliteStateStore.open(tmp_path / "bulk.db") as bulk,
    ):
        WorkloadWriter(one, 21, keys=200).run(90)
        WorkloadWriter(bulk, 21, keys=200).run(90, batch=7)
        for sql in (
            "SELECT tx_order, state_root, block_hash, chain_timestamp FROM roots",
            "SELECT hash, data, written_order FROM nodes",
            "SELECT stale_order, hash FROM stale",
        ):
            assert table(one, sql) == table(bulk, sql)


def test_chain_timestamps_come_from_the_tx_number(tmp_path: Path) -> None:
    with SqliteStateStore.open(tmp_path / "s.db") as store:
        WorkloadWriter(store, 1, keys=50).run(5)
        rows = store.roots_between(0, 10)
    assert [r.chain_timestamp for r in rows] == [chain_timestamp_for(i) for i in range(5)]


def test_the_workload_reuses_hashes_and_shares_field_trees(tmp_path: Path) -> None:
    with SqliteStateStore.open(tmp_path / "s.db") as store:
        writer = WorkloadWriter(store, 3, keys=200)
        writer.run(400)
        stats = writer.stats
        roots = [r.state_root for r in store.roots_between(0, 1_000)]
        latest = roots[-1]
        report = store.verify(latest)
        field_roots = Counter(
            smt.decode_value(store.get(latest, key) or b"")[1] for key in writer.objects
        )
    # Reverts and undo txs write old hashes again, and the store re-stamps them.
    assert stats.op_counts["revert"] > 20 and stats.op_counts["undo"] > 5
    assert stats.nodes_reused > 100
    # An undo tx restores the state before the previous tx: a whole old root comes back.
    assert len(set(roots)) < len(roots)
    # Templated objects put equal field trees under different keys: a DAG.
    shared_trees = sum(1 for count in field_roots.values() if count > 1)
    assert shared_trees >= 3
    assert report.ok and report.shared_hits >= shared_trees


def test_every_committed_root_verifies_and_its_block_hash_matches(tmp_path: Path) -> None:
    with SqliteStateStore.open(tmp_path / "s.db") as store:
        WorkloadWriter(store, 5, keys=100).run(60)
        rows = store.roots_between(0, 100)
        assert store.verify_roots(r.state_root for r in rows).ok
    assert all(r.block_hash == block_hash_for(r.tx_order, r.state_root) for r in rows)


def start_writer(db: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "infrastructure.workload", "--db", str(db), *args]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)


def test_the_writer_process_runs_a_bounded_number_of_txs(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    proc = start_writer(db, "--txs", "25", "--seed", "4", "--keys", "50", "--batch", "4")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["txs"] == 25 and summary["last_order"] == 24
    assert summary["stopped_by"] is None
    with SqliteStateStore.open(db) as store:
        latest = store.latest()
        assert latest is not None and latest.state_root.hex() == summary["state_root"]
    # The process is the same deterministic writer as the in-process one.
    assert summary["state_root"] == roots_of(tmp_path / "twin.db", 4, 25, keys=50)[-1].hex()


def test_a_reader_works_while_the_writer_process_runs_until_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    SqliteStateStore.open(db).close()  # schema first, so the reader never races creation
    proc = start_writer(db, "--txs", "0", "--seed", "9", "--keys", "400", "--sleep-ms", "1")
    orders: set[int] = set()
    try:
        with SqliteStateStore.open(db) as reader:
            deadline = time.monotonic() + 30
            while len(orders) < 60 and time.monotonic() < deadline:
                latest = reader.latest()
                if latest is None:
                    time.sleep(0.01)
                    continue
                view = reader.read_chain_view(protection_orders=5)
                assert view.block_hash == block_hash_for(view.latest_order, view.state_root)
                assert reader.verify(view.state_root).ok
                orders.add(view.latest_order)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert len(orders) >= 60
    assert proc.returncode == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped_by"] == "SIGTERM"
    with SqliteStateStore.open(db) as store:
        latest = store.latest()
        assert latest is not None and latest.tx_order == summary["last_order"]
        assert store.verify(latest.state_root).ok


def test_the_writer_process_fails_loudly_on_a_missing_live_node(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with SqliteStateStore.open(db) as store:
        WorkloadWriter(store, 2, keys=50).run(10)
        latest = store.latest()
        assert latest is not None
        store.connection.execute("DELETE FROM nodes WHERE hash = ?", (latest.state_root,))
    proc = start_writer(db, "--txs", "5", "--seed", "2", "--keys", "50")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["error"].startswith("MissingNodeError") and summary["txs"] == 0
