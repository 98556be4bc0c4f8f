"""The `prunelog` command line. Exit codes: 0 ok, 1 violation or failure, 2 usage or config."""

from __future__ import annotations

import functools
import json
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import click

from domain.errors import (
    ConcurrencyConflictError,
    ConfigError,
    DataDirError,
    EventLogUnreachableError,
    LockContendedError,
    PrunelogError,
    PrunerStoppedError,
    RecoveryExhaustedError,
    UnknownPhaseError,
)
from infrastructure import cli_audit, cli_history, cli_status, cli_store, cli_views
from infrastructure.cli_common import Context, console, err, fail, usage_error
from infrastructure.config_file import CONFIG_FILE, DEFAULT_TOML, load_settings
from infrastructure.eventlog import ensure_data_dir
from infrastructure.logs import LEVELS, LOGGER, log_event
from infrastructure.logs import configure as configure_logs
from infrastructure.metrics import MetricsFeeder, PrunerMetrics
from infrastructure.progress import RichProgress
from infrastructure.reconnect import open_runtime, wait_for_log
from infrastructure.runtime import Runtime, Settings
from projections.runner import ProjectionRunner


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


class _Stop:
    """SIGINT/SIGTERM. The first asks the pruner to stop at its next safe point: the delete
    transaction in flight commits and its batches are logged, the phase is recorded as stopped
    (PhaseFailed), and the lock is released through an event (PhaseLock.Released); the next run
    resumes the cycle. A second signal stops at once, like a crash: the journal lets the next
    run log what was deleted."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            LOGGER.warning("%s again: stopping now", name)
            raise KeyboardInterrupt
        self.requested = True
        LOGGER.warning("%s: stopping after the current batch (send it again to stop now)", name)


@cli.command()
@click.option("--once", is_flag=True, help="Run one cycle and exit.")
@click.option("--cycles", type=int, default=0, help="Stop after this many cycles (0 = forever).")
@click.option("--metrics-port", type=int, default=None, help="Serve /metrics on 127.0.0.1:PORT.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per cycle; bars to stderr.")
@click.pass_obj
def run(obj: Context, once: bool, cycles: int, metrics_port: int | None, as_json: bool) -> None:
    """Run prune cycles every interval_s on <data-dir>/state.sqlite.

    SIGINT or SIGTERM stops cleanly with exit code 0: the delete transaction in flight
    finishes and its batches are logged, the phase is recorded as stopped, and the lock is
    released through an event; the next run resumes the cycle. A second signal stops at once
    (exit 130), as a crash would."""
    settings = load_settings(obj.data_dir, obj.config)
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        _run(settings, stop, 1 if once else cycles, metrics_port, as_json)
    except KeyboardInterrupt:
        LOGGER.error("stopped at once; the next run logs any deleted batch and resumes the cycle")
        sys.exit(130)
    except EventLogUnreachableError:
        if not stop.requested:
            raise
        LOGGER.warning("stopped while waiting for the event log")


def _say(as_json: bool, record: dict[str, Any], text: str) -> None:
    if as_json:
        click.echo(json.dumps(record))
    else:
        console.print(text)


def _run(
    settings: Settings, stop: _Stop, limit: int, metrics_port: int | None, as_json: bool
) -> None:
    done = 0

    def retry_note(message: str) -> None:
        LOGGER.warning("event log unavailable: %s", message)

    with open_runtime(settings, lambda: stop.requested, retry_note) as rt:
        rt.log.observers.append(log_event)
        rt.pruner.should_stop = lambda: stop.requested
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
                with RichProgress(err if as_json else console) as bars:
                    rt.pruner.progress = bars
                    report = rt.pruner.run_cycle()
            except PrunerStoppedError as exc:
                runner.catch_up()
                if feeder is not None:
                    feeder.feed(rt.log.read)
                snap = rt.manager.current_snapshot
                cycle_no = None if snap is None else snap.cycle_no
                _say(
                    as_json,
                    {"stopped": True, "cycle": cycle_no, "message": str(exc)},
                    f"cycle {cycle_no} stopped cleanly ({exc}); the lock is released and the "
                    "next run resumes the cycle",
                )
                return
            except (LockContendedError, ConcurrencyConflictError) as exc:
                # Another node of the group is working, or appended first (both went to take
                # over a dead holder): wait and watch its events; the next try re-reads them.
                _say(as_json, {"waiting": True, "message": str(exc)}, f"waiting: {exc}")
                try:
                    _watch(rt, runner, stop, settings.prune.interval_s)
                except EventLogUnreachableError as lost:
                    LOGGER.error("watching interrupted: %s", lost)
                    wait_for_log(rt, lambda: stop.requested, retry_note)
                continue
            except EventLogUnreachableError as exc:
                # The log's server went away mid-cycle: once it is back, the next cycle logs
                # the journal's batches and resumes the interrupted phase, through events.
                LOGGER.error("cycle interrupted: %s", exc)
                wait_for_log(rt, lambda: stop.requested, retry_note)
                continue
            except RecoveryExhaustedError as exc:
                if as_json:
                    click.echo(json.dumps({"failed": True, "message": str(exc)}))
                LOGGER.error("cycle failed: %s; the next cycle starts clean", exc)
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
            if as_json:
                click.echo(json.dumps(summary))
            else:
                console.print_json(json.dumps(summary))
            if limit and done >= limit:
                break
            _pause(stop, settings.prune.interval_s)


def _watch(rt: Runtime, runner: ProjectionRunner, stop: _Stop, seconds: float) -> None:
    """Keeps the read models current while another node holds the lock, for up to `seconds`,
    and returns as soon as the lock is free, past its timeout or its holder has exited: the
    handover waits on the lock, not on `interval_s`."""
    deadline = time.monotonic() + max(seconds, 1.0)

    def done() -> bool:
        if stop.requested or time.monotonic() >= deadline:
            return True
        return rt.manager.held_by_live_other() is None

    runner.follow(done, wait_s=0.5)


def _pause(stop: _Stop, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(min(0.2, seconds))


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
