"""Snapshot creation and lock acquisition latency, p50/p99 over N runs, each beside a same-run
baseline: a bare SQLite transaction doing the same chain reads and one insert.

Prints one JSON object. Usage: python benchmarks/bench_snapshot.py [--runs 1000]"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from domain.phases import PrunePhase
from infrastructure.runtime import Runtime, Settings
from infrastructure.state_store import SqliteStateStore
from infrastructure.workload import WorkloadWriter


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1000  # noqa: E731
    return {
        "p50_ms": round(pick(0.50), 3),
        "p99_ms": round(pick(0.99), 3),
        "mean_ms": round(statistics.fmean(s) * 1000, 3),
    }


def timed(
    fn: Callable[[], object], runs: int, between: Callable[[], object] = lambda: None
) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
        between()
    return out


def baseline(state: Path, events: Path) -> Callable[[], None]:
    """Same reads as a snapshot (latest root row, block hash at that height) and one insert."""
    chain = sqlite3.connect(state, isolation_level=None)
    log = sqlite3.connect(events, isolation_level=None)
    log.execute("PRAGMA journal_mode=WAL")
    log.execute("PRAGMA synchronous=NORMAL")
    log.execute("CREATE TABLE IF NOT EXISTS baseline (id INTEGER PRIMARY KEY, body BLOB)")

    def run() -> None:
        chain.execute("BEGIN")
        row = chain.execute(
            "SELECT tx_order, state_root, block_height, block_hash, chain_timestamp "
            "FROM roots ORDER BY tx_order DESC LIMIT 1"
        ).fetchone()
        chain.execute("SELECT block_hash FROM roots WHERE block_height = ?", (row[2],)).fetchone()
        chain.execute("COMMIT")
        log.execute("BEGIN")
        log.execute("INSERT INTO baseline(body) VALUES (?)", (bytes(200),))
        log.execute("COMMIT")

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        with SqliteStateStore.open(data / "state.sqlite") as store:
            WorkloadWriter(store, seed=1).run(200)
        with Runtime(Settings(data_dir=data)) as rt:
            m = rt.manager
            create = timed(lambda: m.create_snapshot(PrunePhase.BUILD_REACH), args.runs)
            m.release_snapshot(PrunePhase.BUILD_REACH)
            lock = timed(
                lambda: m.lock_snapshot(PrunePhase.SWEEP_EXPIRED),
                args.runs,
                between=lambda: m.release_snapshot(PrunePhase.SWEEP_EXPIRED),
            )
        base = timed(baseline(data / "state.sqlite", data / "baseline.sqlite"), args.runs)
    result = {
        "benchmark": "snapshot_and_lock",
        "runs": args.runs,
        "snapshot_creation": percentiles(create),
        "lock_acquisition": percentiles(lock),
        "baseline_sqlite_reads_plus_insert": percentiles(base),
        "targets": {"snapshot_creation_p99_ms": 5, "lock_acquisition_p99_ms": 2},
    }
    result["snapshot_creation"]["ratio_to_baseline_p50"] = round(
        result["snapshot_creation"]["p50_ms"]
        / result["baseline_sqlite_reads_plus_insert"]["p50_ms"],
        2,
    )
    result["lock_acquisition"]["ratio_to_baseline_p50"] = round(
        result["lock_acquisition"]["p50_ms"]
        / result["baseline_sqlite_reads_plus_insert"]["p50_ms"],
        2,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
