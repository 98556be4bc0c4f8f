"""Structured logs on stderr: one text line per record, or JSON Lines with `--log-json`.

Every decision is already an event, so the logs are the events as they are appended, at the
spec's levels: debug for traces (progress checkpoints, delete batches), info for phase
transitions, warning for fallbacks (retries, rollbacks, takeovers, late batches), error for
failures. Other log lines (e.g. a reconnect) use the `prunelog` logger directly."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final
from uuid import UUID

LOGGER: Final = logging.getLogger("prunelog")
LEVELS: Final = ("debug", "info", "warning", "error")

_DEBUG = ("PruneCycle.PhaseProgressed", "PruneCycle.NodesSwept", "PhaseLock.Renewed")
_WARNING = (
    "PruneCycle.RetryScheduled",
    "PruneCycle.RolledBack",
    "PruneCycle.BatchRecovered",
    "PruneCycle.PhaseResumed",
    "PhaseLock.Expired",
    "Snapshot.Invalidated",
    "Snapshot.Expired",
    "Recovery.Started",
    "Recovery.SnapshotRecreated",
)
_ERROR = (
    "PruneCycle.PhaseFailed",
    "PruneCycle.RecoveryExhausted",
    "Recovery.Exhausted",
    "Recovery.SnapshotCreationFailed",
)
# Fields too long for a log line; the event log and `prunelog export` have them whole.
_SUMMARISED = ("hashes", "row_ids")


def level_of(kind: str) -> int:
    if kind in _ERROR:
        return logging.ERROR
    if kind in _WARNING:
        return logging.WARNING
    if kind in _DEBUG:
        return logging.DEBUG
    return logging.INFO


def fields_of(event: Any) -> dict[str, Any]:
    """The event's own fields, JSON-ready; long lists become their length."""
    out: dict[str, Any] = {}
    for name, value in vars(event).items():
        if name in ("originator_id", "originator_version", "timestamp") or name.startswith("_"):
            continue
        if name in _SUMMARISED and isinstance(value, list | tuple):
            out[f"{name}_count"] = len(value)
            continue
        out[name] = _plain(value)
    out["aggregate_version"] = event.originator_version
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


def log_event(event: Any) -> None:
    """An EventsourcingLog observer: one log record per appended event."""
    kind = type(event).__qualname__
    level = level_of(kind)
    if not LOGGER.isEnabledFor(level):
        return
    fields = fields_of(event)
    brief = " ".join(f"{k}={v}" for k, v in fields.items() if not isinstance(v, dict | list))
    LOGGER.log(level, "%s %s", kind, brief, extra={"event": kind, "fields": fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        kind = getattr(record, "event", None)
        if kind is not None:
            line["event"] = kind
            line.update(getattr(record, "fields", {}))
        else:
            line["msg"] = record.getMessage()
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str = "info", as_json: bool = False) -> None:
    """Routes the `prunelog` logger to stderr. Calling it again replaces the handler."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:  # one unwrapped line per record, so `grep` works on it
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level.upper())
    LOGGER.propagate = False
