"""History commands: replay (with filters, time travel and a legality check) and export.
They read the log itself; nothing here writes to it. `audit` lives in cli_audit, `status`
in cli_status."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import click

from domain.config import RecoveryConfig
from domain.cycle import PruneCycle
from domain.errors import AggregateNotFoundError
from domain.health import HealthMonitor
from domain.lock import PhaseLock, lock_uuid
from infrastructure.cli_common import Context, console, emit, table, usage_error
from infrastructure.config_file import load_settings
from infrastructure.eventlog import EventsourcingLog
from infrastructure.render import event_record, line, plain
from infrastructure.runtime import Settings


def _events(log: EventsourcingLog, until: int | None = None) -> Iterator[tuple[int, Any]]:
    pos = 0
    while True:
        page = log.read(pos + 1, 1000)
        if not page:
            return
        for p, e in page:
            if until is not None and p > until:
                return
            yield p, e
        pos = page[-1][0]


def _parse_time(value: str, option: str | None = None) -> datetime:
    hint = f"'{option}'" if option else None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time", param_hint=hint) from None
    if t.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no timezone (add +00:00 or Z)", param_hint=hint)
    return t


def _position_at(log: EventsourcingLog, at: str) -> int:
    """`--at` takes a log position or an ISO time (the last event at or before it)."""
    if at.isdigit():
        return int(at)
    try:
        when, last = _parse_time(at), 0
    except click.BadParameter:
        raise click.BadParameter(
            f"{at!r} is neither a log position nor an ISO 8601 time with a timezone",
            param_hint="'--at'",
        ) from None
    for pos, e in _events(log):
        if e.timestamp > when:
            break
        last = pos
    return last


def _matches(
    e: Any,
    cycle: int | None,
    phase: str | None,
    kind: str | None,
    since: datetime | None,
    until: datetime | None,
    cycle_ids: set[Any],
) -> bool:
    name = type(e).__qualname__
    if kind and kind.lower() not in name.lower():
        return False
    if phase and getattr(e, "phase", None) != phase:
        return False
    if (since and e.timestamp < since) or (until and e.timestamp > until):
        return False
    if cycle is not None:
        return e.originator_id in cycle_ids or getattr(e, "cycle_no", None) == cycle
    return True


class Groups:
    """Which pruner group each aggregate belongs to (its Created event names it), so that the
    commands can show one group of a fleet-wide log."""

    def __init__(self, group: str | None) -> None:
        self.group = group
        self.of: dict[Any, str] = {}

    def keep(self, e: Any) -> bool:
        named = getattr(e, "group", None)
        if isinstance(named, str):
            self.of.setdefault(e.originator_id, named)
        return self.group is None or self.of.get(e.originator_id) == self.group


def require_group(settings: Settings) -> None:
    """An explicit --group must name a group the log knows; a read command never creates it."""
    with EventsourcingLog.open(settings.data_dir, settings.resolved_event_store()) as log:
        try:
            log.get(lock_uuid(settings.group), PhaseLock)
        except AggregateNotFoundError:
            usage_error(f"no pruner group {settings.group!r} in the event log {log.where}")


def group_settings(obj: Context, group: str | None) -> Settings:
    """The config's settings; with --group, for that group of the log."""
    settings = load_settings(obj.data_dir, obj.config)
    if group is not None:
        settings.group = group
        require_group(settings)
    return settings


def state_at(
    log: EventsourcingLog, position: int, config: RecoveryConfig, group: str | None = None
) -> dict[str, Any]:
    """Locks, health and each group's latest cycle as they were at `position` (time travel);
    with `group`, that group's only."""
    aggregates: dict[Any, Any] = {}
    monitor = HealthMonitor(config)
    groups = Groups(group)
    for _pos, e in _events(log, until=position):
        if not groups.keep(e):
            continue
        aggregates[e.originator_id] = e.mutate(aggregates.get(e.originator_id))
        monitor.apply(e)
    locks = [a for a in aggregates.values() if isinstance(a, PhaseLock)]
    cycles: dict[str, PruneCycle] = {}
    for a in aggregates.values():
        if isinstance(a, PruneCycle) and (
            a.group not in cycles or a.cycle_no > cycles[a.group].cycle_no
        ):
            cycles[a.group] = a
    report = monitor.report()
    return {
        "position": position,
        "locks": [
            {
                "group": lk.group,
                "holder": lk.owner,
                "phase": lk.phase,
                "snapshot": lk.snapshot_id,
                "since": plain(lk.locked_at),
            }
            for lk in locks
        ],
        "cycles": [
            {
                "group": g,
                "cycle": c.cycle_no,
                "state": c.state,
                "snapshot": c.snapshot_id,
                "finished": c.finished,
            }
            for g, c in sorted(cycles.items())
        ],
        "health": {
            "overall": report.overall.value,
            "phases": {k: v.status.value for k, v in report.phases.items()},
            "alerts": [a.name for a in report.active_alerts],
        },
    }


@click.command()
@click.option("--cycle", type=int, help="Only this cycle's events (and its snapshots').")
@click.option("--phase", help="Only events of this phase (BuildReach, SweepExpired, ...).")
@click.option("--type", "kind", help="Only event types containing this, e.g. NodesSwept.")
@click.option("--since", help="ISO time with timezone; events at or after it.")
@click.option("--until", help="ISO time with timezone; events at or before it.")
@click.option(
    "--group",
    default=None,
    help="Only this pruner group's events (all groups of the log by default; --cycle N "
    "means the config's group's cycle N unless --group names another).",
)
@click.option("--at", "at", help="Show locks, health and phase as of this log POSITION or TIME.")
@click.option("--check", is_flag=True, help="Re-run the phase machine over the whole log.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def replay(
    obj: Context,
    cycle: int | None,
    phase: str | None,
    kind: str | None,
    since: str | None,
    until: str | None,
    group: str | None,
    at: str | None,
    check: bool,
    as_json: bool,
) -> None:
    """The event history as a readable timeline; time travel with --at; --check for legality."""
    settings = load_settings(obj.data_dir, obj.config)
    with EventsourcingLog.open(obj.data_dir, settings.resolved_event_store()) as log:
        if check:
            _check(log, as_json)
        if at is not None:
            state = state_at(log, _position_at(log, at), settings.recovery, group)
            emit(as_json, state, None) if as_json else _print_state(state)
            return
        from domain.cycle import cycle_uuid

        grp = group or settings.group
        ids = {cycle_uuid(grp, cycle)} if cycle is not None else set()
        lo = _parse_time(since, "--since") if since else None
        hi = _parse_time(until, "--until") if until else None
        groups = Groups(group)
        for pos, e in _events(log):
            if groups.keep(e) and _matches(e, cycle, phase, kind, lo, hi, ids):
                record = event_record(pos, e)
                click.echo(json.dumps(record) if as_json else line(record))


def _check(log: EventsourcingLog, as_json: bool) -> None:
    aggregates: dict[Any, Any] = {}
    count = 0
    for pos, e in _events(log):
        count += 1
        try:
            aggregates[e.originator_id] = e.mutate(aggregates.get(e.originator_id))
        except Exception as exc:
            result = {
                "legal": False,
                "position": pos,
                "event": type(e).__qualname__,
                "error": f"{type(exc).__name__}: {exc}",
            }
            click.echo(
                json.dumps(result)
                if as_json
                else f"ILLEGAL at #{pos} {result['event']}: {result['error']}"
            )
            sys.exit(1)
    result = {"legal": True, "events": count}
    click.echo(json.dumps(result) if as_json else f"legal: {count:,} events replay cleanly")
    sys.exit(0)


def _print_state(state: dict[str, Any]) -> None:
    console.print(f"[bold]as of log position {state['position']}[/]")
    for rows, title in ((state["locks"], "locks"), (state["cycles"], "cycles")):
        console.print(table(title, rows))
    h = state["health"]
    console.print(f"health: {h['overall']} {h['phases']} alerts: {h['alerts'] or 'none'}")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def export(obj: Context, as_json: bool) -> None:
    """The log as JSON Lines: position, aggregate, type, version, time and fields per event."""
    del as_json  # always JSON Lines; the flag is accepted for symmetry with other commands
    settings = load_settings(obj.data_dir, obj.config)
    with EventsourcingLog.open(obj.data_dir, settings.resolved_event_store()) as log:
        for pos, e in _events(log):
            click.echo(json.dumps(event_record(pos, e)))
