"""Domain errors. Every failure a user can cause has its own class and a clear message."""

from __future__ import annotations


class PrunelogError(Exception):
    """Base class of every error prunelog raises on purpose."""


class ConfigError(PrunelogError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class UnknownPhaseError(PrunelogError, ValueError):
    """A phase name is not one of BuildReach, SweepExpired, IncrementalSweep."""


class IllegalPhaseOrderError(PrunelogError):
    """A trigger is not allowed from the current phase state."""


class LockError(PrunelogError):
    """Base class of phase-lock errors."""


class LockContendedError(LockError):
    """Another holder has the lock, or won a race for it."""


class LockNotHeldError(LockError):
    """A release (or a phase step) by someone who does not hold the lock."""


class SnapshotError(PrunelogError):
    """Base class of snapshot errors."""


class NoSnapshotError(SnapshotError):
    """There is no current snapshot to lock or validate."""


class SnapshotExpiredError(SnapshotError):
    """The snapshot is older than max_snapshot_age or was marked expired."""


class SnapshotInvalidatedError(SnapshotError):
    """The snapshot was invalidated and may not be used again."""


class SnapshotIntegrityError(SnapshotError):
    """The integrity hash does not match the snapshot's fields: it was tampered with."""


class SnapshotMismatchError(SnapshotError):
    """A phase was handed a snapshot other than its cycle's."""


class ChainStateMismatchError(SnapshotError):
    """The snapshot's block hash is no longer the chain's block at that height."""


class EventLogError(PrunelogError):
    """Base class of event-log errors."""


class EventLogUnreachableError(EventLogError, ConnectionError):
    """The event log's server cannot be reached (yet): `run` retries with backoff."""


class AggregateNotFoundError(EventLogError, LookupError):
    """No aggregate with that id is in the log."""


class ConcurrencyConflictError(EventLogError):
    """Someone else appended to the aggregate first (optimistic concurrency)."""


class CorruptEventError(EventLogError):
    """A stored event could not be decoded."""


class UnknownTopicError(EventLogError):
    """A stored event names a topic that is not one of prunelog's event classes."""


class DataDirError(PrunelogError, OSError):
    """The data directory cannot be created or written."""


class ReachSetCorruptError(SnapshotError):
    """The persisted reach set is missing, truncated or does not match its digest."""


class CorruptJournalError(PrunelogError):
    """A sweep journal row (a deleted batch whose NodesSwept events are not logged yet) cannot
    be read: the pruner stops rather than delete more without that batch's audit."""


class MissingNodeError(PrunelogError):
    """A node that a retained root reaches is not in the store: the invariant is broken."""


class RecoveryExhaustedError(PrunelogError):
    """Retries, snapshot recovery and rollback could not finish the cycle; it stopped in
    Failed and nothing more was deleted. The next cycle starts clean."""


class TransientError(PrunelogError):
    """An error worth retrying with backoff (raise it, or any non-prunelog exception)."""


class PrunerStoppedError(PrunelogError):
    """The pruner was asked to stop (SIGINT/SIGTERM) and did, between two batches: the phase
    is recorded as failed, the lock released, and the next run resumes the cycle."""
