"""What every prunelog command shares: the context object, consoles and output helpers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infrastructure.eventlog import resolve_data_dir

console = Console()
err = Console(stderr=True, soft_wrap=True)  # one message, one line (log collectors)


class Context:
    def __init__(self, data_dir: str | None, config: str | None) -> None:
        self.data_dir = resolve_data_dir(data_dir)
        self.config = Path(config) if config else None


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr (escaped: `[prune]` in a message is text, not markup), then exit."""
    err.print(f"[red]error:[/] {escape(message)}")
    sys.exit(code)


def usage_error(message: str) -> NoReturn:
    """A one-line error on stderr and exit code 2 (bad usage: e.g. an unknown cycle)."""
    fail(message, 2)


def emit(as_json: bool, data: Any, table: Table | None = None) -> None:
    if as_json or table is None:
        click.echo(json.dumps(data, default=str, indent=2))
    else:
        console.print(table)


def table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for column in rows[0] if rows else ["(empty)"]:
        table.add_column(str(column))
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    return table
