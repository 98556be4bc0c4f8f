"""Every prunelog command end to end, in its own process as an operator runs it, against a
data directory made by `prunelog demo`; bad input gets one line on stderr and exit code 2
(usage or config); and `replay --at P` shows the locks, health and phase that the read
models showed when the log head was P.

Each kind of bad input runs once in a process of its own; its variants then go through the
same entry point (`infrastructure.cli.main`) in this process, which keeps the file fast."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import pytest

from infrastructure.cli import cli
from infrastructure.cli import main as cli_main
from infrastructure.config_file import CONFIG_FILE
from infrastructure.eventlog import EVENTS_FILE, STATE_FILE
from infrastructure.logs import LOGGER
from tests.fakes import write_chain

REPO = Path(__file__).resolve().parents[2]
PARALLEL = 3  # read commands of one test run side by side
PHASES = ("BuildReach", "SweepExpired", "IncrementalSweep")


@dataclass(frozen=True)
class Done:
    """A finished prunelog command: its arguments, exit code, stdout and stderr."""

    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]


def environment(**extra: str) -> dict[str, str]:
    """This environment without prunelog's own settings, and wide enough that rich tables do
    not abbreviate the values that the tests look for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNELOG_")}
    return {**env, "COLUMNS": "240", **extra}


def prunelog(data_dir: Path, *args: str, **env: str) -> Done:
    """`python -m infrastructure.cli --data-dir DATA_DIR ARGS` in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-m", "infrastructure.cli", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environment(**env),
        timeout=120,
        check=False,
    )
    return Done(args, done.returncode, done.stdout, done.stderr)


def prunelog_all(data_dir: Path, *commands: Sequence[str]) -> list[Done]:
    """Read commands side by side, each in its own process; the results in the order given."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda args: prunelog(data_dir, *args), commands))


def ok(done: Done) -> Done:
    assert done.code == 0, done
    assert "Traceback" not in done.err, done
    return done


def one_line_error(done: Done, code: int, *fragments: str) -> str:
    """The command failed with `code`, printed nothing on stdout and one line on stderr (no
    traceback, no usage block) that says what was wrong."""
    assert done.code == code, done
    assert done.out == "", done
    lines = done.err.splitlines()
    assert len(lines) == 1, done
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: "), done
    for fragment in fragments:
        assert fragment in lines[0], done
    return lines[0]


class InProcess:
    """The console script's entry point, called in this process with these arguments."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, data_dir: Path, *args: str) -> Done:
        argv = sys.argv
        sys.argv = ["prunelog", "--data-dir", str(data_dir), *args]
        try:
            cli_main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.argv = argv
        out, err = self.capsys.readouterr()
        return Done(args, code, out, err)


@pytest.fixture
def in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[InProcess]:
    for name in [k for k in os.environ if k.startswith("PRUNELOG_")]:
        monkeypatch.delenv(name)
    handlers, level, propagate = LOGGER.handlers[:], LOGGER.level, LOGGER.propagate
    yield InProcess(capsys)
    LOGGER.handlers[:] = handlers  # the CLI points the logger at the captured stderr
    LOGGER.setLevel(level or logging.NOTSET)
    LOGGER.propagate = propagate


# --- a data directory made by the demo -----------------------------------------------------


@dataclass(frozen=True)
class Demo:
    root: Path  # the --data-dir given to the demo
    data_dir: Path  # where it put its data
    summary: dict[str, Any]  # demo --json
    exported: list[dict[str, Any]]  # export
    status: dict[str, Any]  # status --json

    @property
    def head(self) -> int:
        return int(self.summary["log_head"])

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.exported if r["type"] == kind]

    def cycle_id(self, cycle_no: int) -> str:
        (created,) = (
            r for r in self.of_type("PruneCycle.Created") if r["fields"]["cycle_no"] == cycle_no
        )
        return str(created["aggregate_id"])

    def copy(self, to: Path) -> Path:
        """For the commands that append to the log."""
        return Path(shutil.copytree(self.data_dir, to))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """`prunelog demo` once for the module, then `export` and `status` on its data directory
    (`status` catches every read model up, so the tests can read them side by side)."""
    root = tmp_path_factory.mktemp("e2e") / "data"
    summary = ok(prunelog(root, "demo", "--cycles", "2", "--initial-txs", "300", "--json")).json()
    data_dir = Path(summary["data_dir"])
    exported, status = prunelog_all(data_dir, ["export"], ["status", "--json"])
    return Demo(root, data_dir, summary, ok(exported).json_lines(), ok(status).json())


def test_the_demo_prunes_while_a_writer_writes_and_leaves_its_data_in_a_demo_folder(
    demo: Demo,
) -> None:
    s = demo.summary

    assert demo.data_dir == demo.root / "demo"
    for name in (EVENTS_FILE, STATE_FILE, CONFIG_FILE):
        assert (demo.data_dir / name).is_file()
    assert s["passed"] is True and s["exit_code"] == 0
    assert s["cycles_completed"] == 4  # two with the writer running, two after it stopped
    assert s["deleted"]["SweepExpired"] > 0 and s["bytes_freed"]["SweepExpired"] > 0
    assert s["stale_entries_consumed"] > 0  # IncrementalSweep's work, even when it deletes none
    assert s["nodes_after"] > 0 and s["log_head"] == len(demo.exported)


def test_status_locks_health_and_snapshots_show_the_demos_last_cycle(demo: Demo) -> None:
    status, locks_json, health, health_json, snaps_json = map(
        ok,
        prunelog_all(
            demo.data_dir,
            ["status"],
            ["locks", "--json"],
            ["health"],
            ["health", "--json"],
            ["snapshots", "--json"],
        ),
    )

    st = demo.status
    assert st["group"] == "default" and st["log_head"] == demo.head
    assert st["cycle"] == {"cycle": 4, "state": "Idle", "finished": True, "snapshot": 4}
    assert st["snapshot"]["id"] == 4 and st["snapshot"]["status"] == "validated"
    assert st["lock"]["holder"] is None and st["health"] == "healthy"
    assert [(r["cycle_no"], r["phase"], r["outcome"]) for r in st["last_cycle"]] == [
        (4, phase, "completed") for phase in PHASES
    ]
    for text in (f"log head #{demo.head}", "cycle: 4 — Idle (finished)", "lock: free"):
        assert text in status.out
    assert "health: healthy" in status.out and "last finished cycle" in status.out

    (lock,) = locks_json.json()
    assert (lock["grp"], lock["owner"], lock["phase"], lock["snapshot_id"]) == (
        "default",
        None,
        None,
        4,
    )

    assert {r["scope"]: r["status"] for r in health_json.json()} == dict.fromkeys(
        (*PHASES, "overall"), "healthy"
    )
    assert "overall" in health.out and "SweepExpired" in health.out

    catalog = snaps_json.json()
    assert [s["cycle_no"] for s in catalog] == [4, 3, 2, 1]
    assert {s["status"] for s in catalog} == {"validated"}
    assert all(s["reach_count"] > 0 for s in catalog)


def test_export_events_and_replay_print_the_log_and_replay_filters_it(demo: Demo) -> None:
    first, second = demo.exported[9], demo.exported[19]
    events, events_json, by_cycle, by_phase, by_type, by_time, check = map(
        ok,
        prunelog_all(
            demo.data_dir,
            ["events", "--limit", "3"],
            ["events", "--start", "5", "--limit", "2", "--json"],
            ["replay", "--cycle", "1", "--json"],
            ["replay", "--phase", "SweepExpired", "--json"],
            ["replay", "--type", "NodesSwept"],
            ["replay", "--since", first["time"], "--until", second["time"], "--json"],
            ["replay", "--check"],
        ),
    )

    exported = demo.exported
    assert [r["position"] for r in exported] == list(range(1, demo.head + 1))
    assert all({"aggregate_id", "aggregate", "type", "time", "fields"} <= set(r) for r in exported)
    assert events_json.json_lines() == exported[4:6]
    lines = events.out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("#1 ") and "PhaseLock.Created" in lines[0]

    cycle_1 = by_cycle.json_lines()
    assert (
        cycle_1[0]["type"] == "Snapshot.Created" and cycle_1[-1]["type"] == "PruneCycle.Completed"
    )
    assert all(
        r["aggregate_id"] == demo.cycle_id(1) or r["fields"].get("cycle_no") == 1 for r in cycle_1
    )
    sweeping = by_phase.json_lines()
    assert sweeping and {r["fields"]["phase"] for r in sweeping} == {"SweepExpired"}
    swept = demo.of_type("PruneCycle.NodesSwept")
    assert [line.split()[:2] for line in by_type.out.splitlines()] == [
        [f"#{r['position']}", "PruneCycle.NodesSwept"] for r in swept
    ]

    lo, hi = (datetime.fromisoformat(r["time"]) for r in (first, second))
    assert by_time.json_lines() == [
        r for r in exported if lo <= datetime.fromisoformat(r["time"]) <= hi
    ]
    assert check.out.strip() == f"legal: {demo.head} events replay cleanly"


def test_replay_at_a_position_or_at_its_time_shows_the_lock_held_mid_sweep(demo: Demo) -> None:
    swept = demo.of_type("PruneCycle.NodesSwept")[0]
    position = swept["position"]
    locked = [r for r in demo.of_type("PhaseLock.Locked") if r["position"] < position][-1]
    text, by_position, by_time = map(
        ok,
        prunelog_all(
            demo.data_dir,
            ["replay", "--at", str(position)],
            ["replay", "--at", str(position), "--json"],
            ["replay", "--at", swept["time"], "--json"],
        ),
    )

    snapshot = swept["fields"]["snapshot_id"]
    state = by_position.json()
    assert state == {
        "position": position,
        "locks": [
            {
                "group": "default",
                "holder": locked["fields"]["owner"],
                "phase": "SweepExpired",
                "snapshot": snapshot,
                "since": locked["fields"]["at"],
            }
        ],
        "cycles": [
            {
                "group": "default",
                "cycle": 1,
                "state": "SweepExpired",
                "snapshot": snapshot,
                "finished": False,
            }
        ],
        "health": {"overall": "healthy", "phases": dict.fromkeys(PHASES, "healthy"), "alerts": []},
    }
    # The time of an event stands for the last event at or before it: that one.
    assert [r for r in demo.exported if r["time"] == swept["time"]] == [swept]
    assert by_time.json() == state
    assert f"as of log position {position}" in text.out
    assert locked["fields"]["owner"] in text.out and "health: healthy" in text.out


def test_audit_names_the_cycle_snapshot_phase_and_batch_that_deleted_a_node(demo: Demo) -> None:
    swept = demo.of_type("PruneCycle.NodesSwept")[0]
    deleted = swept["fields"]["hashes"][0]
    never = hashlib.sha256(b"a node that no writer wrote").hexdigest()
    text, as_json, never_text = map(
        ok,
        prunelog_all(
            demo.data_dir, ["audit", deleted], ["audit", deleted, "--json"], ["audit", never]
        ),
    )

    report = as_json.json()
    assert report["node_hash"] == deleted
    first = report["deletions"][0]
    assert first == {
        "grp": "default",
        "cycle_no": 1,
        "snapshot_id": swept["fields"]["snapshot_id"],
        "phase": swept["fields"]["phase"],
        "batch_no": swept["fields"]["batch_no"],
        "position": swept["position"],
        "at": first["at"],
    }
    assert deleted[:16] in text.out and "SweepExpired" in text.out
    # "Or that it was never deleted" is an answer, not a failure: exit 0, nothing on stderr.
    assert never_text.out == f"{never} was never deleted by prunelog\n"
    assert never_text.err == ""


def test_audit_of_a_cycle_lists_its_batches_and_verify_re_checks_them(demo: Demo) -> None:
    batches, verify, verify_json, nothing_deleted = map(
        ok,
        prunelog_all(
            demo.data_dir,
            ["audit", "--cycle", "1", "--json"],
            ["audit", "--cycle", "1", "--verify"],
            ["audit", "--cycle", "1", "--verify", "--json"],
            ["audit", "--cycle", "4"],
        ),
    )

    swept = [
        r for r in demo.of_type("PruneCycle.NodesSwept") if r["aggregate_id"] == demo.cycle_id(1)
    ]
    assert [(b["position"], b["batch_no"], b["nodes"]) for b in batches.json()["batches"]] == [
        (r["position"], r["fields"]["batch_no"], r["fields"]["count"]) for r in swept
    ]
    verdict = verify_json.json()
    assert verdict["verified"] is True and verdict["cycle"] == 1
    assert [b["status"] for b in verdict["batches"]] == ["ok"] * len(swept)
    assert verify.out.splitlines()[-1] == "verified"
    # Cycle 4 ran after the writer stopped, with nothing left to delete: a known cycle.
    assert "cycle 4" in nothing_deleted.out and "(empty)" in nothing_deleted.out


def test_validate_and_the_projection_commands_pass_on_the_demo(demo: Demo, tmp_path: Path) -> None:
    data = demo.copy(tmp_path / "data")  # validate appends its verdict to the log

    report = ok(prunelog(data, "validate", "--json")).json()
    rebuild = ok(prunelog(data, "projections", "rebuild"))
    status = ok(prunelog(data, "projections", "status", "--json"))

    assert report["passed"] is True
    assert {r["check"] for r in report["results"]} >= {"log_legality", "reach_set_integrity"}
    assert "failed" not in {r["status"] for r in report["results"]}
    names = ("locks", "snapshots", "audit", "timeline", "health")
    for name in names:
        assert f"rebuilt {name}: " in rebuild.out
    rows = status.json()
    assert {r["projection"] for r in rows} == set(names)
    assert {(r["tables"], r["matches rebuild"], r["lag"]) for r in rows} == {("ok", "yes", 0)}


def test_init_keeps_the_demos_config_and_run_once_prunes_one_more_cycle(
    demo: Demo, tmp_path: Path
) -> None:
    data = demo.copy(tmp_path / "data")
    config = (data / CONFIG_FILE).read_text()

    init = ok(prunelog(data, "init"))
    (summary,) = ok(prunelog(data, "run", "--once", "--json")).json_lines()

    assert f"{data / CONFIG_FILE} already exists; left unchanged" in init.out
    assert (data / CONFIG_FILE).read_text() == config
    assert (summary["cycle"], summary["snapshot"]) == (5, 5)
    assert set(summary["deleted"]) == set(PHASES)


def test_run_stops_on_an_unreadable_journal_row_with_one_line_and_deletes_nothing(
    demo: Demo, tmp_path: Path
) -> None:
    data = demo.copy(tmp_path / "data")
    state = data / STATE_FILE
    with closing(sqlite3.connect(state)) as db:
        db.execute(
            "INSERT INTO sweep_journal(batch_key, cycle_no, snapshot_id, phase, batch_no, "
            "deleted, row_ids, event_rows) VALUES ('default/9/1', 9, 9, 'SweepExpired', 1, "
            "x'c1', NULL, 0)"
        )
        db.commit()
        nodes = db.execute("SELECT COUNT(*) FROM nodes").fetchone()[0]

    done = prunelog(data, "run", "--once")

    assert done.code == 1 and "Traceback" not in done.err, done
    (line,) = done.err.splitlines()
    assert line.startswith("error: CorruptJournalError: sweep journal row 'default/9/1'"), done
    assert str(state) in line and "left in place" in line
    with closing(sqlite3.connect(state)) as db:
        assert db.execute("SELECT batch_key FROM sweep_journal").fetchall() == [("default/9/1",)]
        assert db.execute("SELECT COUNT(*) FROM nodes").fetchone()[0] == nodes


# --- bad input: one line on stderr and exit code 2 ----------------------------------------


def read_commands(
    command: click.Command = cli, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every command of the CLI but the three that create a data directory (audit needs
    something to audit)."""
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from read_commands(sub, (*path, name))
    elif path not in (("init",), ("run",), ("demo",)):
        yield (*path, "--cycle", "1") if path == ("audit",) else path


def test_a_read_command_on_a_missing_data_directory_fails_and_creates_nothing(
    tmp_path: Path, in_process: InProcess
) -> None:
    missing = tmp_path / "no-such-dir"
    commands = list(read_commands())

    one_line_error(prunelog(missing, "status"), 2, f"no data directory at {missing}")
    for args in commands:
        one_line_error(in_process(missing, *args), 2, f"no data directory at {missing}")
    assert not missing.exists()
    assert {c[0] for c in commands} == {
        "audit",
        "events",
        "export",
        "health",
        "locks",
        "projections",
        "replay",
        "snapshots",
        "status",
        "upgrade-store",
        "validate",
    }


def test_a_malformed_node_hash_is_a_usage_error(demo: Demo, in_process: InProcess) -> None:
    says = "Invalid value for NODE_HASH: 'zz' is not a node hash (64 hex digits)"

    one_line_error(prunelog(demo.data_dir, "audit", "zz"), 2, says)
    for bad in ("abcd", "g" * 64, "ab" * 33, "a" * 63, demo.exported[0]["aggregate_id"]):
        one_line_error(in_process(demo.data_dir, "audit", bad), 2, "is not a node hash")


def test_an_unknown_cycle_is_a_usage_error_for_audit(demo: Demo, in_process: InProcess) -> None:
    says = "error: group 'default' has no cycle 99"

    assert one_line_error(prunelog(demo.data_dir, "audit", "--cycle", "99"), 2) == says
    assert (
        one_line_error(in_process(demo.data_dir, "audit", "--cycle", "99", "--verify"), 2) == says
    )


def test_a_garbage_time_or_position_is_a_usage_error_for_replay(
    demo: Demo, in_process: InProcess
) -> None:
    at = prunelog(demo.data_dir, "replay", "--at", "yesterday")

    one_line_error(
        at, 2, "Invalid value for '--at': 'yesterday' is neither a log position nor an ISO 8601"
    )
    for args, says in [
        (("replay", "--at", "-3"), "'--at'"),
        (("replay", "--at", "2026-01-01T00:00:00"), "'--at'"),  # no timezone
        (("replay", "--since", "noon"), "'--since': 'noon' is not an ISO 8601 time"),
        (("replay", "--until", "2026-01-01"), "'--until': '2026-01-01' has no timezone"),
        (("replay", "--cycle", "one"), "'one' is not a valid integer"),
        (("prune-everything",), "No such command 'prune-everything'"),
        (("status", "--colour"), "No such option '--colour'"),
    ]:
        one_line_error(in_process(demo.data_dir, *args), 2, says)


CORRUPT_CONFIGS = [
    ("this is = = not toml\n", "is not valid TOML"),
    ('colour = "blue"\n', "unknown key(s) colour"),
    ('[prune]\ndelete_batch_size = "many"\n', "delete_batch_size must be int"),
    ("[prune]\nprotection_orders = -5\n", "protection_orders must be >= 0"),
    ("prune = 3\n", "[prune] must be a table"),
    ("[snapshot]\nbogus = 1\n", "unknown SnapshotManagerConfig key(s): bogus"),
]


def test_a_corrupt_config_is_a_config_error_for_every_command_that_reads_it(
    demo: Demo, tmp_path: Path, in_process: InProcess
) -> None:
    config = tmp_path / "prunelog.toml"
    config.write_text(CORRUPT_CONFIGS[0][0])
    one_line_error(
        prunelog(demo.data_dir, "--config", str(config), "status"), 2, "is not valid TOML"
    )

    for toml, says in CORRUPT_CONFIGS:
        config.write_text(toml)
        for args in [*read_commands(), ("run", "--once")]:
            done = in_process(demo.data_dir, "--config", str(config), *args)
            one_line_error(done, 2, f"config file {config}", says)


def test_a_config_file_that_does_not_exist_is_a_config_error(
    demo: Demo, tmp_path: Path, in_process: InProcess
) -> None:
    done = in_process(demo.data_dir, "--config", str(tmp_path / "nope.toml"), "locks")

    one_line_error(done, 2, f"config file {tmp_path / 'nope.toml'} does not exist")


# --- replay --at against the read models captured at that point ----------------------------


FRESH_CONFIG = """\
[prune]
protection_orders = 40
delete_batch_size = 200
interval_s = 0.05

[recovery]
max_phase_retries = 1
base_retry_delay_ms = 10
max_retry_delay_ms = 20
min_healthy_cycles = 2
"""


@dataclass(frozen=True)
class Capture:
    """What status, locks and health said when the log head was `head`."""

    head: int
    status: dict[str, Any]
    locks: list[dict[str, Any]]
    health: list[dict[str, Any]]

    def as_replayed(self) -> dict[str, Any]:
        """The same, in the shape of `replay --at HEAD --json`."""
        overall = next(r for r in self.health if r["scope"] == "overall")
        cycle = self.status["cycle"]
        return {
            "position": self.head,
            "locks": [
                {
                    "group": r["grp"],
                    "holder": r["owner"],
                    "phase": r["phase"],
                    "snapshot": r["snapshot_id"],
                    "since": r["since"],
                }
                for r in self.locks
            ],
            "cycles": [] if cycle is None else [{"group": self.status["group"], **cycle}],
            "health": {
                "overall": overall["status"],
                "phases": {r["scope"]: r["status"] for r in self.health if r is not overall},
                "alerts": overall["detail"].split(", ") if overall["detail"] else [],
            },
        }


def capture(data_dir: Path) -> Capture:
    """status, locks and health side by side: none of them appends, so they see one head."""
    status, locks, health = prunelog_all(
        data_dir, ["status", "--json"], ["locks", "--json"], ["health", "--json"]
    )
    healthy = status.json()["health"] == "healthy"
    assert status.code == health.code == (0 if healthy else 1), (status, health)
    return Capture(status.json()["log_head"], status.json(), ok(locks).json(), health.json())


def test_replay_at_each_captured_head_shows_what_status_locks_and_health_showed_then(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    write_chain(data / STATE_FILE, 300, seed=3)
    (data / CONFIG_FILE).write_text(FRESH_CONFIG)

    # A pruner killed between two delete batches leaves its lock held mid-sweep.
    killed = prunelog(data, "run", "--once", PRUNELOG_FAULT_KILL_AT="between_batches:1")
    assert killed.code == -9, killed
    captures = [capture(data)]

    # The next run takes the lock over and finishes the cycle; one more, and it is healthy.
    ok(prunelog(data, "run", "--once", "--json"))
    captures.append(capture(data))
    write_chain(data / STATE_FILE, 100, seed=4)
    ok(prunelog(data, "run", "--once", "--json"))
    captures.append(capture(data))

    replays = prunelog_all(data, *(["replay", "--at", str(c.head), "--json"] for c in captures))

    for c, replayed in zip(captures, replays, strict=True):
        assert ok(replayed).json() == c.as_replayed(), c
        lock = c.status["lock"]
        assert (lock["holder"], lock["phase"], lock["since"]) == (
            c.locks[0]["owner"],
            c.locks[0]["phase"],
            c.locks[0]["since"],
        )
        assert c.status["health"] == c.as_replayed()["health"]["overall"]
    # The captures are worth comparing: a held lock and a free one, the cycle mid-sweep and
    # idle, health going down and coming back.
    assert [
        (
            c.locks[0]["owner"] is not None,
            c.locks[0]["takeovers"],
            c.status["cycle"] and (c.status["cycle"]["cycle"], c.status["cycle"]["state"]),
            c.status["health"],
        )
        for c in captures
    ] == [
        (True, 0, (1, "SweepExpired"), "healthy"),
        (False, 1, (1, "Idle"), "degraded"),  # a lock taken over degrades health
        (False, 1, (2, "Idle"), "healthy"),  # min_healthy_cycles = 2 completed in a row
    ]
