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
