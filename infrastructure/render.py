"""One readable line per stored event, for the demo and `prunelog events`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from eventsourcing.persistence import Notification

from infrastructure.eventlog import EventsourcingLog

_HIDDEN = {"originator_id", "originator_version", "timestamp", "originator_topic"}


def _short(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()[:12]
    if isinstance(value, datetime):
        return value.strftime("%H:%M:%S.%f")[:-3]
    if isinstance(value, list) and len(value) > 3:
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and len(value) > 24:
        return value[:20] + "…"
    return str(value)


def describe(log: EventsourcingLog, n: Notification) -> str:
    event = log.app.mapper.to_domain_event(n)
    fields = {k: v for k, v in vars(event).items() if k not in _HIDDEN}
    name = n.topic.removeprefix("prunelog:")
    body = " ".join(f"{k}={_short(v)}" for k, v in fields.items())
    return f"#{n.id:<6} {name:<28} v{n.originator_version:<4} {body}"


def notifications(log: EventsourcingLog, start: int = 1) -> Iterator[Notification]:
    while True:
        page = log.app.recorder.select_notifications(start=start, limit=500)
        if not page:
            return
        yield from page
        start = page[-1].id + 1


def plain(value: Any) -> Any:
    """A JSON-ready copy: bytes as hex, datetimes as ISO 8601, UUIDs and enums as strings."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


def event_record(position: int, event: Any) -> dict[str, Any]:
    """One event as the export and --json views show it."""
    fields = {k: plain(v) for k, v in vars(event).items() if k not in _HIDDEN}
    return {
        "position": position,
        "aggregate_id": str(event.originator_id),
        "aggregate": type(event).__qualname__.split(".")[0],
        "type": type(event).__qualname__,
        "version": event.originator_version,
        "time": plain(event.timestamp),
        "fields": fields,
    }


def line(record: dict[str, Any]) -> str:
    body = " ".join(f"{k}={_short(v)}" for k, v in record["fields"].items())
    return f"#{record['position']:<6} {record['type']:<28} v{record['version']:<4} {body}"
