"""`prunelog upgrade-store`: brings a state store made by an older prunelog to the current
layout, in place: the `kids` of old node rows (`node_kids`), the row ids of old stale entries
(`stale_ids`), then the node table onto the hash-prefix index (`node_index`). `--check` only
reads, through a read-only connection (opening a `SqliteStateStore` adds missing columns)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from infrastructure import smt
from infrastructure.cli_common import Context, console, err, fail, usage_error
from infrastructure.config_file import load_settings
from infrastructure.eventlog import STATE_FILE
from infrastructure.node_index import HashIndex
from infrastructure.node_kids import ids_by_hash
from infrastructure.state_store import SqliteStateStore

T = TypeVar("T")
SCAN_BATCH = 20_000  # node rows per read while --check looks for a row whose kids can be filled
STEPS = ("kids", "stale_ids", "rebuild")
_STALE_UNFILLED = "(node_id IS NULL OR node_size IS NULL)"
_MB = 1_000_000


class NotAStateStoreError(Exception):
    """A SQLite file without the state store's node table."""


@dataclass(frozen=True, slots=True)
class Findings:
    """What `--check` found: how much of the store predates each layout."""

    nodes: int
    rows_without_kids: int
    kids_needed: bool  # a row without kids whose children are all stored (others stay NULL)
    stale_without_ids: int
    stale_ids_needed: bool  # an entry without ids whose node is stored
    prefix_index: bool

    @property
    def needed(self) -> list[str]:
        flags = (self.kids_needed, self.stale_ids_needed, not self.prefix_index)
        return [step for step, flag in zip(STEPS, flags, strict=True) if flag]

    def as_dict(self, path: Path) -> dict[str, Any]:
        return {
            "store": str(path),
            "current": not self.needed,
            "needed": self.needed,
            "nodes": self.nodes,
            "kids": {"needed": self.kids_needed, "rows_without_kids": self.rows_without_kids},
            "stale_ids": {
                "needed": self.stale_ids_needed,
                "entries_without_ids": self.stale_without_ids,
            },
            "rebuild": {"needed": not self.prefix_index, "prefix_index": self.prefix_index},
        }


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_xinfo({table})")}


def _count(conn: sqlite3.Connection, sql: str) -> int:
    found: int = conn.execute(sql).fetchone()[0]
    return found


def _kids_fillable(conn: sqlite3.Connection, index: HashIndex, unfilled: str) -> bool:
    """Whether some row without kids has all its children stored (what `backfill_kids` fills);
    stops at the first one."""
    after = 0
    while True:
        rows = conn.execute(
            f"SELECT id, data FROM nodes WHERE id > ? AND {unfilled} ORDER BY id LIMIT ?",
            (after, SCAN_BATCH),
        ).fetchall()
        if not rows:
            return False
        kids_of = [smt.children(data) for _, data in rows]
        ids = ids_by_hash(conn, index, list({c for kids in kids_of for c in kids}))
        if any(all(c in ids for c in kids) for kids in kids_of):
            return True
        after = rows[-1][0]


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)


def _node_columns(conn: sqlite3.Connection, path: Path) -> set[str]:
    columns = _columns(conn, "nodes")
    if not columns:
        raise NotAStateStoreError(f"{path} is not a prunelog state store: it has no nodes")
    return columns


def _require_state_store(path: Path) -> None:
    """Raises as `inspect_store` does for a file that is no state store, without its scans."""
    conn = _read_only(path)
    try:
        _node_columns(conn, path)
    finally:
        conn.close()


def inspect_store(path: Path) -> Findings:
    """Reads `path` through a read-only connection and changes nothing. Raises
    sqlite3.DatabaseError for a file that is not SQLite, NotAStateStoreError for one without
    a node table."""
    conn = _read_only(path)
    try:
        node_columns = _node_columns(conn, path)
        index = HashIndex.of(conn)
        unfilled = "kids IS NULL" if "kids" in node_columns else "1"
        stale_columns = _columns(conn, "stale")
        stale_unfilled = _STALE_UNFILLED if {"node_id", "node_size"} <= stale_columns else "1"
        stale_without = 0
        stale_needed = False
        if stale_columns:
            stale_without = _count(conn, f"SELECT count(*) FROM stale WHERE {stale_unfilled}")
            stale_needed = stale_without > 0 and bool(
                _count(
                    conn,
                    f"SELECT EXISTS (SELECT 1 FROM stale WHERE {stale_unfilled} AND EXISTS "
                    f"(SELECT 1 FROM nodes WHERE {index.matches('stale', 'hash')}))",
                )
            )
        without_kids = _count(conn, f"SELECT count(*) FROM nodes WHERE {unfilled}")
        return Findings(
            nodes=_count(conn, "SELECT count(*) FROM nodes"),
            rows_without_kids=without_kids,
            kids_needed=without_kids > 0 and _kids_fillable(conn, index, unfilled),
            stale_without_ids=stale_without,
            stale_ids_needed=stale_needed,
            prefix_index=index.prefixed,
        )
    finally:
        conn.close()


def _timed(status: str, step: Callable[[], T]) -> tuple[T, float]:
    """Runs `step` under a spinner on stderr; returns its result and how long it took."""
    start = time.monotonic()
    with err.status(escape(status)):
        result = step()
    return result, round(time.monotonic() - start, 3)


@click.command("upgrade-store")
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if a step is needed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_obj
def upgrade_store(obj: Context, check: bool, as_json: bool) -> None:
    """Upgrade <data-dir>/state.sqlite, made by an older prunelog, to the current layout.

    Stop the writer and every pruner first: a pruner keeps the layout it read at start, and
    the rebuild holds the store's write lock for the whole copy (about 15 s per million
    nodes). The rebuild also needs free disk about the size of the node table.

    Three steps, in order: fill nodes.kids of old rows, fill stale.node_id and node_size of
    old stale entries, then rebuild the node table onto the 8-byte hash-prefix index. A step
    that fails rolls back; the steps before it are kept and running this again carries on.
    On a current store it does nothing. --check reads only and exits 1 if any step is needed,
    0 if the store is current."""
    load_settings(obj.data_dir, obj.config)  # a broken config file fails here as everywhere
    path = obj.data_dir / STATE_FILE
    if not path.is_file():
        usage_error(
            f"no state store at {path}: check --data-dir (or PRUNELOG_DATA_DIR); "
            "upgrade-store never creates one"
        )
    try:
        if check:
            _report_check(path, inspect_store(path), as_json)
        _require_state_store(path)
        _upgrade(path, err if as_json else console, as_json)
    except NotAStateStoreError as exc:
        fail(str(exc))
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (
            sqlite3.SQLITE_BUSY,
            sqlite3.SQLITE_LOCKED,
        ):
            fail(
                f"{path} is busy: another process kept its write lock ({exc}). Stop the "
                "writer and every pruner, then run upgrade-store again; steps done are kept"
            )
        fail(f"upgrading {path} failed: {exc}; the step in progress was rolled back")
    except sqlite3.DatabaseError as exc:
        fail(f"{path} is not a readable SQLite state store: {exc}")


def _report_check(path: Path, found: Findings, as_json: bool) -> NoReturn:
    if as_json:
        click.echo(json.dumps(found.as_dict(path)))
        sys.exit(1 if found.needed else 0)
    kids, stale = found.rows_without_kids, found.stale_without_ids
    lines = [
        f"{escape(str(path))}: {found.nodes:,} nodes",
        f"kids: {_state(found.kids_needed)} ({kids:,} rows without kids"
        + ("; their children are gone)" if kids and not found.kids_needed else ")"),
        f"stale ids: {_state(found.stale_ids_needed)} ({stale:,} entries without ids"
        + ("; their nodes are gone)" if stale and not found.stale_ids_needed else ")"),
        "prefix index: done"
        if found.prefix_index
        else "prefix index: needed (the node table still indexes whole hashes)",
        f"{len(found.needed)} step(s) needed: stop the writer and every pruner, then run "
        "`prunelog upgrade-store`"
        if found.needed
        else "the store is current: nothing to do",
    ]
    for line in lines:
        _say(console, line)
    sys.exit(1 if found.needed else 0)


def _state(needed: bool) -> str:
    return "needed" if needed else "done"


def _upgrade(path: Path, out: Console, as_json: bool) -> None:
    started = time.monotonic()
    steps: dict[str, dict[str, Any]] = {}
    with SqliteStateStore.open(path) as store:
        conn = store.connection
        _say(out, f"upgrading {escape(str(path))}")
        filled, seconds = _timed("filling the kids of old node rows", store.backfill_kids)
        left = _count(conn, "SELECT count(*) FROM nodes WHERE kids IS NULL")
        steps["kids"] = {"filled": filled, "left_empty": left, "seconds": seconds}
        note = f" ({left:,} left without kids: their children are gone)" if left else ""
        _say(out, f"kids: {_filled(filled, 'rows')} in {seconds:.2f} s{note}")

        filled, seconds = _timed("filling the ids of old stale entries", store.backfill_stale_ids)
        left = _count(conn, f"SELECT count(*) FROM stale WHERE {_STALE_UNFILLED}")
        steps["stale_ids"] = {"filled": filled, "left_empty": left, "seconds": seconds}
        note = f" ({left:,} left without ids: their nodes are gone)" if left else ""
        _say(out, f"stale ids: {_filled(filled, 'entries')} in {seconds:.2f} s{note}")

        rows = store.node_count()
        rebuilt, seconds = False, 0.0
        if store.hash_index.prefixed:
            _say(out, "node table: already on the prefix index")
        else:
            _announce_rebuild(out, path, conn, rows)
            rebuilt, seconds = _timed("rebuilding the node table", store.rebuild_nodes)
            _say(out, f"node table: moved to the prefix index in {seconds:.2f} s")
        steps["rebuild"] = {"rebuilt": rebuilt, "rows": rows, "seconds": seconds}
    total = round(time.monotonic() - started, 3)
    changed = bool(steps["kids"]["filled"] or steps["stale_ids"]["filled"] or rebuilt)
    done = [
        f"{steps['kids']['filled']:,} rows given kids",
        f"{steps['stale_ids']['filled']:,} stale entries given ids",
        "node table rebuilt" if rebuilt else "node table already on the prefix index",
    ]
    _say(
        out,
        f"upgraded in {total:.1f} s: {', '.join(done)}"
        if changed
        else f"nothing to do: the store was already current ({total:.1f} s)",
    )
    if as_json:
        summary = {"store": str(path), "changed": changed, "seconds": total, "steps": steps}
        click.echo(json.dumps(summary))


def _say(out: Console, text: str) -> None:
    """One line, never wrapped (a log collector reads it whole)."""
    out.print(text, soft_wrap=True)


def _filled(count: int, what: str) -> str:
    return f"filled {count:,} {what}" if count else "nothing to fill"


def _announce_rebuild(out: Console, path: Path, conn: sqlite3.Connection, rows: int) -> None:
    """The rebuild is the long step: say what it copies and whether the disk has room."""
    pages = _count(conn, "PRAGMA page_count") - _count(conn, "PRAGMA freelist_count")
    used = pages * _count(conn, "PRAGMA page_size")
    free = shutil.disk_usage(path.parent).free
    _say(
        out,
        f"rebuilding the node table ({rows:,} rows; the store holds {used / _MB:,.1f} MB, "
        f"{free / _MB:,.1f} MB free on disk); it holds the write lock until done...",
    )
    if free < used:
        err.print(
            f"[yellow]warning:[/] {free / _MB:,.1f} MB free may be too little: the rebuild "
            "needs about the node table's size and rolls back if the disk fills up"
        )
