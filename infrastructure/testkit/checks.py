"""The invariants as plain functions over the state store and the event log (never the pruner's
memory), so that any test can call them on its own rig."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from infrastructure.audit_checks import check_store
from infrastructure.state_store import SqliteStateStore
from infrastructure.testkit.fold import LogFold
from infrastructure.testkit.violations import (
    AuditViolation,
    InvariantViolation,
    LockViolation,
    LogOrderViolation,
    ProjectionViolation,
    SafetyViolation,
    SnapshotUseViolation,
)
from projections.runner import ProjectionRunner


def legality_violations(events: Iterable[Any]) -> list[str]:
    """Replays every aggregate through its event methods: the phase table re-checks order."""
    return LogFold().feed(events).legality


def snapshot_use_violations(events: Iterable[Any]) -> list[str]:
    """Phase and sweep events name the cycle's current snapshot (a rollback names the new one,
    newer, created for the same cycle)."""
    return LogFold().feed(events).snapshot_use


def lock_violations(events: Iterable[Any], gone: Callable[[str], bool] | None = None) -> list[str]:
    """At most one holder per lock; takeovers only after the timeout, or from a gone holder."""
    return LogFold(gone).feed(events).lock


def protected_since(events: Iterable[Any]) -> int:
    return LogFold().feed(events).protected_since()


def store_violations(store: SqliteStateStore, since_order: int) -> list[str]:
    """Invariant I: every root with order >= since_order, genesis and every pinned root is
    fully readable and hashes correctly."""
    check = check_store(store, since_order)
    out = []
    if check.missing:
        out.append(f"{check.missing} node(s) missing under roots with order >= {since_order}")
    if check.corrupt:
        out.append(f"{check.corrupt} node(s) corrupt under roots with order >= {since_order}")
    return out


def garbage_violations(store: SqliteStateStore, since_order: int) -> list[str]:
    check = check_store(store, since_order)
    if check.unreachable_stored:
        return [
            f"{check.unreachable_stored} stored node(s) are reachable from no root with order "
            f">= {since_order}"
        ]
    return []


def _stored_orders(store: SqliteStateStore, hashes: Sequence[bytes]) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    unique = list(dict.fromkeys(hashes))
    for i in range(0, len(unique), 499):
        where, params = store.hash_index.any_of(unique[i : i + 499])
        rows = store.connection.execute(
            f"SELECT hash, written_order FROM nodes WHERE {where}", params
        )
        out.update((bytes(h), int(o)) for h, o in rows)
    return out


def audit_violations(log: LogFold | Iterable[Any], store: SqliteStateStore) -> list[str]:
    """Every hash an audit event (AUDIT_EVENTS) names is gone from `nodes`, or was written again
    after the deletion (its written_order > the deleting snapshot's latest_order)."""
    fold = log if isinstance(log, LogFold) else LogFold().feed(log)
    stored = _stored_orders(store, [row.hash for row in fold.audit])
    out = []
    for row in fold.audit:
        order = stored.get(row.hash)
        if order is None:
            continue
        latest = fold.latest_order_of(row.group, row.snapshot_id)
        if latest is None or order <= latest:
            out.append(
                f"cycle {row.cycle_no} batch {row.batch_no} (snapshot {row.snapshot_id}, "
                f"latest_order {latest}) names {row.hash.hex()[:16]}, which is still stored "
                f"with written_order {order}"
            )
    return out


def unaudited_deletions(
    log: LogFold | Iterable[Any], ever_stored: Iterable[bytes], store: SqliteStateStore
) -> list[str]:
    """Every node that was stored once and is gone now is named by some audit event.
    Holds whenever no delete is between its commit and its event (e.g. after a clean cycle)."""
    fold = log if isinstance(log, LogFold) else LogFold().feed(log)
    ever = list(ever_stored)
    still = set(_stored_orders(store, ever))
    audited = {row.hash for row in fold.audit}
    lost = [h for h in ever if h not in still and h not in audited]
    if not lost:
        return []
    return [f"{len(lost)} deleted node(s) are in no audit event, e.g. {lost[0].hex()[:16]}"]


def projection_violations(runner: ProjectionRunner) -> list[str]:
    """Catches every projection up, then compares each with a fresh fold over the log: one
    in-memory replay for all of them (what `ProjectionRunner.verify` does one at a time)."""
    runner.catch_up()
    positions = {name: runner.position(name) for name in runner.projections}
    scratch = ProjectionRunner(":memory:", runner.source, list(runner.projections.values()))
    out = []
    try:
        for until in sorted(set(positions.values())):
            names = [n for n, p in positions.items() if p == until]
            scratch.catch_up(names, until=until)
            out += [
                f"projection {name!r} differs from a rebuild at position {until}"
                for name in names
                if scratch.digest(name) != runner.digest(name)
            ]
    finally:
        scratch.close()
    return out


#: The order `assert_invariants` checks in: the first kind that fails is raised.
CHECK_ORDER: Final = (
    SafetyViolation,
    LogOrderViolation,
    SnapshotUseViolation,
    LockViolation,
    AuditViolation,
    ProjectionViolation,
)


def check_invariants(
    store: SqliteStateStore,
    log: LogFold | Iterable[Any],
    *,
    runner: ProjectionRunner | None = None,
    gone: Callable[[str], bool] | None = None,
) -> dict[type[InvariantViolation], list[str]]:
    """Every invariant that holds at any moment (not garbage, which needs quiet): a map from
    violation kind to its violations, empty lists left out."""
    fold = log if isinstance(log, LogFold) else LogFold(gone).feed(log)
    found: dict[type[InvariantViolation], list[str]] = {
        SafetyViolation: store_violations(store, fold.protected_since()),
        LogOrderViolation: list(fold.legality),
        SnapshotUseViolation: list(fold.snapshot_use),
        LockViolation: list(fold.lock),
        AuditViolation: audit_violations(fold, store),
        ProjectionViolation: [] if runner is None else projection_violations(runner),
    }
    return {kind: found[kind] for kind in CHECK_ORDER if found[kind]}


def assert_invariants(
    store: SqliteStateStore,
    log: LogFold | Iterable[Any],
    *,
    runner: ProjectionRunner | None = None,
    gone: Callable[[str], bool] | None = None,
) -> None:
    """Raises the first (in CHECK_ORDER) InvariantViolation subclass that has violations.
    `log` is the event log's events in order (e.g. `list(rt.log.events())`) or a LogFold."""
    for kind, violations in check_invariants(store, log, runner=runner, gone=gone).items():
        raise kind(violations)
