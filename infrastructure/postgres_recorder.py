"""eventsourcing's PostgreSQL application recorder, with one attempt per command.

The library retries every read and append 10 times, each attempt waiting for a pooled
connection (postgres.POOL_WAIT_S): a server that went away stalls a phase for ~20 s, long past
a short lock timeout, and the phase then dies of an expired lock instead of a lost connection.
Here a command fails at once with the connection: the phase fails (EventLogUnreachableError),
`prunelog run` waits for the log with backoff (infrastructure/reconnect.py), and the next cycle
records the phase as interrupted and resumes it, through events. A dead pooled connection is
still replaced transparently (POSTGRES_PRE_PING). Selected by the APPLICATION_RECORDER_TOPIC
in postgres.postgres_env; importing this module imports psycopg, so only PostgreSQL users
pay for it."""

from __future__ import annotations

import inspect
from typing import Any

from eventsourcing.postgres import PostgresApplicationRecorder


def _once(method: Any) -> Any:
    """The library's method without its retry decorator."""
    return inspect.unwrap(method)


class PrunelogPostgresRecorder(PostgresApplicationRecorder):
    insert_events = _once(PostgresApplicationRecorder.insert_events)
    select_events = _once(PostgresApplicationRecorder.select_events)
    select_notifications = _once(PostgresApplicationRecorder.select_notifications)
    max_notification_id = _once(PostgresApplicationRecorder.max_notification_id)


TOPIC = f"{__name__}:{PrunelogPostgresRecorder.__qualname__}"
