"""Structured logs: every appended event becomes one record on stderr at the spec's level, as
text or as JSON Lines (`--log-json`)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from infrastructure.logs import LOGGER, configure, level_of
from tests.fakes import write_chain


@pytest.mark.parametrize(
    "kind,level",
    [
        ("PruneCycle.PhaseStarted", logging.INFO),
        ("PhaseLock.Locked", logging.INFO),
        ("PruneCycle.NodesSwept", logging.DEBUG),
        ("PruneCycle.PhaseProgressed", logging.DEBUG),
        ("PruneCycle.RetryScheduled", logging.WARNING),
        ("PhaseLock.Expired", logging.WARNING),
        ("PruneCycle.PhaseFailed", logging.ERROR),
        ("PruneCycle.RecoveryExhausted", logging.ERROR),
    ],
)
def test_each_kind_of_event_logs_at_the_level_of_the_spec(kind: str, level: int) -> None:
    assert level_of(kind) == level


def test_an_unknown_log_level_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="debug, info, warning, error"):
        configure("verbose")


PRUNELOG = (sys.executable, "-m", "infrastructure.cli")


def run_once(data: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PRUNELOG, "--data-dir", str(data), *flags, "run", "--once", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("logs") / "data"
    write_chain(path / "state.sqlite", 300)
    (path / "prunelog.toml").write_text(
        "[prune]\nprotection_orders = 50\ndelete_batch_size = 200\n"
    )
    return path


def test_run_with_log_json_writes_one_json_object_per_event_on_stderr(data: Path) -> None:
    done = run_once(data, "--log-json", "--log-level", "debug")

    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    events = [r["event"] for r in records if "event" in r]
    assert events[:2] == ["Snapshot.Created", "PruneCycle.Created"] or "Snapshot.Created" in events
    assert "PruneCycle.Completed" in events
    swept = [r for r in records if r.get("event") == "PruneCycle.NodesSwept"]
    assert swept and all(r["level"] == "debug" and r["hashes_count"] > 0 for r in swept)
    started = next(r for r in records if r.get("event") == "PruneCycle.PhaseStarted")
    assert started["level"] == "info" and started["phase"] == "BuildReach"
    json.loads(done.stdout.splitlines()[-1])  # stdout stays the command's own JSON


def test_run_at_warning_level_logs_no_phase_transitions(data: Path) -> None:
    done = run_once(data, "--log-level", "warning")

    assert done.returncode == 0, done.stderr
    assert "PruneCycle.PhaseStarted" not in done.stderr


def test_the_text_format_is_one_line_per_record_with_its_level(data: Path) -> None:
    done = run_once(data)

    assert done.returncode == 0, done.stderr
    started = [line for line in done.stderr.splitlines() if "PruneCycle.PhaseStarted" in line]
    assert started and all(" INFO " in line and "phase=" in line for line in started)
    LOGGER.handlers.clear()
