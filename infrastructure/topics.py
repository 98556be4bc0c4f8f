"""Stable topics. Stored events name a topic from this table, never a module path, so a log
survives refactoring and a tampered topic can never make us import (and run) a module."""

from __future__ import annotations

import dataclasses
from typing import Any

from eventsourcing.domain import Aggregate, CanMutateAggregate
from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent
from eventsourcing.utils import get_topic

from domain.cycle import PruneCycle
from domain.errors import CorruptEventError, UnknownTopicError
from domain.lock import PhaseLock
from domain.recovery import Recovery
from domain.snapshot import Snapshot

AGGREGATES: tuple[type[Aggregate], ...] = (Snapshot, PhaseLock, PruneCycle, Recovery)


def _event_classes() -> dict[str, type[Any]]:
    table: dict[str, type[Any]] = {}
    for agg in AGGREGATES:
        for name, value in vars(agg).items():
            if (
                name != "Event"
                and isinstance(value, type)
                and issubclass(value, CanMutateAggregate)
            ):
                table[f"prunelog:{agg.__name__}.{name}"] = value
    return table


# stable topic -> class, and back. Version suffixes go here when an event changes shape.
TOPICS: dict[str, type[Any]] = _event_classes()
_BY_CLASS: dict[type[Any], str] = {cls: topic for topic, cls in TOPICS.items()}
# A Created event's state names its aggregate class, and the library imports that name on
# replay: only these may appear there.
_AGGREGATE_TOPICS: frozenset[str] = frozenset(get_topic(agg) for agg in AGGREGATES)


class StableTopicMapper(Mapper[Any]):
    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        stored = super().to_stored_event(domain_event)
        try:
            topic = _BY_CLASS[type(domain_event)]
        except KeyError:
            raise UnknownTopicError(
                f"{type(domain_event).__qualname__} has no stable topic; add it to TOPICS"
            ) from None
        return StoredEvent(stored.originator_id, stored.originator_version, topic, stored.state)

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        cls = TOPICS.get(stored_event.topic)
        if cls is None:
            raise UnknownTopicError(
                f"stored event {stored_event.originator_id} v{stored_event.originator_version} "
                f"has topic {stored_event.topic!r}, which is not a prunelog event; refusing it"
            )
        internal = StoredEvent(
            stored_event.originator_id,
            stored_event.originator_version,
            get_topic(cls),
            stored_event.state,
        )
        where = f"stored event {stored_event.originator_id} v{stored_event.originator_version}"
        try:
            domain_event = super().to_domain_event(internal)
        except MapperDeserialisationError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise CorruptEventError(f"{where} ({stored_event.topic}) is malformed: {exc}") from None
        state = vars(domain_event)
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in state)
        if missing:
            raise CorruptEventError(
                f"{where} ({stored_event.topic}) is missing field(s): {', '.join(missing)}"
            )
        origin = state.get("originator_topic")
        if origin is not None and origin not in _AGGREGATE_TOPICS:
            raise UnknownTopicError(
                f"{where} names aggregate class {origin!r}, which is not a prunelog aggregate; "
                "refusing it"
            )
        return domain_event
