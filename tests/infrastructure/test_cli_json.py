"""Every prunelog command has --help, --data-dir (its own or its group's) and --json, and with
--json its stdout is machine-readable: one JSON document, or JSON Lines."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from infrastructure.cli import cli
from infrastructure.config_file import CONFIG_FILE, load_settings
from infrastructure.eventlog import STATE_FILE
from infrastructure.runtime import Runtime
from tests.fakes import write_chain


def commands(
    command: click.Command, path: tuple[str, ...] = (), parents: tuple[click.Command, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command, tuple[click.Command, ...]]]:
    """Every command under `command` that does something (groups only dispatch)."""
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from commands(sub, (*path, name), (*parents, command))
    else:
        yield path, command, parents


def options(command: click.Command) -> set[str]:
    names = {name for p in command.params for name in p.opts}
    help_option = command.get_help_option(click.Context(command))
    return names | (set(help_option.opts) if help_option else set())


COMMANDS = list(commands(cli))


def test_the_walk_finds_every_command_of_the_cli() -> None:
    names = {" ".join(path) for path, _, _ in COMMANDS}
    assert {"run", "demo", "init", "audit", "replay", "projections rebuild"} <= names
    assert len(names) >= 14


@pytest.mark.parametrize(
    "path,command,parents", [pytest.param(*c, id=" ".join(c[0])) for c in COMMANDS]
)
def test_every_command_has_help_data_dir_and_json(
    path: tuple[str, ...], command: click.Command, parents: tuple[click.Command, ...]
) -> None:
    own = options(command)
    assert "--help" in own
    assert "--json" in own, f"prunelog {' '.join(path)} has no --json"
    assert any("--data-dir" in options(c) for c in (*parents, command))
    assert CliRunner().invoke(cli, [*path, "--help"]).exit_code == 0


# --- the JSON is JSON ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("cli-json") / "data"
    write_chain(data / STATE_FILE, 150, seed=5)
    (data / CONFIG_FILE).write_text("[prune]\nprotection_orders = 30\ndelete_batch_size = 200\n")
    with Runtime(load_settings(data)) as rt:
        rt.pruner.run_cycle()
    return data


def invoke(data_dir: Path, *args: str) -> Any:
    """Runs a command with --json; returns its stdout parsed (JSON, else JSON Lines)."""
    result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), *args, "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 1), result.output
    text = result.stdout
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("health",),
        ("locks",),
        ("snapshots",),
        ("validate",),
        ("projections", "status"),
        ("projections", "rebuild"),
        ("replay", "--cycle", "1"),
        ("replay", "--at", "5"),
        ("replay", "--check"),
        ("audit", "--cycle", "1"),
        ("audit", "--cycle", "1", "--verify"),
        ("audit", "ab" * 32),
    ],
    ids=" ".join,
)
def test_a_read_command_with_json_prints_json(data_dir: Path, args: tuple[str, ...]) -> None:
    assert invoke(data_dir, *args)


def test_events_and_export_with_json_print_the_same_json_lines(data_dir: Path) -> None:
    events = invoke(data_dir, "events", "--limit", "5")
    exported = invoke(data_dir, "export")

    assert len(events) == 5 and events == exported[:5]
    assert {"position", "aggregate", "type", "time", "fields"} <= set(events[0])


def test_init_with_json_says_where_the_config_is_and_whether_it_made_it(tmp_path: Path) -> None:
    first = invoke(tmp_path / "fresh", "init")
    again = invoke(tmp_path / "fresh", "init")

    assert first["created"] and not again["created"]
    assert first["config"] == str(tmp_path / "fresh" / CONFIG_FILE) == again["config"]


def test_projections_rebuild_with_json_counts_the_events_per_projection(
    data_dir: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(data_dir, tmp_path / "copy"))
    rebuilt = invoke(copy, "projections", "rebuild", "locks")["rebuilt"]

    assert set(rebuilt) == {"locks"} and rebuilt["locks"] > 0
