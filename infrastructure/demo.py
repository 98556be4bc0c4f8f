"""`prunelog demo`: the real job on the embedded default, end to end, in about a minute.

A writer process plays the chain while prune cycles run beside it; afterwards an independent
traversal proves every protected root is whole and that the garbage is gone."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from domain.config import PruneConfig, SnapshotManagerConfig
from domain.sweeps import CycleReport
from infrastructure.audit_checks import StoreCheck, check_store
from infrastructure.config_file import CONFIG_FILE
from infrastructure.eventlog import STATE_FILE, ensure_data_dir
from infrastructure.progress import RichProgress
from infrastructure.render import describe, notifications
from infrastructure.runtime import Runtime, Settings
from infrastructure.state_store import SqliteStateStore
from infrastructure.workload import WorkloadWriter


@dataclass
class DemoOptions:
    initial_txs: int = 1500
    cycles: int = 4
    protection_orders: int = 150
    batch: int = 1000
    seed: int = 7
    writer_sleep_ms: float = 3.0


def run_demo(data_dir: Path, opts: DemoOptions, console: Console) -> int:
    demo_dir = ensure_data_dir(data_dir) / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)  # only the demo's own folder
    demo_dir.mkdir()
    # The demo's own settings, so that later commands on its directory (run, validate, ...)
    # keep its protection window; with the default one, the roots it pruned count as retained.
    (demo_dir / CONFIG_FILE).write_text(
        "# Written by `prunelog demo`: the settings its cycles ran with.\n[prune]\n"
        f"protection_orders = {opts.protection_orders}\ndelete_batch_size = {opts.batch}\n"
    )
    state_path = demo_dir / STATE_FILE
    console.print(f"[bold]prunelog demo[/] — data in {demo_dir}")

    with SqliteStateStore.open(state_path) as store:
        started = time.perf_counter()
        WorkloadWriter(store, opts.seed).run(opts.initial_txs)
        before_nodes, before_bytes = store.node_count(), store.total_bytes()
    console.print(
        f"wrote {opts.initial_txs} txs in {time.perf_counter() - started:.1f}s: "
        f"{before_nodes:,} nodes, {before_bytes:,} bytes"
    )

    writer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infrastructure.workload",
            "--db",
            str(state_path),
            "--txs",
            "0",
            "--seed",
            str(opts.seed + 1),
            "--sleep-ms",
            str(opts.writer_sleep_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    console.print(f"writer process {writer.pid} keeps writing while the pruner runs")
    settings = Settings(
        data_dir=demo_dir,
        snapshot=SnapshotManagerConfig(),
        prune=PruneConfig(protection_orders=opts.protection_orders, delete_batch_size=opts.batch),
    )
    per_phase: Counter[str] = Counter()
    seconds: dict[str, float] = dict.fromkeys(
        ("BuildReach", "SweepExpired", "IncrementalSweep"), 0.0
    )
    checks: list[StoreCheck] = []
    consumed = 0
    with Runtime(settings) as rt, SqliteStateStore.open(state_path) as store:
        for n in range(1, opts.cycles + 1):
            with RichProgress(console) as bars:
                rt.pruner.progress = bars
                report = rt.pruner.run_cycle()
            consumed += _add(report, per_phase, seconds)
            check = check_store(store, report.latest_order - opts.protection_orders)
            checks.append(check)
            console.print(
                f"cycle {n}: snapshot {report.snapshot_id} at order {report.latest_order}, "
                f"reach {report.reach_count:,}, deleted "
                + ", ".join(f"{p} {s.deleted:,}" for p, s in report.phases.items())
                + f"; protected roots whole: {'yes' if not check.violations else 'NO'}"
            )
        writer.send_signal(signal.SIGTERM)
        out, _ = writer.communicate(timeout=60)
        written = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        console.print(f"writer stopped after {written.get('txs', '?')} more txs")
        for _ in range(2):  # with the writer stopped, two cycles must leave no garbage
            report = rt.pruner.run_cycle()
            consumed += _add(report, per_phase, seconds)
        final = check_store(store, report.latest_order - opts.protection_orders)
        checks.append(final)
        after_nodes, after_bytes = store.node_count(), store.total_bytes()
        _print_events(rt, console)
        log_path = f"{rt.log.backend} {rt.log.where}"

    table = Table(title="prunelog demo summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("nodes before → after", f"{before_nodes:,} → {after_nodes:,}")
    table.add_row("bytes before → after", f"{before_bytes:,} → {after_bytes:,}")
    for phase in ("BuildReach", "SweepExpired", "IncrementalSweep"):
        table.add_row(f"{phase}: deleted / time", f"{per_phase[phase]:,} / {seconds[phase]:.2f}s")
    table.add_row("IncrementalSweep: stale entries consumed", f"{consumed:,}")
    table.add_row("unreachable nodes left (writer stopped)", f"{final.unreachable_stored:,}")
    violations = sum(c.violations for c in checks)
    table.add_row("violations (missing or corrupt nodes)", str(violations))
    console.print(table)
    console.print(
        "IncrementalSweep deletes few nodes here: the nodes its stale entries name were garbage "
        "of expired roots, which SweepExpired deletes first in the same cycle."
    )
    console.print(f"event log: {log_path}")
    return 1 if violations or final.unreachable_stored else 0


def _add(report: CycleReport, per_phase: Counter[str], seconds: dict[str, float]) -> int:
    """Adds a cycle's deletes and times; returns the stale entries IncrementalSweep consumed
    (its `visited`: every entry it reads, it removes)."""
    for phase, stats in report.phases.items():
        per_phase[phase] += stats.deleted
        seconds[phase] += stats.seconds
    incremental = report.phases.get("IncrementalSweep")
    return incremental.visited if incremental is not None else 0


def _print_events(rt: Runtime, console: Console) -> None:
    lines = [describe(rt.log, n) for n in notifications(rt.log)]
    kinds = Counter(line.split()[1] for line in lines)
    console.print(f"\n[bold]event log[/]: {len(lines)} events — the last cycle, one per line:")
    last_created = max(i for i, line in enumerate(lines) if "Snapshot.Created" in line)
    for line in lines[last_created - 1 :]:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print("events by type: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
