"""`prunelog status`: one screen of the current cycle, snapshot, lock, health and last cycle."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.markup import escape

from domain.cycle import PruneCycle, cycle_uuid
from infrastructure.cli_common import Context, console, table
from infrastructure.cli_history import group_settings
from infrastructure.render import plain


@click.command()
@click.option("--group", default=None, help="This pruner group of the log. [default: config's]")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(obj: Context, group: str | None, as_json: bool) -> None:
    """One screen: current cycle and phase, snapshot, lock holder, health, last cycle's stats."""
    from infrastructure.runtime import Runtime

    with Runtime(group_settings(obj, group)) as rt:
        runner = rt.projections()
        runner.catch_up()
        lock = rt.manager.lock_info()
        snap = rt.manager.current_snapshot
        cycle = None
        if snap is not None:
            cycle = rt.log.get(cycle_uuid(snap.group, snap.cycle_no), PruneCycle)
        health = {r["scope"]: dict(r) for r in runner.rows("SELECT * FROM health")}
        last = runner.rows(
            "SELECT cycle_no, phase, outcome, deleted, bytes_freed, started_at, ended_at "
            "FROM timeline WHERE grp=? AND cycle_no=(SELECT max(cycle_no) FROM timeline "
            "WHERE grp=? AND outcome != 'running') ORDER BY run",
            (rt.settings.group, rt.settings.group),
        )
        data = {
            "group": rt.settings.group,
            "log_head": rt.log.head(),
            "event_log": {"backend": rt.log.backend, "where": rt.log.where},
            "cycle": None
            if cycle is None
            else {
                "cycle": cycle.cycle_no,
                "state": cycle.state,
                "finished": cycle.finished,
                "snapshot": cycle.snapshot_id,
            },
            "snapshot": None
            if snap is None
            else {
                "id": snap.snapshot_id,
                "latest_order": snap.latest_order,
                "status": snap.status,
                "created_at": plain(snap.created_at),
            },
            "lock": {
                "holder": lock.owner,
                "phase": lock.phase,
                "since": plain(lock.locked_at),
                "expires_at": plain(lock.expires_at()),
            },
            "health": health.get("overall", {}).get("status", "healthy"),
            "alerts": health.get("overall", {}).get("detail"),
            "last_cycle": [dict(r) for r in last],
        }
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        _print_status(data)
    sys.exit(0 if data["health"] == "healthy" else 1)


def _print_status(d: dict[str, Any]) -> None:
    c, s, lk = d["cycle"], d["snapshot"], d["lock"]
    console.print(f"[bold]prunelog[/] group {d['group']} — log head #{d['log_head']}")
    console.print(f"event log: {d['event_log']['backend']} {escape(d['event_log']['where'])}")
    console.print(
        "cycle: "
        + (
            "none yet"
            if c is None
            else f"{c['cycle']} — {c['state']}{' (finished)' if c['finished'] else ''}"
        )
    )
    console.print(
        "snapshot: "
        + (
            "none"
            if s is None
            else f"{s['id']} at order {s['latest_order']} ({s['status']}, {s['created_at']})"
        )
    )
    console.print(
        "lock: "
        + (f"{lk['holder']} for {lk['phase']} until {lk['expires_at']}" if lk["holder"] else "free")
    )
    console.print(f"health: {d['health']}" + (f" — alerts: {d['alerts']}" if d["alerts"] else ""))
    if d["last_cycle"]:
        console.print(table("last finished cycle", d["last_cycle"]))
