"""The `prunelog` command line. Exit codes: 0 ok, 1 violation or failure, 2 usage or config."""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import time
from types import FrameType
from typing import Any

import click

from domain.errors import (
    ConfigError,
    DataDirError,
    PrunelogError,
    RecoveryExhaustedError,
    UnknownPhaseError,
)
from infrastructure import cli_history, cli_views
from infrastructure.cli_common import Context, console, err
from infrastructure.config_file import CONFIG_FILE, DEFAULT_TOML, load_settings
from infrastructure.eventlog import ensure_data_dir
from infrastructure.metrics import MetricsFeeder, PrunerMetrics
from infrastructure.progress import RichProgress
from infrastructure.runtime import Runtime


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
@click.option("--metrics-port", type=int, default=None, help="Serve /metrics on 127.0.0.1:PORT.")
@click.pass_obj
def run(obj: Context, once: bool, cycles: int, metrics_port: int | None) -> None:
    """Run prune cycles every interval_s on <data-dir>/state.sqlite."""
    settings = load_settings(obj.data_dir, obj.config)
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    limit = 1 if once else cycles
    done = 0
    with Runtime(settings) as rt:
        feeder = None
        if metrics_port is not None:
            metrics = PrunerMetrics()
            metrics.instrument(rt.manager)
            feeder = MetricsFeeder(metrics, settings.recovery)
            feeder.feed(rt.log.read)
            metrics.serve(metrics_port)
            console.print(f"metrics on http://127.0.0.1:{metrics_port}/metrics")
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
                if feeder is not None:
                    feeder.feed(rt.log.read)
                if limit:
                    sys.exit(1)
                _pause(stop, settings.prune.interval_s)
                continue
            runner.catch_up()
            if feeder is not None:
                feeder.feed(rt.log.read)
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


for _command in (
    cli_views.projections,
    cli_views.validate,
    cli_views.health,
    cli_views.locks,
    cli_views.snapshots,
    cli_views.events,
    cli_history.replay,
    cli_history.export,
    cli_history.status,
    cli_history.audit,
):
    cli.add_command(_command)


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
    except sqlite3.DatabaseError as exc:
        err.print(f"[red]error:[/] database: {exc}")
        sys.exit(1)
