"""`prunelog audit --cycle N --verify`: a pruned cycle verifies; a store doctored by hand, a
missing or altered reach set, and a batch that deleted a marked node do not; a log written
before batches recorded row ids still replays, and says which batches it cannot verify."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import msgpack
import pytest

from domain.cycle import PruneCycle, cycle_uuid
from domain.snapshot import Snapshot, snapshot_uuid
from infrastructure import smt
from infrastructure.config_file import CONFIG_FILE, load_settings
from infrastructure.cycle_verify import CycleVerdict, verify_cycle
from infrastructure.eventlog import STATE_FILE
from infrastructure.runtime import Runtime
from infrastructure.sqlite_nodes import SqliteNodeStore
from infrastructure.transcoder import MsgpackTranscoder
from tests.fakes import events_db, write_chain

REPO = Path(__file__).resolve().parents[2]
CONFIG = "[prune]\nprotection_orders = 40\ndelete_batch_size = 50\ninterval_s = 0.05\n"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two pruned cycles; the writer moved on between them, so cycle 2 pruned roots that
    cycle 1 retained."""
    data = tmp_path_factory.mktemp("verify") / "data"
    write_chain(data / STATE_FILE, 300, seed=3)
    (data / CONFIG_FILE).write_text(CONFIG)
    with Runtime(load_settings(data)) as rt:
        rt.pruner.run_cycle()
    write_chain(data / STATE_FILE, 100, seed=4)
    with Runtime(load_settings(data)) as rt:
        rt.pruner.run_cycle()
    return data


@pytest.fixture
def data_dir(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "data"))


def verify(data_dir: Path, cycle_no: int) -> CycleVerdict:
    with Runtime(load_settings(data_dir)) as rt:
        return verify_cycle(rt, cycle_no)


def prunelog(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "prunelog"
    command = [str(script)] if script.exists() else [sys.executable, "-c", _MAIN]
    return subprocess.run(
        [*command, "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


_MAIN = "from infrastructure.cli import main; main()"


def state_db(data_dir: Path) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(data_dir / STATE_FILE, isolation_level=None))


def newest_root_child(data_dir: Path) -> bytes:
    """A node under the newest root: retained by the last cycle, pruned by nobody."""
    with state_db(data_dir) as db:
        (root,) = db.execute("SELECT state_root FROM roots ORDER BY tx_order DESC").fetchone()
        (data,) = db.execute("SELECT data FROM nodes WHERE hash = ?", (root,)).fetchone()
    return smt.children(bytes(data))[0]


def rewrite_batches(data_dir: Path, cycle_no: int, change: Any) -> None:
    """Rewrites the stored NodesSwept rows of a cycle: `change(fields)` edits them in place."""
    transcoder = MsgpackTranscoder()
    cid = cycle_uuid("default", cycle_no).hex
    with events_db(data_dir) as db:
        rows = db.execute(
            "SELECT rowid, state FROM stored_events "
            "WHERE topic = 'prunelog:PruneCycle.NodesSwept' AND originator_id = ?",
            (cid,),
        ).fetchall()
        for rowid, state in rows:
            fields = transcoder.decode(state)
            change(fields)
            db.execute(
                "UPDATE stored_events SET state = ? WHERE rowid = ?",
                (transcoder.encode(fields), rowid),
            )


# --- verified ------------------------------------------------------------------------------


def test_a_pruned_cycle_verifies_with_exit_0_and_says_so_in_json(data_dir: Path) -> None:
    done = prunelog(data_dir, "audit", "--cycle", "2", "--verify", "--json")

    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["verified"] and verdict["violations"] == [] and verdict["unverified"] == []
    assert verdict["batches"] and all(b["status"] == "ok" for b in verdict["batches"])
    (reach,) = verdict["reach_sets"]
    assert reach["loaded"] == reach["recorded"] > 0 and reach["error"] is None
    assert verdict["roots"]["nodes_verified"] == reach["recorded"]


def test_a_human_report_names_both_checks_and_ends_with_the_verdict(data_dir: Path) -> None:
    done = prunelog(data_dir, "audit", "--cycle", "2", "--verify")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("cycle 2 of group default: completed")
    assert any(line.startswith("(a)") for line in lines)
    assert any(line.startswith("(b)") for line in lines)
    assert lines[-1] == "verified"


def test_nodes_a_later_cycle_pruned_from_a_cycles_retained_roots_are_no_violation(
    data_dir: Path,
) -> None:
    verdict = verify(data_dir, 1)

    assert verdict.verified, verdict.violations + verdict.unverified
    assert verdict.roots is not None and verdict.roots.missing_pruned_later > 0


# --- violations ----------------------------------------------------------------------------


def test_a_node_deleted_by_hand_from_a_retained_root_fails_verification(data_dir: Path) -> None:
    gone = newest_root_child(data_dir)
    with state_db(data_dir) as db:
        assert db.execute("DELETE FROM nodes WHERE hash = ?", (gone,)).rowcount == 1

    done = prunelog(data_dir, "audit", "--cycle", "2", "--verify")

    assert done.returncode == 1
    assert f"VIOLATION: node {gone.hex()}" in done.stdout
    assert "removed outside prunelog" in done.stdout
    assert done.stdout.splitlines()[-1] == "NOT verified"


def test_a_missing_reach_set_file_fails_verification_with_a_clear_message(
    data_dir: Path,
) -> None:
    for path in (data_dir / "reach").glob("reach-2-*"):
        path.unlink()

    done = prunelog(data_dir, "audit", "--cycle", "2", "--verify")

    assert done.returncode == 1
    assert "VIOLATION: reach set of snapshot 2: reach set reach-2-" in done.stdout
    assert "cannot be read" in done.stdout


def test_a_reach_set_altered_on_disk_fails_its_digest_check(data_dir: Path) -> None:
    (path,) = (data_dir / "reach").glob("reach-2-*")
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))

    verdict = verify(data_dir, 2)

    assert not verdict.verified
    assert any("digest is" in v for v in verdict.violations)
    assert all(b.status == "unverifiable" for b in verdict.batches)


def test_a_batch_that_deleted_a_node_of_the_reach_set_is_a_violation(data_dir: Path) -> None:
    with Runtime(load_settings(data_dir)) as rt:
        digest = rt.log.get(snapshot_uuid("default", 2), Snapshot).reach_digest
        assert digest is not None
        marked = next(iter(rt.reach_store.load(2, digest)))

    def claim_the_marked_node(fields: dict[str, Any]) -> None:
        if fields["batch_no"] == 1:
            fields["row_ids"][0] = marked

    rewrite_batches(data_dir, 2, claim_the_marked_node)
    verdict = verify(data_dir, 2)

    first = next(b for b in verdict.batches if b.batch_no == 1)
    assert first.status == "violation" and first.in_reach == [marked]
    assert any("batch 1 (" in v and "in the reach set" in v for v in verdict.violations)


# --- logs from before row ids ------------------------------------------------------------


def test_a_log_written_before_row_ids_replays_and_verify_names_each_batch_it_cannot_check(
    data_dir: Path,
) -> None:
    def as_version_1(fields: dict[str, Any]) -> None:
        del fields["row_ids"], fields["class_version"]

    rewrite_batches(data_dir, 2, as_version_1)

    with Runtime(load_settings(data_dir)) as rt:
        cycle = rt.log.get(cycle_uuid("default", 2), PruneCycle)  # replays
        batches = [e for e in rt.log.events() if type(e).__qualname__ == "PruneCycle.NodesSwept"]
    assert cycle.finished and batches and all(e.row_ids == [] for e in batches[-3:])

    done = prunelog(data_dir, "audit", "--cycle", "2", "--verify")

    assert done.returncode == 1
    assert "NOT VERIFIED: cannot verify batch 1: no row ids recorded" in done.stdout
    assert "VIOLATION" not in done.stdout


def test_a_journal_from_before_row_ids_gains_the_column_and_its_entries_read_without_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / STATE_FILE
    with closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE sweep_journal (batch_key TEXT PRIMARY KEY, cycle_no INTEGER NOT NULL, "
            "snapshot_id INTEGER NOT NULL, phase TEXT NOT NULL, batch_no INTEGER NOT NULL, "
            "deleted BLOB NOT NULL, logged INTEGER NOT NULL DEFAULT 0)"
        )
        deleted = msgpack.packb([(b"\x01" * 32, 70)], use_bin_type=True)
        db.execute(
            "INSERT INTO sweep_journal VALUES ('default/1/1', 1, 1, 'SweepExpired', 1, ?, 0)",
            (deleted,),
        )
        db.commit()

    nodes = SqliteNodeStore(path)
    try:
        (entry,) = nodes.unlogged_journal()
    finally:
        nodes.close()

    assert entry.deleted == [(b"\x01" * 32, 70)] and entry.row_ids == []
    assert entry.event_rows == 0  # one event for the whole entry, as journaled then


# --- usage ---------------------------------------------------------------------------------


def test_an_unknown_cycle_is_a_one_line_usage_error_with_exit_2(data_dir: Path) -> None:
    done = prunelog(data_dir, "audit", "--cycle", "99", "--verify")

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == ["error: group 'default' has no cycle 99"]


def test_verify_without_a_cycle_is_a_usage_error(data_dir: Path) -> None:
    done = prunelog(data_dir, "audit", "00" * 32, "--verify")

    assert done.returncode == 2
    assert "--verify goes with --cycle N" in done.stderr
