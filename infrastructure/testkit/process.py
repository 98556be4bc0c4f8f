"""A pruner process as a thread that runs only while the caller waits, so that crashes, writes
and faults can be placed exactly between two of its steps."""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass
from typing import Any, cast

from domain.ports import HolderLiveness
from domain.pruning import CycleReport
from infrastructure.clock import ManualClock
from infrastructure.runtime import Settings
from infrastructure.testkit.adapters import Adapters, open_pruner
from infrastructure.testkit.stepping import FaultPlan


class SimulatedCrash(BaseException):
    """Raised at a yield point to abandon a cycle the way a kill would: no retry, rollback or
    handler in the pruner catches a BaseException that is not an Exception."""


@dataclass(frozen=True)
class YieldPoint:
    kind: str  # phase_start | mark | delete | deleted | phase_end
    detail: str


@dataclass(frozen=True)
class CycleOutcome:
    report: CycleReport | None
    error: Exception | None

    def describe(self) -> str:
        if self.error is None:
            assert self.report is not None
            return f"cycle {self.report.cycle_no} done on snapshot {self.report.snapshot_id}"
        return f"{type(self.error).__name__}: {self.error}"


class PrunerProcess:
    """One pruner process, as a thread that owns its Runtime (sqlite3 connections are per
    thread). It runs a cycle only while the caller waits in `advance`, and stops at every
    yield point, so the caller's writes and faults land exactly between two pruner steps."""

    def __init__(
        self,
        settings: Settings,
        clock: ManualClock,
        owner: str,
        adapters: Adapters,
        liveness: HolderLiveness | None = None,
        *,
        plan: FaultPlan | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self.owner = owner
        self.plan = plan or FaultPlan()
        self.timeout_s = timeout_s
        self.paused_at: YieldPoint | None = None
        self.alive = True
        self._to_worker: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._to_main: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread = threading.Thread(
            target=self._main, args=(settings, clock, adapters, liveness), daemon=True, name=owner
        )
        self._thread.start()
        kind, payload = self._receive()
        if kind != "ready":
            self.alive = False
            raise RuntimeError(f"{owner} could not open: {payload!r}") from payload

    # --- the caller's side -----------------------------------------------------------------

    def advance(self, until: str = "next") -> CycleOutcome | None:
        """Runs to the next yield point of kind `until` ("next": any; "batch": a delete batch;
        "cycle": none), starting a cycle when idle. Returns the outcome if the cycle ended."""
        if not self.alive:
            raise RuntimeError(f"{self.owner} has exited")
        wanted = {"batch": "delete"}.get(until, until)
        self._to_worker.put(("go", None) if self.paused_at else ("cycle", None))
        while True:
            kind, payload = self._receive()
            if kind == "paused":
                self.paused_at = payload
                if wanted in ("next", payload.kind):
                    return None
                self._to_worker.put(("go", None))
            elif kind == "done":
                self.paused_at = None
                return cast(CycleOutcome, payload)
            else:
                self.alive = False
                raise RuntimeError(f"{self.owner} stopped unexpectedly: {kind} {payload!r}")

    def run_cycle(self) -> CycleOutcome:
        """Finishes the current cycle, or runs a whole new one."""
        outcome = self.advance("cycle")
        assert outcome is not None
        return outcome

    def crash(self) -> None:
        """Kills the process: a cycle in flight is abandoned where it stands (its uncommitted
        transaction, if any, is lost), and every in-memory object goes with the thread."""
        if not self.alive:
            return
        self.alive = False
        self._to_worker.put(("crash", None) if self.paused_at else ("exit", None))
        self.paused_at = None
        with contextlib.suppress(queue.Empty):
            while self._to_main.get(timeout=self.timeout_s)[0] != "exited":
                pass
        self._thread.join(timeout=self.timeout_s)

    close = crash  # between cycles a clean exit and a kill look the same to the store

    def _receive(self) -> tuple[str, Any]:
        try:
            return self._to_main.get(timeout=self.timeout_s)
        except queue.Empty:
            self.alive = False
            raise RuntimeError(
                f"{self.owner} reached no yield point within {self.timeout_s} s"
            ) from None

    # --- the thread's side -----------------------------------------------------------------

    def _pause(self, kind: str, detail: str) -> None:
        self._to_main.put(("paused", YieldPoint(kind, detail)))
        command, _ = self._to_worker.get()
        if command != "go":
            raise SimulatedCrash(f"{self.owner} killed at {kind} ({detail})")

    def _main(
        self,
        settings: Settings,
        clock: ManualClock,
        adapters: Adapters,
        liveness: HolderLiveness | None,
    ) -> None:
        try:
            parts = open_pruner(
                settings, clock, self.owner, adapters, liveness, self._pause, self.plan
            )
        except BaseException as exc:
            self._to_main.put(("failed", exc))
            return
        self._to_main.put(("ready", None))
        try:
            while True:
                command, _ = self._to_worker.get()
                if command != "cycle":
                    return
                try:
                    report = parts.pruner.run_cycle()
                    self._to_main.put(("done", CycleOutcome(report, None)))
                except Exception as exc:
                    self._to_main.put(("done", CycleOutcome(None, exc)))
        except SimulatedCrash:
            pass
        finally:
            with contextlib.suppress(Exception):
                parts.close()
            self._to_main.put(("exited", None))
