"""`prunelog run`: prune cycles every interval_s until stopped, with projections kept current,
optional Prometheus metrics, clean stops on SIGINT/SIGTERM, and waiting out another node's
lock or a lost event log."""

from __future__ import annotations

import json
import signal
import sys
import time
from types import FrameType
from typing import Any

import click

from domain.errors import (
    ConcurrencyConflictError,
    EventLogUnreachableError,
    LockContendedError,
    PrunerStoppedError,
    RecoveryExhaustedError,
)
from infrastructure.cli_common import Context, console, err
from infrastructure.config_file import load_settings
from infrastructure.logs import LOGGER, log_event
from infrastructure.metrics import MetricsFeeder, PrunerMetrics
from infrastructure.progress import RichProgress
from infrastructure.reconnect import open_runtime, wait_for_log
from infrastructure.runtime import Runtime, Settings
from projections.runner import ProjectionRunner


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


@click.command()
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
