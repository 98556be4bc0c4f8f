"""`prunelog upgrade-store` on a store an older prunelog made (no `nodes.kids`, no
`stale.node_id`/`node_size`, `hash UNIQUE` instead of the prefix index): `--check` finds all
three steps and changes nothing; the upgrade does them, keeping every row and every root;
a second run does nothing; and a missing, foreign or busy store is a clear error."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from infrastructure import smt, state_store
from infrastructure.cli import cli
from infrastructure.eventlog import STATE_FILE
from infrastructure.state_store import SqliteStateStore
from infrastructure.workload import WorkloadWriter

# The nodes table of a store made before the prefix index (and, once kids is dropped, before
# the kids column).
OLD_NODES_DDL = (
    "CREATE TABLE nodes (id INTEGER PRIMARY KEY AUTOINCREMENT, hash BLOB NOT NULL UNIQUE, "
    "data BLOB NOT NULL, written_order INTEGER NOT NULL, kids BLOB)"
)
SEED, KEYS, TXS = 31, 60, 40
Dump = tuple[list[tuple[object, ...]], ...]


def make_old_store(data_dir: Path) -> Path:
    """A store as an older prunelog left it, with a little garbage a sweep left half done: a
    node whose child is gone (its kids cannot be filled) and a stale entry whose node is gone
    (its ids cannot be filled)."""
    data_dir.mkdir()
    path = data_dir / STATE_FILE
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(OLD_NODES_DDL)
    with SqliteStateStore.open(path) as store:
        WorkloadWriter(store, SEED, keys=KEYS).run(TXS, batch=4)
        orphan = smt.encode_internal({0: smt.sha256(b"gone"), 1: smt.sha256(b"also gone")})
        store.connection.execute(
            "INSERT INTO nodes(hash, data, written_order) VALUES (?, ?, 0)",
            (smt.node_hash(orphan), orphan),
        )
        store.connection.execute(
            "INSERT INTO stale(stale_order, hash) VALUES (1, ?)", (smt.sha256(b"swept"),)
        )
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("ALTER TABLE nodes DROP COLUMN kids")
        conn.execute("ALTER TABLE stale DROP COLUMN node_id")
        conn.execute("ALTER TABLE stale DROP COLUMN node_size")
    return path


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    return make_old_store(tmp_path / "data")


def invoke(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--data-dir", str(data_dir), "upgrade-store", *args])


def as_json(data_dir: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = invoke(data_dir, *args, "--json")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    parsed: dict[str, Any] = json.loads(result.stdout)
    return result.exit_code, parsed


def dump(path: Path) -> Dump:
    """The schema, every node row (whatever its columns), every stale entry, and the file."""
    with closing(sqlite3.connect(path)) as conn:
        return (
            [tuple(r) for r in conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name")],
            [tuple(r) for r in conn.execute("SELECT * FROM nodes ORDER BY id")],
            [tuple(r) for r in conn.execute("SELECT * FROM stale ORDER BY stale_order, hash")],
        )


def rows(path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        found = conn.execute("SELECT id, hash, data, written_order FROM nodes ORDER BY id")
        return [tuple(r) for r in found]


def test_check_on_an_old_store_finds_all_three_steps_exits_1_and_changes_nothing(
    old_store: Path,
) -> None:
    before = dump(old_store)

    code, found = as_json(old_store.parent, "--check")
    text = invoke(old_store.parent, "--check")

    assert code == 1 and text.exit_code == 1
    assert found["needed"] == ["kids", "stale_ids", "rebuild"] and not found["current"]
    assert found["kids"]["rows_without_kids"] == found["nodes"] == len(rows(old_store))
    assert found["stale_ids"]["entries_without_ids"] > 1
    assert found["rebuild"] == {"needed": True, "prefix_index": False}
    assert "prefix index: needed" in text.stdout and "3 step(s) needed" in text.stdout
    assert dump(old_store) == before


def test_upgrade_store_moves_an_old_store_to_the_current_layout_keeping_every_row_and_root(
    old_store: Path,
) -> None:
    before = rows(old_store)

    result = invoke(old_store.parent)

    assert result.exit_code == 0, result.output
    assert "rebuilding the node table" in result.stdout
    assert "node table: moved to the prefix index" in result.stdout
    assert rows(old_store) == before
    with SqliteStateStore(old_store) as store:
        conn = store.connection
        assert store.hash_index.prefixed
        # Only the garbage keeps NULL: the row whose children are gone, the entry whose node is.
        assert conn.execute("SELECT count(*) FROM nodes WHERE kids IS NULL").fetchone() == (1,)
        unfilled = "SELECT hash FROM stale WHERE node_id IS NULL OR node_size IS NULL"
        assert conn.execute(unfilled).fetchall() == [(smt.sha256(b"swept"),)]
        roots = [bytes(r[0]) for r in conn.execute("SELECT state_root FROM roots")]
        assert len(roots) == TXS
        for root in roots:
            report = store.verify(root)
            assert not report.missing and not report.corrupt
    assert invoke(old_store.parent, "--check").exit_code == 0


def test_a_second_upgrade_does_nothing_and_says_so(old_store: Path) -> None:
    assert invoke(old_store.parent).exit_code == 0
    after = dump(old_store)

    again = invoke(old_store.parent)

    assert again.exit_code == 0, again.output
    assert "nothing to do: the store was already current" in again.stdout
    assert "already on the prefix index" in again.stdout
    assert dump(old_store) == after


def test_upgrade_with_json_prints_one_object_with_the_counts_and_narrates_on_stderr(
    old_store: Path,
) -> None:
    nodes = len(rows(old_store))
    code, found = as_json(old_store.parent, "--check")
    assert code == 1

    result = invoke(old_store.parent, "--json")
    code, done = result.exit_code, json.loads(result.stdout)
    code_again, again = as_json(old_store.parent)

    assert code == code_again == 0
    assert "rebuilding the node table" in result.stderr and "upgraded in" in result.stderr
    steps = done["steps"]
    assert done["changed"] and done["store"] == str(old_store)
    assert steps["kids"]["filled"] == nodes - 1 and steps["kids"]["left_empty"] == 1
    assert steps["stale_ids"]["filled"] == found["stale_ids"]["entries_without_ids"] - 1
    assert steps["stale_ids"]["left_empty"] == 1
    assert steps["rebuild"]["rebuilt"] and steps["rebuild"]["rows"] == nodes
    assert all(isinstance(s["seconds"], float) for s in steps.values())
    assert not again["changed"] and again["steps"]["kids"]["filled"] == 0
    assert not again["steps"]["rebuild"]["rebuilt"]
    code, current = as_json(old_store.parent, "--check")
    assert code == 0 and current["current"] and current["needed"] == []
    assert current["kids"]["rows_without_kids"] == 1


def test_a_data_dir_without_a_state_store_is_a_usage_error_and_creates_nothing(
    tmp_path: Path,
) -> None:
    for args in ((), ("--check",)):
        result = invoke(tmp_path, *args)
        assert result.exit_code == 2
        assert "no state store at" in result.stderr
        assert list(tmp_path.iterdir()) == []
    assert invoke(tmp_path / "missing").exit_code == 2
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("content", [b"not a database at all " * 200, b""])
def test_a_file_that_is_not_a_state_store_is_a_readable_error_with_exit_1(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)

    for args in ((), ("--check",)):
        result = invoke(tmp_path, *args)
        assert result.exit_code == 1
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert "state store" in result.stderr and "Traceback" not in result.output
    assert (tmp_path / STATE_FILE).read_bytes() == content


def test_a_store_whose_write_lock_stays_taken_is_a_clear_error_not_a_traceback(
    old_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert invoke(old_store.parent).exit_code == 0  # the columns exist: opening needs no lock
    with closing(sqlite3.connect(old_store, isolation_level=None)) as writer:
        writer.execute("UPDATE nodes SET kids = NULL WHERE id = (SELECT max(id) FROM nodes)")
        writer.execute("BEGIN IMMEDIATE")
        monkeypatch.setattr(state_store, "BUSY_TIMEOUT_S", 0.2)
        start = time.monotonic()

        result = invoke(old_store.parent)

        writer.execute("ROLLBACK")
    assert result.exit_code == 1 and time.monotonic() - start < 10
    assert "is busy: another process kept its write lock" in result.stderr
    assert "Traceback" not in result.output
