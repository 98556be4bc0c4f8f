"""The `prunelog` command line. Exit codes: 0 ok, 1 violation or failure, 2 usage or config."""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

import click

from domain.errors import (
    ConfigError,
    DataDirError,
    PrunelogError,
    UnknownPhaseError,
)
from infrastructure import cli_audit, cli_history, cli_run, cli_status, cli_store, cli_views
from infrastructure.cli_common import Context, console, err, fail, usage_error
from infrastructure.config_file import CONFIG_FILE, DEFAULT_TOML
from infrastructure.eventlog import ensure_data_dir
from infrastructure.logs import LEVELS
from infrastructure.logs import configure as configure_logs


@click.group()
@click.option(
    "--data-dir",
    envvar="PRUNELOG_DATA_DIR",
    default=None,
    help="Where the event log and state live. [env PRUNELOG_DATA_DIR; default ./prunelog-data]",
)
@click.option("--config", default=None, help="Config file. [default <data-dir>/prunelog.toml]")
@click.option(
    "--log-level",
    envvar="PRUNELOG_LOG_LEVEL",
    type=click.Choice(LEVELS),
    default="info",
    show_default=True,
    help="Logs on stderr: debug traces, info phase transitions, warnings, errors.",
)
@click.option("--log-json", is_flag=True, help="Logs as JSON Lines on stderr.")
@click.pass_context
def cli(
    ctx: click.Context, data_dir: str | None, config: str | None, log_level: str, log_json: bool
) -> None:
    """prunelog: a runtime state pruner whose every decision is an event."""
    configure_logs(log_level, log_json)
    ctx.obj = Context(data_dir, config)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def init(obj: Context, as_json: bool) -> None:
    """Create the data directory and a config file with commented defaults."""
    ensure_data_dir(obj.data_dir)
    path = obj.data_dir / CONFIG_FILE
    created = not path.exists()
    if created:
        path.write_text(DEFAULT_TOML)
    if as_json:
        click.echo(
            json.dumps({"data_dir": str(obj.data_dir), "config": str(path), "created": created})
        )
    else:
        console.print(f"created {path}" if created else f"{path} already exists; left unchanged")


@cli.command()
@click.option("--cycles", default=4, show_default=True, help="Prune cycles while the writer runs.")
@click.option("--initial-txs", default=1500, show_default=True, help="Txs written before pruning.")
@click.option("--seed", default=7, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Narration to stderr; a summary on stdout.")
@click.pass_obj
def demo(obj: Context, cycles: int, initial_txs: int, seed: int, as_json: bool) -> None:
    """Build a store, prune it while a writer keeps writing, and verify the result."""
    from infrastructure.demo import DemoOptions, run_demo

    code = run_demo(
        obj.data_dir, DemoOptions(initial_txs, cycles, seed=seed), err if as_json else console
    )
    if as_json:
        click.echo(json.dumps(cli_views.demo_summary(obj.data_dir / "demo", code), indent=2))
    sys.exit(code)


def _needs_data_dir(callback: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """A read command never creates a data directory (a mistyped --data-dir would show an
    empty, healthy log): it fails with a usage error. init, run and demo create one."""
    if callback is None:
        return None
    inner = callback

    @functools.wraps(inner)
    def checked(*args: Any, **kwargs: Any) -> Any:
        obj = click.get_current_context().find_object(Context)
        if obj is not None and not obj.data_dir.is_dir():
            usage_error(
                f"no data directory at {obj.data_dir}: check --data-dir (or "
                "PRUNELOG_DATA_DIR), or create one with `prunelog init`"
            )
        return inner(*args, **kwargs)

    return checked


for _command in (
    cli_views.projections,
    cli_views.validate,
    cli_views.health,
    cli_views.locks,
    cli_views.snapshots,
    cli_views.events,
    cli_history.replay,
    cli_history.export,
    cli_status.status,
    cli_audit.audit,
    cli_store.upgrade_store,
):
    cli.add_command(_command)
    for _leaf in _command.commands.values() if isinstance(_command, click.Group) else [_command]:
        _leaf.callback = _needs_data_dir(_leaf.callback)
cli.add_command(cli_run.run)  # creates its data directory, like init and demo


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(1)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        fail(exc.format_message() + hint, 2)
    except click.ClickException as exc:
        fail(exc.format_message(), 2)
    except (ConfigError, UnknownPhaseError) as exc:
        fail(str(exc), 2)
    except (PrunelogError, DataDirError) as exc:
        fail(f"{type(exc).__name__}: {exc}", 1)
    except sqlite3.DatabaseError as exc:
        fail(f"database: {exc}", 1)


if __name__ == "__main__":
    main()
