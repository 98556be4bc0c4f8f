"""`prunelog audit`: who deleted a node, a cycle's batches, and `--verify`, which re-checks a
cycle's decisions against the persisted reach set and the store (see cycle_verify)."""

from __future__ import annotations

import json
import string
import sys
from typing import TYPE_CHECKING, NoReturn

import click

from infrastructure.cli_common import Context, emit, table, usage_error
from infrastructure.cli_history import group_settings

if TYPE_CHECKING:
    from infrastructure.runtime import Runtime


@click.command()
@click.argument("node_hash", required=False)
@click.option("--cycle", type=int, help="Audit a whole cycle instead of one node.")
@click.option(
    "--verify",
    is_flag=True,
    help="With --cycle N: re-check its deletions against the reach set and its retained roots "
    "against the store; exit 1 unless verified.",
)
@click.option(
    "--group", default=None, help="Only this pruner group's deletions. [--cycle: config's]"
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def audit(
    obj: Context,
    node_hash: str | None,
    cycle: int | None,
    verify: bool,
    group: str | None,
    as_json: bool,
) -> None:
    """Which cycle, snapshot, phase and batch deleted NODE_HASH, and when; or that it never was.
    With --cycle N: that cycle's batches; with --cycle N --verify: re-check its decisions."""
    from infrastructure.runtime import Runtime

    if (node_hash is None) == (cycle is None):
        raise click.UsageError("give a NODE_HASH or --cycle N (one of them)")
    if verify and cycle is None:
        raise click.UsageError("--verify goes with --cycle N")
    if node_hash is not None and (
        len(node_hash) != 64 or not set(node_hash) <= set(string.hexdigits)
    ):
        raise click.BadParameter(
            f"{node_hash!r} is not a node hash (64 hex digits)", param_hint="NODE_HASH"
        )
    with Runtime(group_settings(obj, group)) as rt:
        if verify and cycle is not None:
            _verify(rt, cycle, as_json)
        runner = rt.projections()
        runner.catch_up(["audit"])
        if node_hash is not None:
            raw = bytes.fromhex(node_hash)
            rows = [
                dict(r)
                for r in runner.rows(
                    "SELECT b.grp, b.cycle_no, b.snapshot_id, b.phase, b.batch_no, b.batch_ref AS "
                    "position, b.at FROM audit a JOIN audit_batches b USING (batch_ref) "
                    "WHERE a.node_hash = ? AND (? IS NULL OR b.grp = ?) ORDER BY b.batch_ref",
                    (raw, group, group),
                )
            ]
            if not rows:
                msg = f"{node_hash} was never deleted by prunelog"
                click.echo(
                    json.dumps({"node_hash": node_hash, "deletions": []}) if as_json else msg
                )
                return
            emit(
                as_json,
                {"node_hash": node_hash, "deletions": rows},
                table(f"deletions of {node_hash[:16]}…", rows),
            )
            return
        assert cycle is not None
        _require_cycle(rt, cycle)
        rows = [
            dict(r)
            for r in runner.rows(
                "SELECT b.phase, b.batch_no, b.snapshot_id, b.batch_ref AS position, b.at, "
                "count(a.node_hash) AS nodes FROM audit_batches b LEFT JOIN audit a USING "
                "(batch_ref) WHERE b.grp = ? AND b.cycle_no = ? GROUP BY b.batch_ref "
                "ORDER BY b.batch_ref",
                (rt.settings.group, cycle),
            )
        ]
        emit(as_json, {"cycle": cycle, "batches": rows}, table(f"cycle {cycle} batches", rows))


def _require_cycle(rt: Runtime, cycle: int) -> None:
    """An unknown cycle is a usage error (exit 2), as with --verify; a known cycle that
    deleted nothing lists no batches (exit 0)."""
    from domain.cycle import PruneCycle, cycle_uuid
    from domain.errors import AggregateNotFoundError

    try:
        rt.log.get(cycle_uuid(rt.settings.group, cycle), PruneCycle)
    except AggregateNotFoundError:
        usage_error(f"group {rt.settings.group!r} has no cycle {cycle}")


def _verify(rt: Runtime, cycle: int, as_json: bool) -> NoReturn:
    from domain.errors import AggregateNotFoundError
    from infrastructure.cycle_verify import render, verify_cycle

    try:
        verdict = verify_cycle(rt, cycle)
    except AggregateNotFoundError:
        usage_error(f"group {rt.settings.group!r} has no cycle {cycle}")
    click.echo(json.dumps(verdict.as_dict(), indent=2) if as_json else "\n".join(render(verdict)))
    sys.exit(0 if verdict.verified else 1)
