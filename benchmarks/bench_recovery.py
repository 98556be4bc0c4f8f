"""Validation overhead and recovery time. Prints ONE JSON object.

1. Validation overhead on a store of >= 1M nodes: SnapshotValidator.run_comprehensive_validation()
   plus the per-phase validation a cycle runs (create_snapshot's checks and, in each
   lock_snapshot, the integrity/age check and the chain-state check), as a share of one full
   run_cycle() (target < 1%). Same-run baseline: the same cycle on a fresh copy of the store
   with SnapshotManagerConfig(enable_validation=False).
2. Recovery time to healthy: a reach set corrupted once, right after BuildReach; the time from
   the start of that failing cycle until health_from(log) is healthy again, i.e. through
   min_healthy_cycles completed cycles (target < 10 s). Same-run baseline: the same number
   of cycles without the fault.

The 1M-node store is built once with the bulk writer and cached under bench-data/ (git-ignored);
a compatible store another benchmark cached there (>= 1M nodes, a roots table) is reused. The
cache is never pruned: every run works on a copy.

Part 2 runs by default on a fresh small store (--recovery-txs, same workload shape): a cycle on
the 1M store takes minutes, and health needs min_healthy_cycles of them, so the 10 s target is
only meaningful on a small store. `--recovery-txs 0` runs it on the big store instead.

Usage: python benchmarks/bench_recovery.py [--part all|overhead|recovery] [--min-nodes 1000000]
       [--protection 1000] [--recovery-txs 150] [--recovery-protection 50] [--repeat 200]
Progress goes to stderr; the JSON object to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from domain.config import PruneConfig, RecoveryConfig, SnapshotManagerConfig
from domain.health import HealthStatus, health_from
from domain.ports import ReachSet, ReachStorePort
from domain.pruning import Pruner
from domain.validator import SnapshotValidator
from infrastructure.eventlog import STATE_FILE
from infrastructure.runtime import Runtime, Settings
from infrastructure.sqlite_nodes import FileReachStore
from infrastructure.state_store import SqliteStateStore
from infrastructure.workload import WorkloadWriter

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench-data"
WORKLOAD = {"txs": 5000, "seed": 1, "keys": 20000, "ops_per_tx": 64, "batch": 50}
OWN_CACHE = CACHE / "state-txs5000-seed1-keys20000-ops64.sqlite"
STARTED = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


# --- the cached big store --------------------------------------------------------------------


def count_nodes(path: Path) -> int | None:
    """Nodes in a state store file, or None if it is not one (or is being written)."""
    if Path(f"{path}-wal").exists() and Path(f"{path}-wal").stat().st_size > 0:
        return None
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            if not {"nodes", "roots"} <= tables:
                return None
            return int(db.execute("SELECT COUNT(*) FROM nodes").fetchone()[0])
    except sqlite3.DatabaseError:
        return None


def cached_store(min_nodes: int) -> tuple[Path, int, bool]:
    """(path, nodes, reused): a cached store with >= min_nodes nodes, built if there is none."""
    CACHE.mkdir(exist_ok=True)
    others = [*CACHE.glob("*.sqlite"), *CACHE.glob("*/state.sqlite")]  # e.g. bench_prune's
    others = [p for p in others if p != OWN_CACHE and not p.parent.name.startswith("tmp")]
    candidates = [OWN_CACHE, *sorted(others)]
    for path in candidates:
        if path.exists() and (nodes := count_nodes(path) or 0) >= min_nodes:
            return path, nodes, path != OWN_CACHE
    say(f"no cached store with >= {min_nodes:,} nodes; building {OWN_CACHE.name} (minutes)")
    building = OWN_CACHE.with_name("building-" + OWN_CACHE.name)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{building}{suffix}").unlink(missing_ok=True)
    w = WORKLOAD
    subprocess.run(
        [
            sys.executable,
            "-m",
            "infrastructure.workload",
            "--db",
            str(building),
            "--txs",
            str(w["txs"]),
            "--seed",
            str(w["seed"]),
            "--keys",
            str(w["keys"]),
            "--ops-per-tx",
            str(w["ops_per_tx"]),
            "--batch",
            str(w["batch"]),
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with closing(sqlite3.connect(building)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.replace(building, OWN_CACHE)
    nodes = count_nodes(OWN_CACHE) or 0
    if nodes < min_nodes:
        raise SystemExit(f"built {OWN_CACHE} has {nodes:,} nodes < {min_nodes:,}")
    return OWN_CACHE, nodes, False


def copy_store(src: Path, data_dir: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    dst = data_dir / STATE_FILE
    shutil.copyfile(src, dst)
    return dst


# --- part 1: validation overhead -------------------------------------------------------------


def per_call(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of one call."""
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def timed_cycle(settings: Settings) -> tuple[Runtime, float, Any]:
    rt = Runtime(settings, owner="bench")
    t = time.perf_counter()
    report = rt.pruner.run_cycle()
    seconds = time.perf_counter() - t
    say(f"run_cycle on {settings.data_dir.name}: {seconds:.2f} s")
    return rt, seconds, report


def phase_seconds(report: Any) -> dict[str, float]:
    return {name: round(stats.seconds, 3) for name, stats in report.phases.items()}


def validation_overhead(store: Path, work: Path, protection: int, repeat: int) -> dict[str, Any]:
    prune = PruneConfig(protection_orders=protection)
    on = Settings(data_dir=work / "validated", prune=prune)
    off = Settings(
        data_dir=work / "unvalidated",
        prune=prune,
        snapshot=SnapshotManagerConfig(enable_validation=False),
    )
    copy_store(store, on.data_dir)
    copy_store(store, off.data_dir)

    rt_off, cycle_off_s, report_off = timed_cycle(off)
    rt_off.close()
    rt, cycle_s, report = timed_cycle(on)
    try:
        m = rt.manager
        validator = SnapshotValidator(m, rt.recovery, history=rt.log, reach_store=rt.reach_store)
        t = time.perf_counter()
        validation = validator.run_comprehensive_validation()
        comprehensive_s = time.perf_counter() - t
        assert validation.passed, validation.detailed_report()
        say(f"run_comprehensive_validation: {comprehensive_s:.3f} s")

        # The per-phase validation, as the manager runs it: create_snapshot's three checks, and
        # in each lock_snapshot the integrity/age check plus (with validation on) the chain check.
        snapshot = m._current(m._lock())
        now = m.clock.now()
        create_checks_s = per_call(lambda: m._checks(snapshot), repeat)

        def lock_checks() -> None:
            snapshot.ensure_usable(now, m.config.max_snapshot_age_ms, m.hasher)
            m._ensure_on_chain(snapshot)

        lock_checks_s = per_call(lock_checks, repeat)
        locks = len(report.phases) - 1  # every phase after BuildReach locks the snapshot
        per_phase_s = create_checks_s + locks * lock_checks_s
        events = rt.log.head()
    finally:
        rt.close()
    total_validation_s = comprehensive_s + per_phase_s
    return {
        "store_nodes_before": count_nodes(store),
        "protection_orders": protection,
        "cycle": {
            "latest_order": report.latest_order,
            "reach_count": report.reach_count,
            "deleted": sum(p.deleted for p in report.phases.values()),
            "events_in_log": events,
            "phase_s": phase_seconds(report),
            "baseline_phase_s": phase_seconds(report_off),
        },
        "run_cycle_s": round(cycle_s, 3),
        "baseline_run_cycle_without_validation_s": round(cycle_off_s, 3),
        "comprehensive_validation_s": round(comprehensive_s, 4),
        "per_phase_validation_s": round(per_phase_s, 6),
        "per_phase_validation_detail_ms": {
            "create_snapshot_checks": round(create_checks_s * 1000, 4),
            "lock_snapshot_checks": round(lock_checks_s * 1000, 4),
            "lock_snapshot_calls": locks,
        },
        "validation_s": round(total_validation_s, 4),
        "validation_share_of_cycle_pct": round(100 * total_validation_s / cycle_s, 3),
        "target_pct": 1.0,
        "meets_target": total_validation_s / cycle_s < 0.01,
    }


# --- part 2: recovery time to healthy --------------------------------------------------------


class CorruptOnce:
    """A ReachStorePort over FileReachStore that truncates the first reach set it saves."""

    def __init__(self, inner: FileReachStore) -> None:
        self.inner = inner
        self.armed = True

    def new(self) -> ReachSet:
        return self.inner.new()

    def save(self, snapshot_id: int, reach: ReachSet) -> str:
        digest = self.inner.save(snapshot_id, reach)
        if self.armed:
            self.armed = False
            path = self.inner.path(snapshot_id, digest)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return digest

    def load(self, snapshot_id: int, digest: str) -> ReachSet:
        return self.inner.load(snapshot_id, digest)


def until_healthy(
    rt: Runtime, pruner: Pruner, config: RecoveryConfig, cycles: int | None = None
) -> dict[str, Any]:
    """Cycles from now until health_from(log) is healthy (or exactly `cycles` cycles)."""
    t = time.perf_counter()
    took: list[float] = []
    while True:
        c = time.perf_counter()
        pruner.run_cycle()
        took.append(time.perf_counter() - c)
        healthy = health_from(rt.log.events(), config).overall == HealthStatus.HEALTHY
        if (cycles is None and healthy) or len(took) == cycles:
            break
        if len(took) > 10 * config.min_healthy_cycles:
            raise SystemExit("health never returned to healthy")
    return {"seconds": time.perf_counter() - t, "cycles": took, "healthy": healthy}


def recovery_time(store: Path, work: Path, protection: int, label: str) -> dict[str, Any]:
    """The faulty run first; then the baseline runs as many cycles without the fault."""
    config = RecoveryConfig()
    out: dict[str, Any] = {"store": label, "min_healthy_cycles": config.min_healthy_cycles}
    cycles: int | None = None
    for name, faulty in (("with_corruption", True), ("baseline_same_cycles_without_fault", False)):
        settings = Settings(
            data_dir=work / f"recovery-{name}",
            prune=PruneConfig(protection_orders=protection),
            recovery=config,
        )
        copy_store(store, settings.data_dir)
        with Runtime(settings, owner="bench") as rt:
            reach: ReachStorePort = CorruptOnce(rt.reach_store) if faulty else rt.reach_store
            pruner = Pruner(rt.manager, rt.nodes, reach, settings.prune, recovery=rt.recovery)
            run = until_healthy(rt, pruner, config, cycles)
            kinds = [type(e).__qualname__ for e in rt.log.events()]
        cycles = len(run["cycles"])
        say(f"recovery {name}: {cycles} cycles, {run['seconds']:.2f} s, healthy={run['healthy']}")
        result: dict[str, Any] = {
            "seconds": round(run["seconds"], 3),
            "cycles": cycles,
            "cycle_s": [round(s, 3) for s in run["cycles"]],
            "healthy_at_end": run["healthy"],
        }
        if faulty:
            result["rolled_back"] = kinds.count("PruneCycle.RolledBack")
            result["snapshots_invalidated"] = kinds.count("Snapshot.Invalidated")
            result["target_s"] = 10.0
            result["meets_target"] = run["seconds"] < 10.0
        out[name] = result
    extra = out["with_corruption"]["seconds"] - out["baseline_same_cycles_without_fault"]["seconds"]
    out["recovery_overhead_s"] = round(extra, 3)  # the rollback and the second BuildReach
    return out


def small_store(path: Path, txs: int) -> Path:
    """The big store's workload shape (keys, ops per tx), fewer txs."""
    with SqliteStateStore.open(path) as store:
        WorkloadWriter(
            store, seed=WORKLOAD["seed"], keys=WORKLOAD["keys"], ops_per_tx=WORKLOAD["ops_per_tx"]
        ).run(txs, batch=WORKLOAD["batch"])
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["all", "overhead", "recovery"], default="all")
    parser.add_argument("--min-nodes", type=int, default=1_000_000)
    parser.add_argument("--protection", type=int, default=1_000, help="protection_orders")
    parser.add_argument(
        "--recovery-txs",
        type=int,
        default=150,
        help="part 2 on a fresh store of this many txs (0: on the big store)",
    )
    parser.add_argument("--recovery-protection", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=200, help="samples per check timing")
    args = parser.parse_args()

    out: dict[str, Any] = {"benchmark": "recovery", "cpus": os.cpu_count()}
    out["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    big = args.part in {"overhead", "all"} or not args.recovery_txs
    if big:
        store, nodes, reused = cached_store(args.min_nodes)
        out["store"] = {
            "path": str(store.relative_to(ROOT)),
            "nodes": nodes,
            "reused_cache": reused,
            "workload": WORKLOAD,
        }
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        work = Path(tmp)
        if args.part in ("all", "overhead"):
            out["validation_overhead"] = validation_overhead(
                store, work, args.protection, args.repeat
            )
        if args.part in ("all", "recovery"):
            if args.recovery_txs:
                small = small_store(work / "small.sqlite", args.recovery_txs)
                label = (
                    f"fresh store of {args.recovery_txs} txs ({count_nodes(small):,} nodes), "
                    "same workload shape; the 1M store would need minutes per cycle"
                )
                out["recovery_to_healthy"] = recovery_time(
                    small, work, args.recovery_protection, label
                )
            else:
                out["recovery_to_healthy"] = recovery_time(
                    store, work, args.protection, f"{nodes:,} nodes"
                )
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
