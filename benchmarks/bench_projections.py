"""Projection rebuild rate (events/s) over a log of >= 200k events, beside a same-run baseline
that only reads and decodes the raw notification log.

The log is made with the real aggregates (cycles with NodesSwept batches, lock and snapshot
events), so every projection has work to do. Prints one JSON object.
Usage: python benchmarks/bench_projections.py [--events 200000]"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from domain.cycle import PruneCycle
from domain.lock import PhaseLock
from domain.phases import PrunePhase
from domain.ports import ChainMetadata, ChainView
from domain.snapshot import Snapshot
from infrastructure.clock import ManualClock
from infrastructure.eventlog import EventsourcingLog
from infrastructure.hashing import integrity_hash
from projections.runner import ProjectionRunner

PHASES = (PrunePhase.BUILD_REACH, PrunePhase.SWEEP_EXPIRED, PrunePhase.INCREMENTAL_SWEEP)


def make_log(log: EventsourcingLog, target: int, batches_per_sweep: int = 20) -> int:
    clock = ManualClock()
    lock = PhaseLock(group="bench")
    log.save(lock)
    written, n = 1, 0
    while written < target:
        n += 1
        now = clock.advance(seconds=60)
        view = ChainView(
            n * 100, os.urandom(32).hex(), ChainMetadata(n * 100, n, os.urandom(32).hex())
        )
        snap = Snapshot.take("bench", n, n, view, PrunePhase.BUILD_REACH, 30, now, integrity_hash)
        snap.validate(["internal_consistency"], now)
        snap.record_reach(1000, os.urandom(32).hex(), now)
        lock.lock(PrunePhase.BUILD_REACH, "bench-node", n, now, 60_000)
        cycle = PruneCycle("bench", n, n, now)
        batch = 0
        for phase in PHASES:
            cycle.start_phase(phase, n, now)
            if phase is not PrunePhase.BUILD_REACH:
                for _ in range(batches_per_sweep):
                    batch += 1
                    deleted = [(os.urandom(32), 200) for _ in range(20)]
                    cycle.record_batch(phase, n, batch, deleted, now)
                cycle.progress(phase, {"batch": batch}, now)
            cycle.complete_phase(phase, {"deleted": batch}, now)
        cycle.complete(now)
        lock.release(PrunePhase.BUILD_REACH, "bench-node", now)
        log.save(lock, snap, cycle)
        written = log.head()
    return log.head()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        log = EventsourcingLog.open_sqlite(data)
        t = time.perf_counter()
        head = make_log(log, args.events)
        made = time.perf_counter() - t

        t = time.perf_counter()
        count = sum(len(page) for page in _pages(log, head))
        baseline = time.perf_counter() - t

        runner = ProjectionRunner(data / "projections.sqlite", log)
        t = time.perf_counter()
        runner.rebuild()
        rebuild = time.perf_counter() - t
        t = time.perf_counter()
        verified = all(runner.verify_many(runner.projections).values())
        verify = time.perf_counter() - t
        audit_rows = runner.rows("SELECT count(*) FROM audit")[0][0]
        runner.close()
        log.close()
    print(
        json.dumps(
            {
                "benchmark": "projection_rebuild",
                "events": head,
                "log_build_seconds": round(made, 2),
                "projections": 5,
                "rebuild_seconds": round(rebuild, 2),
                "rebuild_events_per_s": round(head / rebuild),
                "baseline_read_decode_events_per_s": round(count / baseline),
                "ratio_to_baseline": round((head / rebuild) / (count / baseline), 3),
                "audit_rows": audit_rows,
                "verify_all_seconds": round(verify, 2),
                "verified_equal_to_rebuild": verified,
            }
        )
    )


def _pages(log: EventsourcingLog, head: int) -> list[list[object]]:
    pages, pos = [], 0
    while pos < head:
        page = log.read(pos + 1, 2000)
        if not page:
            break
        pages.append(page)
        pos = page[-1][0]
    return pages


if __name__ == "__main__":
    main()
