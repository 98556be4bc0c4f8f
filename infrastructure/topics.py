"""Stable topics. Stored events name a topic from this table, never a module path, so a log
survives refactoring and a tampered topic can never make us import (and run) a module."""

from __future__ import annotations

from typing import Any

from eventsourcing.domain import Aggregate, CanMutateAggregate
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic

from domain.cycle import PruneCycle
from domain.errors import UnknownTopicError
from domain.lock import PhaseLock
from domain.snapshot import Snapshot

AGGREGATES: tuple[type[Aggregate], ...] = (Snapshot, PhaseLock, PruneCycle)


def _event_classes() -> dict[str, type[Any]]:
    table: dict[str, type[Any]] = {}
    for agg in AGGREGATES:
        for name, value in vars(agg).items():
            if name != "Event" and isinstance(value, type) and issubclass(value, CanMutateAggregate):
                table[f"prunelog:{agg.__name__}.{name}"] = value
    return table


# stable topic -> class, and back. Version suffixes go here when an event changes shape.
TOPICS: dict[str, type[Any]] = _event_classes()
_BY_CLASS: dict[type[Any], str] = {cls: topic for topic, cls in TOPICS.items()}


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
        return super().to_domain_event(internal)
