"""kill -9 crash harness: SIGKILL the pruner again and again while a writer keeps writing, and
after every restart prove that nothing was lost and that the log still tells the truth.

The pruner is `prunelog --data-dir D run` in its own process (interval_s 0.05, so cycle after
cycle). Each kill is either timed (SIGKILL after a seeded random delay) or targeted: the pruner
runs with PRUNELOG_FAULT_KILL_AT=<point>:<n> (infrastructure/faults.py) and kills itself at
build_reach, between_batches, mid_delete or projection_update. The restart is
`prunelog run --once`, which must resume the interrupted cycle and complete it; its time to
healthy runs from its process start to that completed cycle. Then, with no pruner running and
the writer still writing, the harness checks:

1. store_whole: every retained root and every root written since is fully readable;
2. log_legal: each aggregate's versions are contiguous from 1, and the log replays legally
   (every event through its aggregate's event method and phase table; one lock holder at a
   time; every phase of a cycle on the cycle's snapshot);
3. projections_match: every read model, caught up, equals a fresh rebuild of itself;
4. audit_exact: the hashes a SQLite trigger saw deleted (`deleted_log`, written in the
   deleting transaction) are exactly the hashes of all NodesSwept events, each deletion once;
   no audited node is back in the store unless a writer stamped it after the deleting
   snapshot; and each deleted node had written_order <= that snapshot's latest_order;
5. lock_live: a held lock belongs to a live process or has not yet timed out.

Prints one JSON summary; exit code 1 on any violation.
Usage: python benchmarks/crash.py [--kills 25] [--seed 1] [--keep]"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from domain.lock import PhaseLock, lock_uuid
from infrastructure.audit_checks import check_store
from infrastructure.clock import SystemClock
from infrastructure.config_file import CONFIG_FILE, load_settings
from infrastructure.eventlog import EVENTS_FILE, STATE_FILE
from infrastructure.faults import ENV_VAR, MARKER, POINTS
from infrastructure.liveness import ProcessLiveness
from infrastructure.runtime import Runtime
from infrastructure.state_store import SqliteStateStore
from infrastructure.workload import WorkloadWriter
from projections.models import HealthProjection, Projection
from projections.runner import ProjectionRunner

REPO = Path(__file__).resolve().parents[1]
KINDS = ("timed", *POINTS)
_USES_SNAPSHOT = ("PruneCycle.PhaseStarted", "PruneCycle.PhaseResumed", "PruneCycle.NodesSwept")
CHECKS = ("store_whole", "log_legal", "projections_match", "audit_exact", "lock_live")
HEALTHY_TARGET_S = 10.0

# The largest n drawn for each targeted point: small enough that a fresh pruner reaches it in
# its first cycle or two on this store. BuildReach fetches ~a dozen batches; NodesSwept comes
# only from SweepExpired (here IncrementalSweep finds nothing left to delete: SweepExpired has
# already removed what the stale index names), a few batches of 100 a cycle; a cycle runs ~10
# to ~30 delete transactions, SweepExpired's then IncrementalSweep's, so mid_delete reaches
# both; a catch-up applies 5 read models x dozens of events.
MAX_N = {"build_reach": 10, "between_batches": 5, "mid_delete": 20, "projection_update": 150}

DELETED_LOG = """
CREATE TABLE IF NOT EXISTS deleted_log (hash BLOB NOT NULL, deleted_at_rowid INTEGER NOT NULL,
    written_order INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS crash_harness_deleted_log AFTER DELETE ON nodes BEGIN
    INSERT INTO deleted_log(hash, deleted_at_rowid, written_order)
    VALUES (OLD.hash, OLD.id, OLD.written_order);
END;
"""


@dataclass
class Options:
    kills: int = 25
    seed: int = 1
    initial_txs: int = 300
    protection_orders: int = 40
    delete_batch_size: int = 100
    batches_per_commit: int = 2  # so kills land inside and between multi-batch transactions
    interval_s: float = 0.05
    writer_sleep_ms: float = 150.0
    timed_delay_s: tuple[float, float] = (0.1, 2.5)  # after the gate opens
    targeted_timeout_s: float = 30.0
    restart_timeout_s: float = 120.0
    verify_every: int = 5  # full ProjectionRunner.verify every this many rounds, and the last
    data_dir: Path | None = None
    keep: bool = False


@dataclass(frozen=True)
class Plan:
    kind: str  # "timed" or a fault point
    n: int = 0  # the targeted point's n
    delay_s: float = 0.0  # the timed kill's delay

    @property
    def kill_at(self) -> str | None:
        return None if self.kind == "timed" else f"{self.kind}:{self.n}"


def plan_kills(
    count: int, seed: int, timed_delay_s: tuple[float, float] = Options.timed_delay_s
) -> list[Plan]:
    """From the seed: the first kills cover every kind once (in a seeded order), so even a short
    run has them all; after that, about one in four is timed and targeted ones cycle the points."""
    rng = random.Random(seed)
    first = list(KINDS)
    rng.shuffle(first)
    plans: list[Plan] = []
    point = rng.randrange(len(POINTS))
    for i in range(count):
        if i < len(first):
            kind = first[i]
        elif rng.random() < 0.25:
            kind = "timed"
        else:
            kind, point = POINTS[point], (point + 1) % len(POINTS)
        if kind == "timed":
            plans.append(Plan(kind, delay_s=round(rng.uniform(*timed_delay_s), 3)))
        else:
            plans.append(Plan(kind, n=rng.randint(1, MAX_N[kind])))
    return plans


# --- the data directory ------------------------------------------------------------------


def config_toml(opts: Options) -> str:
    return (
        "# written by benchmarks/crash.py\n"
        "[prune]\n"
        f"protection_orders = {opts.protection_orders}\n"
        f"interval_s = {opts.interval_s}\n"
        f"delete_batch_size = {opts.delete_batch_size}\n"
        f"batches_per_commit = {opts.batches_per_commit}\n"
    )


def prepare(data_dir: Path, opts: Options) -> None:
    """A small store written by the workload writer, the config, and the harness's trigger."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with SqliteStateStore.open(data_dir / STATE_FILE) as store:
        WorkloadWriter(store, opts.seed).run(opts.initial_txs, batch=50)
        store.connection.executescript(DELETED_LOG)
    (data_dir / CONFIG_FILE).write_text(config_toml(opts))


def child_env(kill_at: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    if kill_at is not None:
        env[ENV_VAR] = kill_at
    return env


def prunelog_command() -> list[str]:
    script = Path(sys.executable).parent / "prunelog"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from infrastructure.cli import main; main()"]


def start_pruner(
    data_dir: Path, *args: str, kill_at: str | None = None, stderr_path: Path | None = None
) -> subprocess.Popen[bytes]:
    err = open(stderr_path or os.devnull, "wb")  # noqa: SIM115 - closed once the child has it
    try:
        return subprocess.Popen(
            [*prunelog_command(), "--data-dir", str(data_dir), "run", *args],
            env=child_env(kill_at),
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=str(REPO),
        )
    finally:
        err.close()


def start_writer(data_dir: Path, seed: int, sleep_ms: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infrastructure.workload",
            "--db",
            str(data_dir / STATE_FILE),
            "--txs",
            "0",
            "--seed",
            str(seed),
            "--sleep-ms",
            str(sleep_ms),
        ],
        env=child_env(None),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO),
    )


def tail(path: Path, lines: int = 6) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


# --- the checks ---------------------------------------------------------------------------


@dataclass
class Checker:
    """Runs the five checks; reads the log and the deleted_log incrementally across rounds."""

    data_dir: Path
    position: int = 0  # last log position folded
    deleted_rowid: int = 0  # last deleted_log rowid read
    aggregates: dict[UUID, Any] = field(default_factory=dict)
    holders: dict[UUID, str | None] = field(default_factory=dict)
    cycle_snapshot: dict[UUID, int] = field(default_factory=dict)
    snapshot_latest: dict[int, int] = field(default_factory=dict)
    audited: Counter[bytes] = field(default_factory=Counter)
    audited_at: dict[bytes, list[int]] = field(default_factory=lambda: defaultdict(list))
    deleted: Counter[bytes] = field(default_factory=Counter)
    deleted_written: dict[bytes, list[int]] = field(default_factory=lambda: defaultdict(list))
    log_problems: list[str] = field(default_factory=list)
    shadow: ProjectionRunner | None = None
    touched: set[bytes] = field(default_factory=set)  # deleted or audited since last matched
    interrupted: Counter[str] = field(default_factory=Counter)  # phases a kill cut short
    takeovers: int = 0  # locks taken over from a dead holder
    health: Counter[str] = field(default_factory=Counter)  # overall health after each round

    def run(self, *, full: bool = True) -> dict[str, list[str]]:
        """Every check's problems (an empty list when it passed). The log is folded first:
        the store check needs the latest snapshot, the audit check the NodesSwept events."""
        settings = load_settings(self.data_dir)
        with Runtime(settings) as rt:
            steps: list[tuple[str, Callable[[], list[str]]]] = [
                ("log_legal", lambda: self._log(rt)),
                ("store_whole", lambda: self._store(settings.prune.protection_orders)),
                ("projections_match", lambda: self._projections(rt, full)),
                ("audit_exact", self._audit),
                ("lock_live", lambda: self._lock(rt)),
            ]
            return {name: _guarded(name, check) for name, check in steps}

    # 2. the log
    def _log(self, rt: Runtime) -> list[str]:
        problems: list[str] = []
        with closing(sqlite3.connect(self.data_dir / EVENTS_FILE, timeout=30)) as db:
            rows = db.execute(
                "SELECT originator_id, COUNT(*), MIN(originator_version), "
                "MAX(originator_version) FROM stored_events GROUP BY originator_id"
            ).fetchall()
        for oid, count, lo, hi in rows:
            if lo != 1 or hi != count:
                problems.append(f"aggregate {oid}: {count} versions spanning {lo}..{hi}")
        while page := rt.log.read(self.position + 1, 1000):
            for position, e in page:
                self._fold(position, e)
            self.position = page[-1][0]
        problems.extend(self.log_problems)
        self.log_problems.clear()
        return problems

    def _fold(self, position: int, e: Any) -> None:
        kind = type(e).__qualname__
        oid = e.originator_id
        try:
            self.aggregates[oid] = e.mutate(self.aggregates.get(oid))
        except Exception as exc:
            self.log_problems.append(
                f"position {position}: {kind} v{e.originator_version} does not replay: {exc}"
            )
        if kind == "PhaseLock.Locked":
            held = self.holders.get(oid)
            if held not in (None, e.owner):
                self.log_problems.append(f"position {position}: two holders {held}, {e.owner}")
            self.holders[oid] = e.owner
        elif kind in ("PhaseLock.Released", "PhaseLock.Expired"):
            self.holders[oid] = None
            self.takeovers += kind == "PhaseLock.Expired" and e.taken_over_by is not None
        elif kind == "Snapshot.Created":
            self.snapshot_latest[e.snapshot_id] = e.latest_order
        elif kind == "PruneCycle.Created":
            self.cycle_snapshot[oid] = e.snapshot_id
        elif kind == "PruneCycle.PhaseFailed" and e.error_type == "Interrupted":
            self.interrupted[e.phase] += 1
        elif kind == "PruneCycle.RolledBack":
            self.cycle_snapshot[oid] = e.new_snapshot_id
        uses_snapshot = kind in _USES_SNAPSHOT
        if uses_snapshot and e.snapshot_id != self.cycle_snapshot.get(oid):
            self.log_problems.append(
                f"position {position}: {kind} on snapshot {e.snapshot_id}, "
                f"cycle has {self.cycle_snapshot.get(oid)}"
            )
        if kind == "PruneCycle.NodesSwept":
            latest = self.snapshot_latest.get(e.snapshot_id, -1)
            for h in e.hashes:
                self.audited[h] += 1
                self.audited_at[h].append(latest)
                self.touched.add(h)

    # 1. the store
    def _store(self, protection_orders: int) -> list[str]:
        if not self.snapshot_latest:
            return []
        latest = self.snapshot_latest[max(self.snapshot_latest)]
        since = max(0, latest - protection_orders)
        with SqliteStateStore.open(self.data_dir / STATE_FILE) as store:
            report = check_store(store, since)
        if report.violations:
            return [
                f"from order {since}: {report.missing} missing, {report.corrupt} corrupt "
                f"of {report.reachable} reachable nodes under {report.roots_checked} roots"
            ]
        return []

    # 3. the read models
    def _projections(self, rt: Runtime, full: bool) -> list[str]:
        """Each read model, caught up, against a shadow the harness builds from event 1 with
        the same projection code and never kills (a rebuild kept current); with `full`, also
        ProjectionRunner.verify, which replays the whole log into a fresh one each time."""
        runner = rt.projections()
        runner.catch_up()
        if self.shadow is None:
            self.shadow = ProjectionRunner(":memory:", rt.log, fresh_projections(rt))
        self.shadow.source = rt.log  # each round opens the log anew
        self.shadow.catch_up()
        head = rt.log.head()
        problems: list[str] = []
        for name in runner.projections:
            if runner.position(name) != head:
                problems.append(f"{name} at {runner.position(name)} after catch-up, head {head}")
            elif runner.digest(name) != self.shadow.digest(name):
                problems.append(f"{name} differs from a replay of the log")
            if full and not runner.verify(name):
                problems.append(f"{name} differs from a fresh rebuild (verify)")
        overall = runner.rows("SELECT status FROM health WHERE scope = 'overall'")
        self.health[str(overall[0][0]) if overall else "unknown"] += 1
        return problems

    # 4. the audit against the trigger's record
    def _audit(self) -> list[str]:
        problems: list[str] = []
        with closing(sqlite3.connect(self.data_dir / STATE_FILE, timeout=30)) as db:
            db.execute("PRAGMA busy_timeout = 30000")
            rows = db.execute(
                "SELECT rowid, hash, written_order FROM deleted_log WHERE rowid > ? ORDER BY rowid",
                (self.deleted_rowid,),
            ).fetchall()
            for rowid, h, written in rows:
                self.deleted[bytes(h)] += 1
                self.deleted_written[bytes(h)].append(int(written))
                self.touched.add(bytes(h))
                self.deleted_rowid = int(rowid)
            stored = db.execute("SELECT hash, written_order FROM nodes").fetchall()
            unlogged = db.execute("SELECT COUNT(*) FROM sweep_journal").fetchone()[0]
        gone, audited = set(self.deleted), set(self.audited)
        if gone != audited:
            problems.append(
                f"{len(gone - audited)} deleted node(s) without an audit row "
                f"(e.g. {_first(gone - audited)}), {len(audited - gone)} audited but never "
                f"deleted (e.g. {_first(audited - gone)})"
            )
        elif self.deleted != self.audited:
            twice = [h for h in gone if self.deleted[h] != self.audited[h]]
            problems.append(
                f"{len(twice)} node(s) deleted and audited a different number of times "
                f"(e.g. {twice[0].hex()[:16]}: deleted {self.deleted[twice[0]]}, "
                f"audited {self.audited[twice[0]]})"
            )
        else:
            for h in self.touched:
                orders, stamps = self.audited_at[h], self.deleted_written[h]
                bad = [(w, o) for w, o in zip(stamps, orders, strict=True) if w > o]
                if bad:
                    problems.append(
                        f"node {h.hex()[:16]} deleted with written_order {bad[0][0]} > the "
                        f"snapshot's latest_order {bad[0][1]}: the guard failed"
                    )
                    break
            self.touched.clear()
        back = [(bytes(h), int(w)) for h, w in stored if bytes(h) in self.audited]
        for h, written in back:
            deleting = max(self.audited_at[h])
            if written <= deleting:
                problems.append(
                    f"audited node {h.hex()[:16]} is still stored with written_order "
                    f"{written} <= deleting snapshot's latest_order {deleting}"
                )
                break
        if unlogged:
            problems.append(f"{unlogged} journal row(s) still unlogged after a completed cycle")
        return problems

    # 5. the lock
    def _lock(self, rt: Runtime) -> list[str]:
        """The rule: a held lock's holder is alive, or its timeout has not passed. And since a
        restart takes a dead holder's lock over at once, after a completed cycle a dead process
        must not hold it at all."""
        lock = rt.log.get(lock_uuid(rt.settings.group), PhaseLock)
        if not lock.is_held or lock.owner is None:
            return []
        if not ProcessLiveness().is_gone(lock.owner):
            return []
        if lock.is_expired(SystemClock().now()):
            return [f"held by dead {lock.describe_holder()} past its timeout"]
        return [f"held by dead {lock.describe_holder()} after the restart completed a cycle"]


def fresh_projections(rt: Runtime) -> list[Projection]:
    """The runtime's read models, as new instances (so a fault hook on one never fires)."""
    return [
        HealthProjection(rt.settings.recovery) if isinstance(p, HealthProjection) else type(p)()
        for p in rt.projections().projections.values()
    ]


def _guarded(name: str, check: Callable[[], list[str]]) -> list[str]:
    try:
        return check()
    except Exception as exc:  # a check that cannot run is a failed check
        return [f"{name} raised {type(exc).__name__}: {exc}"]


def _first(hashes: set[bytes]) -> str:
    return next(iter(hashes)).hex()[:16] if hashes else "-"


# --- the run ------------------------------------------------------------------------------


@dataclass
class Tally:
    kills: Counter[str] = field(default_factory=Counter)
    not_reached: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    passed: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    violations: list[dict[str, Any]] = field(default_factory=list)
    healthy_s: list[float] = field(default_factory=list)
    seconds: Counter[str] = field(default_factory=Counter)  # per step, summed over kills

    def violation(self, kill_no: int, what: str, detail: str) -> None:
        self.violations.append({"kill": kill_no, "what": what, "detail": detail[:600]})


# The pruner processes the harness kills and restarts. Each one is started ahead of time and
# stops at a gate once its imports are done (about a second of the harness's time per process
# on a busy box): it runs `prunelog ... run` only when released, so it touches nothing before
# then. It reports how long its start took, which the restart's time to healthy includes.
LAUNCHER = """\
import os, sys, time
from infrastructure.cli import main
started = float(os.environ.pop("CRASH_HARNESS_SPAWNED"))
print(f"ready {time.time() - started:.4f}", flush=True)
go = sys.stdin.readline().strip() == "go"
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the CLI's own output is not needed
if go:
    main()
"""


class GatedPruner:
    """`prunelog --data-dir D run ARGS` in its own process, held at the gate until `go()`."""

    def __init__(self, data_dir: Path, *args: str, kill_at: str | None, stderr_path: Path) -> None:
        env = child_env(kill_at)
        env["CRASH_HARNESS_SPAWNED"] = repr(time.time())
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, "--data-dir", str(data_dir), "run", *args],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=str(REPO),
            )
        self.stderr_path = stderr_path
        self.startup_s = 0.0

    def go(self) -> float:
        """Waits until the imports are done, opens the gate; returns the monotonic start."""
        assert self.proc.stdout is not None and self.proc.stdin is not None
        ready = self.proc.stdout.readline().decode().split()
        if len(ready) != 2 or ready[0] != "ready":
            raise RuntimeError(f"pruner did not start: {tail(self.stderr_path)}")
        self.startup_s = float(ready[1])
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()
        return time.monotonic()

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def kill_victim(victim: GatedPruner, plan: Plan, opts: Options, tally: Tally, kill_no: int) -> None:
    """Releases a pruner, kills it as planned and reaps it (an unreaped zombie would still look
    alive to the restart's liveness check)."""
    victim.go()
    wait = plan.delay_s if plan.kind == "timed" else opts.targeted_timeout_s
    try:
        rc = victim.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        if plan.kind == "timed":
            tally.kills["timed"] += 1
        else:
            tally.not_reached[plan.kind] += 1
        return
    if rc == -signal.SIGKILL and plan.kind != "timed" and MARKER in tail(victim.stderr_path, 40):
        tally.kills[plan.kind] += 1
    else:
        detail = f"{plan} exited by itself with code {rc}: {tail(victim.stderr_path)}"
        tally.violation(kill_no, "pruner_exited", detail)


def restart(restarter: GatedPruner, opts: Options, tally: Tally, kill_no: int) -> None:
    """`prunelog run --once`: must resume the crashed cycle and complete one. Its time to
    healthy is its start (interpreter and imports) plus the run to the end of that cycle."""
    released = restarter.go()
    try:
        rc = restarter.wait(timeout=opts.restart_timeout_s)
    except subprocess.TimeoutExpired:
        restarter.cancel()
        tally.violation(kill_no, "restart_hung", f"no cycle within {opts.restart_timeout_s}s")
        return
    tally.restarts += 1
    if rc != 0:
        tally.violation(kill_no, "restart_failed", f"exit {rc}: {tail(restarter.stderr_path)}")
        return
    tally.healthy_s.append(restarter.startup_s + time.monotonic() - released)


def run(opts: Options) -> dict[str, Any]:
    started = time.monotonic()
    data_dir = opts.data_dir or Path(tempfile.mkdtemp(prefix="prunelog-crash-"))
    logs = data_dir / "crash-logs"
    logs.mkdir(parents=True, exist_ok=True)
    prepare(data_dir, opts)
    tally = Tally()
    checker = Checker(data_dir)
    plans = plan_kills(opts.kills, opts.seed, opts.timed_delay_s)

    def victim(i: int) -> GatedPruner | None:
        if i >= len(plans):
            return None
        return GatedPruner(
            data_dir, kill_at=plans[i].kill_at, stderr_path=logs / f"kill-{i + 1:04d}.err"
        )

    writer = start_writer(data_dir, opts.seed + 1, opts.writer_sleep_ms)
    writer_out: dict[str, Any] = {}
    spawned: list[GatedPruner] = []
    try:
        upcoming = victim(0)
        for kill_no, plan in enumerate(plans, start=1):
            if writer.poll() is not None:
                died = writer.stderr.read() if writer.stderr else ""
                tally.violation(kill_no, "writer_died", died)
                break
            assert upcoming is not None
            current = upcoming
            restarter = GatedPruner(
                data_dir, "--once", kill_at=None, stderr_path=logs / f"restart-{kill_no:04d}.err"
            )
            spawned[:] = [current, restarter]
            t0 = time.monotonic()
            kill_victim(current, plan, opts, tally, kill_no)
            t1 = time.monotonic()
            restart(restarter, opts, tally, kill_no)
            t2 = time.monotonic()
            upcoming = victim(kill_no)  # starts its imports while the checks run
            if upcoming is not None:
                spawned.append(upcoming)
            full = kill_no % opts.verify_every == 0 or kill_no == len(plans)
            results = checker.run(full=full)
            t3 = time.monotonic()
            tally.seconds.update({"kill": t1 - t0, "restart": t2 - t1, "checks": t3 - t2})
            for name in CHECKS:
                problems = results.get(name, [])
                if problems:
                    tally.failed[name] += 1
                    for p in problems[:3]:
                        tally.violation(kill_no, name, p)
                else:
                    tally.passed[name] += 1
    finally:
        for proc in spawned:
            proc.cancel()
        writer.send_signal(signal.SIGTERM)
        try:
            out, err = writer.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            writer.kill()
            out, err = writer.communicate()
        lines = out.strip().splitlines()
        writer_out = json.loads(lines[-1]) if lines else {"error": err[-600:]}
    if writer_out.get("error"):
        tally.violation(0, "writer_error", str(writer_out["error"]))
    summary = summarize(opts, tally, checker, writer_out, time.monotonic() - started)
    if tally.violations or opts.keep:
        summary["data_dir"] = str(data_dir)
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    return summary


def summarize(
    opts: Options, tally: Tally, checker: Checker, writer: dict[str, Any], seconds: float
) -> dict[str, Any]:
    h = sorted(tally.healthy_s)
    return {
        "kills": opts.kills,
        "seed": opts.seed,
        "kills_by_kind": {k: tally.kills[k] for k in KINDS},
        "targeted_not_reached": dict(tally.not_reached),
        "restarts": tally.restarts,
        "checks_passed": sum(tally.passed.values()),
        "checks_failed": sum(tally.failed.values()),
        "checks": {c: {"passed": tally.passed[c], "failed": tally.failed[c]} for c in CHECKS},
        "violations": len(tally.violations),
        "violation_details": tally.violations[:20],
        "time_to_healthy_s": {
            "min": round(h[0], 3) if h else None,
            "median": round(statistics.median(h), 3) if h else None,
            "max": round(h[-1], 3) if h else None,
            "target": HEALTHY_TARGET_S,
            "all_within_target": bool(h) and h[-1] < HEALTHY_TARGET_S,
        },
        "mean_s_per_kill": {k: round(v / max(1, opts.kills), 2) for k, v in tally.seconds.items()},
        "resumed_after_kill": dict(checker.interrupted),
        "lock_takeovers": checker.takeovers,
        # One completed cycle after a crash leaves health degraded: it turns healthy again
        # only after min_healthy_cycles (3) clean cycles in a row.
        "health_after_restart": dict(checker.health),
        "nodes_deleted": sum(checker.deleted.values()),
        "events": checker.position,
        "writer_txs": writer.get("txs"),
        "runtime_s": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/crash.py", description=__doc__)
    parser.add_argument("--kills", type=int, default=Options.kills)
    parser.add_argument("--seed", type=int, default=Options.seed)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
    args = parser.parse_args(argv)
    opts = Options(kills=args.kills, seed=args.seed, data_dir=args.data_dir, keep=args.keep)
    opts.verify_every = max(1, -(-opts.kills // 10))  # about ten full verifies per run
    summary = run(opts)
    print(json.dumps(summary, indent=2))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
