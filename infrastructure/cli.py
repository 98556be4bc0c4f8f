"""The `prunelog` command line. Exit codes: 0 ok, 1 violation or failure, 2 usage or config."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from domain.errors import (
    ConfigError,
    DataDirError,
    PrunelogError,
    RecoveryExhaustedError,
    UnknownPhaseError,
)
from domain.validator import SnapshotValidator
from infrastructure.config_file import CONFIG_FILE, DEFAULT_TOML, load_settings
from infrastructure.eventlog import EventsourcingLog, ensure_data_dir, resolve_data_dir
from infrastructure.progress import RichProgress
from infrastructure.render import describe, notifications
from infrastructure.runtime import Runtime

console = Console()
err = Console(stderr=True)


class Context:
    def __init__(self, data_dir: str | None, config: str | None) -> None:
        self.data_dir = resolve_data_dir(data_dir)
        self.config = Path(config) if config else None


@click.group()
@click.option(
    "--data-dir",
    envvar="PRUNELOG_DATA_DIR",
    default=None,
    help="Where the event log and state live. [env PRUNELOG_DATA_DIR; default ./prunelog-data]",
)
@click.option("--config", default=None, help="Config file. [default <data-dir>/prunelog.toml]")
@click.pass_context
def cli(ctx: click.Context, data_dir: str | None, config: str | None) -> None:
    """prunelog: a runtime state pruner whose every decision is an event."""
    ctx.obj = Context(data_dir, config)


@cli.command()
@click.pass_obj
def init(obj: Context) -> None:
    """Create the data directory and a config file with commented defaults."""
    ensure_data_dir(obj.data_dir)
    path = obj.data_dir / CONFIG_FILE
    if path.exists():
        console.print(f"{path} already exists; left unchanged")
        return
    path.write_text(DEFAULT_TOML)
    console.print(f"created {path}")


@cli.command()
@click.option("--cycles", default=4, show_default=True, help="Prune cycles while the writer runs.")
@click.option("--initial-txs", default=1500, show_default=True, help="Txs written before pruning.")
@click.option("--seed", default=7, show_default=True)
@click.pass_obj
def demo(obj: Context, cycles: int, initial_txs: int, seed: int) -> None:
    """Build a store, prune it while a writer keeps writing, and verify the result."""
    from infrastructure.demo import DemoOptions, run_demo

    code = run_demo(obj.data_dir, DemoOptions(initial_txs, cycles, seed=seed), console)
    sys.exit(code)


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.requested = True
        err.print(f"{signal.Signals(signum).name}: stopping after the current cycle")


@cli.command()
@click.option("--once", is_flag=True, help="Run one cycle and exit.")
@click.option("--cycles", type=int, default=0, help="Stop after this many cycles (0 = forever).")
@click.pass_obj
def run(obj: Context, once: bool, cycles: int) -> None:
    """Run prune cycles every interval_s on <data-dir>/state.sqlite."""
    settings = load_settings(obj.data_dir, obj.config)
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    limit = 1 if once else cycles
    done = 0
    with Runtime(settings) as rt:
        runner = rt.projections()
        runner.catch_up()  # read models first, so they are current even before a cycle
        while not stop.requested:
            try:
                with RichProgress(console) as bars:
                    rt.pruner.progress = bars
                    report = rt.pruner.run_cycle()
            except RecoveryExhaustedError as exc:
                err.print(f"[red]cycle failed:[/] {exc}; the next cycle starts clean")
                runner.catch_up()
                if limit:
                    sys.exit(1)
                _pause(stop, settings.prune.interval_s)
                continue
            runner.catch_up()
            done += 1
            summary: dict[str, Any] = {
                "cycle": report.cycle_no,
                "snapshot": report.snapshot_id,
                "latest_order": report.latest_order,
                "reach": report.reach_count,
                "deleted": {p: s.deleted for p, s in report.phases.items()},
                "seconds": {p: round(s.seconds, 3) for p, s in report.phases.items()},
            }
            console.print_json(json.dumps(summary))
            if limit and done >= limit:
                break
            _pause(stop, settings.prune.interval_s)


def _pause(stop: _Stop, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(min(0.2, seconds))


def _emit(as_json: bool, data: Any, table: Table | None = None) -> None:
    if as_json or table is None:
        click.echo(json.dumps(data, default=str, indent=2))
    else:
        console.print(table)


def _table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for column in rows[0] if rows else ["(empty)"]:
        table.add_column(str(column))
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    return table


@cli.group()
def projections() -> None:
    """Read models: status against the log head, and rebuild."""


@projections.command("status")
@click.option("--fast", is_flag=True, help="Positions only; skip comparing with a rebuild.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def projections_status(obj: Context, fast: bool, as_json: bool) -> None:
    """Each projection's position against the log head; flags one that differs from a rebuild."""
    with Runtime(load_settings(obj.data_dir, obj.config)) as rt:
        statuses = rt.projections().status(verify=not fast)
    rows = [
        {
            "projection": s.name,
            "position": s.position,
            "head": s.head,
            "lag": s.lag,
            "tables": "ok" if s.tables_ok else "MISSING",
            "matches rebuild": {None: "not checked", True: "yes", False: "NO"}[s.consistent],
        }
        for s in statuses
    ]
    _emit(as_json, rows, _table("projections", rows))
    if not all(s.ok for s in statuses):
        err.print("a projection differs from the log: run `prunelog projections rebuild`")
        sys.exit(1)


@projections.command("rebuild")
@click.argument("names", nargs=-1)
@click.pass_obj
def projections_rebuild(obj: Context, names: tuple[str, ...]) -> None:
    """Drop projections (all, or NAMES) and replay the whole log into them."""
    with Runtime(load_settings(obj.data_dir, obj.config)) as rt:
        try:
            applied = rt.projections().rebuild(list(names) or None)
        except KeyError as exc:
            raise click.UsageError(str(exc.args[0])) from None
    for name, count in applied.items():
        console.print(f"rebuilt {name}: {count:,} events")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def validate(obj: Context, as_json: bool) -> None:
    """Run the comprehensive validation; exit 1 if any check failed."""
    with Runtime(load_settings(obj.data_dir, obj.config)) as rt:
        validator = SnapshotValidator(
            rt.manager, rt.recovery, history=rt.log, reach_store=rt.reach_store
        )
        report = validator.run_comprehensive_validation()
    if as_json:
        click.echo(json.dumps({"passed": report.passed, "results": report.as_dicts()}, indent=2))
    else:
        click.echo(report.detailed_report())
    sys.exit(0 if report.passed else 1)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def health(obj: Context, as_json: bool) -> None:
    """Health per phase and overall, with the active alerts; exit 1 unless healthy."""
    with Runtime(load_settings(obj.data_dir, obj.config)) as rt:
        runner = rt.projections()
        runner.catch_up(["health"])
        rows = [dict(r) for r in runner.rows("SELECT * FROM health ORDER BY scope")]
    _emit(as_json, rows, _table("health", rows))
    overall = next((r["status"] for r in rows if r["scope"] == "overall"), "healthy")
    sys.exit(0 if overall == "healthy" else 1)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def locks(obj: Context, as_json: bool) -> None:
    """Who holds each group's phase lock, since when, and when it expires."""
    with Runtime(load_settings(obj.data_dir, obj.config)) as rt:
        runner = rt.projections()
        runner.catch_up(["locks"])
        rows = [dict(r) for r in runner.rows("SELECT * FROM locks ORDER BY grp")]
    _emit(as_json, rows, _table("locks", rows))


@cli.command()
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def snapshots(obj: Context, limit: int, as_json: bool) -> None:
    """The snapshot catalog, newest first."""
    with Runtime(load_settings(obj.data_dir, obj.config)) as rt:
        runner = rt.projections()
        runner.catch_up(["snapshots"])
        rows = [
            dict(r)
            for r in runner.rows(
                "SELECT grp, snapshot_id, cycle_no, latest_order, status, reach_count, created_at "
                "FROM snapshots ORDER BY created_at DESC LIMIT ?",
                (limit,),
            )
        ]
    _emit(as_json, rows, _table("snapshots", rows))


@cli.command()
@click.option("--start", default=1, show_default=True, help="First log position.")
@click.option("--limit", default=0, help="At most this many events (0 = all).")
@click.pass_obj
def events(obj: Context, start: int, limit: int) -> None:
    """Print the event log, one line per event."""
    with EventsourcingLog.open_sqlite(obj.data_dir) as log:
        for i, n in enumerate(notifications(log, start), start=1):
            click.echo(describe(log, n))
            if limit and i >= limit:
                break


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except (ConfigError, UnknownPhaseError) as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(2)
    except (PrunelogError, DataDirError) as exc:
        err.print(f"[red]error:[/] {type(exc).__name__}: {exc}")
        sys.exit(1)
