"""Read-model commands: projections, validate, health, locks, snapshots, events; and the
demo's summary for `demo --json`."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click

from domain.phases import PrunePhase
from domain.validator import SnapshotValidator
from infrastructure.cli_common import Context, console, emit, err, table
from infrastructure.config_file import load_settings
from infrastructure.eventlog import STATE_FILE, EventsourcingLog
from infrastructure.render import describe, event_record, notifications
from infrastructure.runtime import Runtime
from infrastructure.state_store import SqliteStateStore


@click.group()
def projections() -> None:
    """Read models: status against the log head, and rebuild."""


@projections.command("status")
@click.option("--fast", is_flag=True, help="Positions only; skip comparing with a rebuild.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def projections_status(obj: Context, fast: bool, as_json: bool) -> None:
    """Each projection's position against the log head; flags one that differs from a rebuild."""
    with Runtime(load_settings(obj.data_dir, obj.config)) as rt:
        statuses = rt.projections().status(verify=not fast)
    rows = [
        {
            "projection": s.name,
            "position": s.position,
            "head": s.head,
            "lag": s.lag,
            "tables": "ok" if s.tables_ok else "MISSING",
            "matches rebuild": {None: "not checked", True: "yes", False: "NO"}[s.consistent],
        }
        for s in statuses
    ]
    emit(as_json, rows, table("projections", rows))
    if not all(s.ok for s in statuses):
        err.print("a projection differs from the log: run `prunelog projections rebuild`")
        sys.exit(1)


@projections.command("rebuild")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def projections_rebuild(obj: Context, names: tuple[str, ...], as_json: bool) -> None:
    """Drop projections (all, or NAMES) and replay the whole log into them."""
    with Runtime(load_settings(obj.data_dir, obj.config)) as rt:
        try:
            applied = rt.projections().rebuild(list(names) or None)
        except KeyError as exc:
            raise click.UsageError(str(exc.args[0])) from None
    if as_json:
        click.echo(json.dumps({"rebuilt": applied}))
        return
    for name, count in applied.items():
        console.print(f"rebuilt {name}: {count:,} events")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def validate(obj: Context, as_json: bool) -> None:
    """Run the comprehensive validation; exit 1 if any check failed."""
    with Runtime(load_settings(obj.data_dir, obj.config)) as rt:
        validator = SnapshotValidator(
            rt.manager, rt.recovery, history=rt.log, reach_store=rt.reach_store
        )
        report = validator.run_comprehensive_validation()
    if as_json:
        click.echo(json.dumps({"passed": report.passed, "results": report.as_dicts()}, indent=2))
    else:
        click.echo(report.detailed_report())
    sys.exit(0 if report.passed else 1)


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def health(obj: Context, as_json: bool) -> None:
    """Health per phase and overall, with the active alerts; exit 1 unless healthy."""
    with Runtime(load_settings(obj.data_dir, obj.config)) as rt:
        runner = rt.projections()
        runner.catch_up(["health"])
        rows = [dict(r) for r in runner.rows("SELECT * FROM health ORDER BY scope")]
    emit(as_json, rows, table("health", rows))
    overall = next((r["status"] for r in rows if r["scope"] == "overall"), "healthy")
    sys.exit(0 if overall == "healthy" else 1)


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def locks(obj: Context, as_json: bool) -> None:
    """Who holds each group's phase lock, since when, and when it expires."""
    with Runtime(load_settings(obj.data_dir, obj.config)) as rt:
        runner = rt.projections()
        runner.catch_up(["locks"])
        rows = [dict(r) for r in runner.rows("SELECT * FROM locks ORDER BY grp")]
    emit(as_json, rows, table("locks", rows))


@click.command()
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def snapshots(obj: Context, limit: int, as_json: bool) -> None:
    """The snapshot catalog, newest first."""
    with Runtime(load_settings(obj.data_dir, obj.config)) as rt:
        runner = rt.projections()
        runner.catch_up(["snapshots"])
        rows = [
            dict(r)
            for r in runner.rows(
                "SELECT grp, snapshot_id, cycle_no, latest_order, status, reach_count, created_at "
                "FROM snapshots ORDER BY created_at DESC LIMIT ?",
                (limit,),
            )
        ]
    emit(as_json, rows, table("snapshots", rows))


@click.command()
@click.option("--start", default=1, show_default=True, help="First log position.")
@click.option("--limit", default=0, help="At most this many events (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines, as `prunelog export` writes.")
@click.pass_obj
def events(obj: Context, start: int, limit: int, as_json: bool) -> None:
    """Print the event log, one line per event."""
    settings = load_settings(obj.data_dir, obj.config)
    with EventsourcingLog.open(obj.data_dir, settings.resolved_event_store()) as log:
        for i, n in enumerate(notifications(log, start), start=1):
            if as_json:
                record = event_record(n.id, log.app.mapper.to_domain_event(n))
                click.echo(json.dumps(record))
            else:
                click.echo(describe(log, n))
            if limit and i >= limit:
                break


def demo_summary(demo_dir: Path, code: int) -> dict[str, Any]:
    """`demo --json`: what the demo's table shows, read back from its log and its store."""
    deleted: Counter[str] = Counter()
    freed: Counter[str] = Counter()
    cycles = consumed = 0
    with EventsourcingLog.open_sqlite(demo_dir) as log:
        for e in log.events():
            kind = type(e).__qualname__
            if kind in ("PruneCycle.NodesSwept", "PruneCycle.BatchRecovered"):
                deleted[e.phase] += e.count
                freed[e.phase] += e.bytes_freed
            cycles += kind == "PruneCycle.Completed"
            if kind == "PruneCycle.PhaseCompleted" and e.phase == "IncrementalSweep":
                consumed += e.stats.get("visited", 0)
        head = log.head()
    with SqliteStateStore.open(demo_dir / STATE_FILE) as store:
        nodes, size = store.node_count(), store.total_bytes()
    return {
        "data_dir": str(demo_dir),
        "passed": code == 0,
        "exit_code": code,
        "cycles_completed": cycles,
        "deleted": {p.value: deleted[p.value] for p in PrunePhase},
        "bytes_freed": {p.value: freed[p.value] for p in PrunePhase},
        "stale_entries_consumed": consumed,
        "nodes_after": nodes,
        "bytes_after": size,
        "log_head": head,
    }
