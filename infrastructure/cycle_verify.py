"""`prunelog audit --cycle N --verify`: re-checks one cycle's decisions from the log and the store.

(a) Every node the cycle deleted (its NodesSwept and BatchRecovered events) was outside the
    reach set of the snapshot that batch was swept with: the persisted set, loaded through the
    reach store, which refuses it unless it matches the digest its ReachBuilt event recorded.
(b) Every retained root of the cycle's snapshot was whole when the cycle ended. From the log:
    BuildReach walked every retained root down to the leaves (a missing node fails it with
    MissingNodeError) and recorded what it marked (ReachBuilt), and by (a) the cycle deleted
    none of it. From the store, today: the retained roots are walked again, re-hashing every
    node; a node missing there must have been deleted by a later cycle's logged batch, or
    something other than the pruner deleted it.

Anything that breaks one of these is a violation. A batch logged before row ids were recorded
cannot be checked against the reach set; that is reported too, and the cycle is not verified.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from domain.cycle import PruneCycle, cycle_uuid
from domain.errors import ReachSetCorruptError
from domain.phases import IDLE, PrunePhase
from domain.ports import ReachSet
from domain.snapshot import snapshot_uuid
from infrastructure.runtime import Runtime
from infrastructure.state_store import SqliteStateStore

BATCH_EVENTS = ("PruneCycle.NodesSwept", "PruneCycle.BatchRecovered")
_EXAMPLES = 5  # row ids or hashes quoted per finding
_CHUNK = 900


@dataclass
class BatchCheck:
    batch_no: int
    phase: str
    snapshot: int
    nodes: int
    status: str  # "ok", "violation" or "unverifiable"
    in_reach: list[int] = field(default_factory=list)  # deleted row ids the reach set holds


@dataclass
class ReachCheck:
    snapshot: int
    digest: str | None
    recorded: int | None  # ReachBuilt's node_count
    loaded: int | None = None
    error: str | None = None


@dataclass
class RootsCheck:
    snapshot: int
    from_order: int
    to_order: int
    roots: int = 0
    nodes_verified: int = 0
    missing_pruned_later: int = 0
    missing_unexplained: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)


@dataclass
class CycleVerdict:
    group: str
    cycle: int
    outcome: str  # completed, given up (in Failed), running (in <state>)
    finished: bool
    snapshot: int
    batches: list[BatchCheck] = field(default_factory=list)
    reach_sets: list[ReachCheck] = field(default_factory=list)
    roots: RootsCheck | None = None
    violations: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.violations and not self.unverified

    def as_dict(self) -> dict[str, Any]:
        return {"verified": self.verified, **asdict(self)}


def verify_cycle(rt: Runtime, cycle_no: int) -> CycleVerdict:
    """Raises AggregateNotFoundError for a cycle the group never had."""
    group = rt.settings.group
    cycle = rt.log.get(cycle_uuid(group, cycle_no), PruneCycle)
    if not cycle.finished:
        outcome = f"running (in {cycle.state})"
    else:
        outcome = "completed" if cycle.state == IDLE else f"given up (in {cycle.state})"
    v = CycleVerdict(group, cycle_no, outcome, cycle.finished, cycle.snapshot_id)
    batches = [e for e in _history(rt, cycle.id) if type(e).__qualname__ in BATCH_EVENTS]
    reach = {s: _load_reach(rt, s, v) for s in sorted({e.snapshot_id for e in batches})}
    for e in batches:
        v.batches.append(_check_batch(e, reach[e.snapshot_id], v))
    _check_end(rt, cycle, reach, v)
    return v


def _history(rt: Runtime, aggregate_id: Any) -> list[Any]:
    return list(rt.log.app.events.get(aggregate_id))


def _load_reach(rt: Runtime, snapshot_id: int, v: CycleVerdict) -> ReachSet | None:
    built = [
        e
        for e in _history(rt, snapshot_uuid(v.group, snapshot_id))
        if type(e).__qualname__ == "Snapshot.ReachBuilt"
    ]
    if not built:
        v.reach_sets.append(ReachCheck(snapshot_id, None, None, error="no ReachBuilt event"))
        v.violations.append(f"snapshot {snapshot_id} has no reach set recorded (no ReachBuilt)")
        return None
    last = built[-1]  # the set every later sweep of this snapshot loaded
    check = ReachCheck(snapshot_id, last.digest, last.node_count)
    v.reach_sets.append(check)
    try:
        reach = rt.reach_store.load(snapshot_id, last.digest)
    except ReachSetCorruptError as exc:
        check.error = str(exc)
        v.violations.append(f"reach set of snapshot {snapshot_id}: {exc}")
        return None
    check.loaded = len(reach)
    if check.loaded != check.recorded:
        v.violations.append(
            f"reach set of snapshot {snapshot_id} holds {check.loaded:,} nodes; "
            f"ReachBuilt recorded {check.recorded:,}"
        )
    return reach


def _check_batch(e: Any, reach: ReachSet | None, v: CycleVerdict) -> BatchCheck:
    check = BatchCheck(e.batch_no, e.phase, e.snapshot_id, e.count, "ok")
    where = f"batch {e.batch_no} ({e.phase}, snapshot {e.snapshot_id})"
    if e.count and not e.row_ids:
        check.status = "unverifiable"
        v.unverified.append(f"cannot verify batch {e.batch_no}: no row ids recorded")
    elif len(e.row_ids) != e.count:
        check.status = "violation"
        v.violations.append(f"{where} records {len(e.row_ids)} row ids for {e.count} nodes")
    elif reach is None:
        check.status = "unverifiable"  # the reach set's own violation is already reported
    else:
        check.in_reach = [r for r in e.row_ids if r in reach]
        if check.in_reach:
            check.status = "violation"
            v.violations.append(
                f"{where} deleted {len(check.in_reach)} node(s) in the reach set, "
                f"e.g. row ids {check.in_reach[:_EXAMPLES]}"
            )
    return check


def _check_end(
    rt: Runtime, cycle: PruneCycle, reach: dict[int, ReachSet | None], v: CycleVerdict
) -> None:
    """(b): the argument from the log, then the live walk of the retained roots."""
    if not cycle.finished:
        v.unverified.append(f"cycle {cycle.cycle_no} has not ended (it is in {cycle.state})")
    elif PrunePhase.BUILD_REACH.value not in cycle.completed_phases:
        v.unverified.append(
            f"cycle {cycle.cycle_no} ended in {cycle.state} before BuildReach completed on "
            f"snapshot {cycle.snapshot_id}: its retained roots were never walked"
        )
    elif cycle.snapshot_id not in reach:  # the cycle deleted nothing under it: still load it
        reach[cycle.snapshot_id] = _load_reach(rt, cycle.snapshot_id, v)
    snap = rt.manager.get_snapshot(cycle.snapshot_id)
    v.roots = RootsCheck(snap.snapshot_id, snap.retained_from_order, snap.latest_order)
    with SqliteStateStore.open(rt.state_path) as store:
        # The snapshot's window and genesis; today's pinned roots may not have been pinned then.
        roots = [
            bytes(r)
            for (r,) in store.connection.execute(
                "SELECT state_root FROM roots WHERE tx_order BETWEEN ? AND ? OR tx_order = 0",
                (snap.retained_from_order, snap.latest_order),
            )
        ]
        report = store.verify_roots(roots)
    v.roots.roots, v.roots.nodes_verified = len(roots), report.nodes
    deleted_by = _deleters(rt, v.group, report.missing)
    for h in report.missing:
        cycles = deleted_by.get(h, [])
        if any(c > cycle.cycle_no for c in cycles):
            v.roots.missing_pruned_later += 1
            continue
        v.roots.missing_unexplained.append(h.hex())
        if cycle.cycle_no in cycles:
            why = f"cycle {cycle.cycle_no} itself deleted it"
        elif cycles:
            why = f"only earlier cycles ({', '.join(map(str, sorted(set(cycles))))}) deleted it"
        else:
            why = "no prunelog batch ever deleted it (removed outside prunelog)"
        if len(v.roots.missing_unexplained) <= _EXAMPLES:
            v.violations.append(
                f"node {h.hex()} of a retained root of snapshot {snap.snapshot_id} is missing: "
                f"{why}"
            )
    unexplained = len(v.roots.missing_unexplained)
    if unexplained > _EXAMPLES:
        v.violations.append(f"... {unexplained - _EXAMPLES} more missing node(s) like these")
    v.roots.corrupt = [h.hex() for h in report.corrupt]
    for h in report.corrupt[:_EXAMPLES]:
        v.violations.append(f"node {h.hex()} of a retained root does not hash to its key")


def _deleters(rt: Runtime, group: str, hashes: Iterable[bytes]) -> dict[bytes, list[int]]:
    """For each hash, the cycles of `group` whose logged batches deleted it (the audit model)."""
    runner = rt.projections()
    runner.catch_up(["audit"])
    out: dict[bytes, list[int]] = {}
    wanted = list(hashes)
    for i in range(0, len(wanted), _CHUNK):
        chunk = wanted[i : i + _CHUNK]
        rows = runner.rows(
            "SELECT a.node_hash, b.cycle_no FROM audit a JOIN audit_batches b USING (batch_ref) "
            f"WHERE b.grp = ? AND a.node_hash IN ({','.join('?' * len(chunk))})",
            (group, *chunk),
        )
        for r in rows:
            out.setdefault(bytes(r["node_hash"]), []).append(int(r["cycle_no"]))
    return out


def render(v: CycleVerdict) -> list[str]:
    """The human report, one finding per line."""
    ok = sum(1 for b in v.batches if b.status == "ok")
    nodes = sum(b.nodes for b in v.batches)
    lines = [
        f"cycle {v.cycle} of group {v.group}: {v.outcome}, on snapshot {v.snapshot}",
        f"(a) deleted nodes outside the reach set: {ok}/{len(v.batches)} batches checked, "
        f"{nodes:,} nodes",
    ]
    for r in v.reach_sets:
        state = r.error or f"{r.loaded:,} nodes, digest matches, ReachBuilt said {r.recorded:,}"
        lines.append(f"    reach set of snapshot {r.snapshot}: {state}")
    if v.roots is not None:
        rc = v.roots
        lines.append(
            f"(b) retained roots of snapshot {rc.snapshot} (orders {rc.from_order}..{rc.to_order}"
            f" and genesis): {rc.roots} roots; live walk re-hashed {rc.nodes_verified:,} nodes, "
            f"{rc.missing_pruned_later:,} missing ones deleted by later cycles, "
            f"{len(rc.missing_unexplained):,} missing otherwise, {len(rc.corrupt):,} corrupt"
        )
    lines += [f"VIOLATION: {m}" for m in v.violations]
    lines += [f"NOT VERIFIED: {m}" for m in v.unverified]
    lines.append("verified" if v.verified else "NOT verified")
    return lines
