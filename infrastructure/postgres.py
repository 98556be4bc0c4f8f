"""The PostgreSQL event store: eventsourcing's postgres module over psycopg 3, chosen by a
`postgresql://` URL (config `event_store` or PRUNELOG_EVENT_STORE). Only this module and
eventlog.py know which backend is in use."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from domain.errors import ConfigError, EventLogError, EventLogUnreachableError

SCHEMES = ("postgresql", "postgres")
# Seconds to wait for a connection before the open fails with a clear error (`run` retries).
CONNECT_TIMEOUT_S = 5
# Seconds a command waits for a pooled connection when the server has gone away, before
# EventLogUnreachableError: a dropped connection fails the phase promptly (through events,
# once the log is back) instead of stalling it past its lock's timeout.
POOL_WAIT_S = 2
RECORDER_TOPIC = "infrastructure.postgres_recorder:PrunelogPostgresRecorder"
# Table creation by nodes that open one log at once is serialised by this advisory lock
# (one per database; "prnl"), waited for at most this long.
DDL_LOCK_KEY = 0x70726E6C
DDL_LOCK_TIMEOUT_S = 60


def connect_args(env: dict[str, str]) -> dict[str, Any]:
    """psycopg.connect() arguments for our own connections (setup and LISTEN)."""
    return {
        "dbname": env["POSTGRES_DBNAME"],
        "host": env["POSTGRES_HOST"],
        "port": env["POSTGRES_PORT"],
        "user": env["POSTGRES_USER"],
        "password": env["POSTGRES_PASSWORD"],
        "connect_timeout": CONNECT_TIMEOUT_S,
        "autocommit": True,
    }


def is_postgres_url(event_store: str) -> bool:
    return urlsplit(event_store).scheme in SCHEMES


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def postgres_env(url: str) -> dict[str, str]:
    """eventsourcing's POSTGRES_* settings from `postgresql://user:pw@host:port/db?schema=s`."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"event store URL {redact(url)!r} is not postgresql://")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - {"schema", "pool_size"})
    if unknown:
        raise ConfigError(f"event store URL: unknown parameter(s) {', '.join(unknown)}")
    dbname = unquote(parts.path.lstrip("/"))
    if not parts.hostname or not dbname or not parts.username:
        raise ConfigError(
            f"event store URL {redact(url)!r} needs a user, a host and a database: "
            "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=NAME]"
        )
    try:
        port = parts.port or 5432
    except ValueError:
        raise ConfigError(f"event store URL {redact(url)!r} has a bad port") from None
    schema = query.get("schema", "")
    if schema and not schema.replace("_", "").isalnum():
        raise ConfigError(f"event store URL: schema {schema!r} must be letters, digits and _")
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        # One attempt per command, not the library's ten (see postgres_recorder).
        "APPLICATION_RECORDER_TOPIC": RECORDER_TOPIC,
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": unquote(parts.hostname),
        "POSTGRES_PORT": str(port),
        "POSTGRES_USER": unquote(parts.username),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_SCHEMA": schema,
        # eventsourcing uses this as the pool's wait for a connection: how long a command
        # waits for a server that went away before it fails (and the phase with it).
        "POSTGRES_CONNECT_TIMEOUT": str(POOL_WAIT_S),
        # A pooled connection the server dropped is noticed before use, not mid-command.
        "POSTGRES_PRE_PING": "y",
        "POSTGRES_POOL_SIZE": query.get("pool_size", "2"),
        "POSTGRES_MAX_OVERFLOW": "4",
        "POSTGRES_LOCK_TIMEOUT": "10",
        "AGGREGATE_CACHE_MAXSIZE": "1000",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
    }


@contextmanager
def prepare(url: str) -> Iterator[None]:
    """Connects once (the reachability check, with a clear error), creates the URL's schema if
    it is missing, and holds a session advisory lock until the `with` body (eventsourcing
    creating its tables, types and insert function) is done. Without it, nodes starting at
    once fail: concurrent CREATE ... IF NOT EXISTS / CREATE OR REPLACE FUNCTION on the same
    catalog rows raise "tuple concurrently updated" or a duplicate-key error."""
    import psycopg

    env = postgres_env(url)
    try:
        conn = psycopg.connect(**connect_args(env))
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or ["no answer"])[0]
        raise EventLogUnreachableError(
            f"cannot reach the PostgreSQL event log at {redact(url)}: {first}"
        ) from None
    with conn:
        try:
            conn.execute(f"SET statement_timeout = '{DDL_LOCK_TIMEOUT_S}s'")
            conn.execute("SELECT pg_advisory_lock(%s)", (DDL_LOCK_KEY,))
            if env["POSTGRES_SCHEMA"]:
                conn.execute(
                    psycopg.sql.SQL("CREATE SCHEMA IF NOT EXISTS {0}").format(
                        psycopg.sql.Identifier(env["POSTGRES_SCHEMA"])
                    )
                )
        except psycopg.OperationalError as exc:
            first = (str(exc).strip().splitlines() or ["no answer"])[0]
            raise EventLogUnreachableError(
                f"cannot prepare the PostgreSQL event log at {redact(url)}: {first}"
            ) from None
        yield  # the lock is released with the session when `conn` closes


class Listener:
    """LISTEN on the events table's channel (eventsourcing NOTIFYs it on every append), so a
    follower wakes when another node appends instead of polling."""

    def __init__(self, url: str, channel: str) -> None:
        import psycopg  # only when PostgreSQL is in use

        self._psycopg = psycopg
        self.url = url
        self.channel = channel
        self._conn: Any = None

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            psycopg = self._psycopg
            env = postgres_env(self.url)
            self._conn = psycopg.connect(**connect_args(env))
            self._conn.execute(
                psycopg.sql.SQL("LISTEN {0}").format(psycopg.sql.Identifier(self.channel))
            )
        return self._conn

    def wait(self, timeout: float) -> bool:
        """True when a notification arrived within `timeout` seconds."""
        try:
            conn = self._connect()
            return any(True for _ in conn.notifies(timeout=timeout, stop_after=1))
        except self._psycopg.Error as exc:
            self.close()
            time.sleep(min(timeout, 1.0))
            # A lost or refused connection may pass (`run` waits for it); anything else not.
            kind = (
                EventLogUnreachableError
                if isinstance(exc, self._psycopg.OperationalError | self._psycopg.InterfaceError)
                else EventLogError
            )
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise kind(f"lost the LISTEN connection to {redact(self.url)}: {first}") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
