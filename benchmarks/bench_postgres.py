"""The PostgreSQL event log beside the SQLite one, in the same run, on the same machine:

1. lock handover after the holder dies, timeout excluded: two `prunelog run` processes on one
   store; the holder is SIGKILLed while it holds the lock, at a random point of the waiter's
   retry period; the figure is the time until the other's PhaseLock.Locked. `same_host`: the
   successor sees the holder's process gone (liveness), so the clock starts at the kill.
   `after_timeout`: every node "on its own host" (the test-suite's launcher), so the successor
   must wait for lock_timeout_ms; the clock starts when the dead holder's lock expires, i.e.
   the timeout is subtracted. A waiting node tries the lock every max(interval_s, 1 s) (a dead
   holder appends nothing, so no NOTIFY wakes it, and it notices its deadline at 0.5 s ticks):
   the figure is that wait plus the takeover's own work. `takeover_work_only` is the work
   alone: a successor in this process calls run_cycle() right after the kill; the time to its
   PhaseLock.Locked (journal reconciled, interrupted phase recorded, lock taken over).
2. event append rate: real PruneCycle.NodesSwept events (100 hashes each), one save per event
   and 100 events per save.
3. projection catch-up rate: the five read models from an empty projections.sqlite over a log
   of >= 50k events (cycles, batches, lock and snapshot events; bench_projections.make_log),
   beside the rate of only reading and decoding the same log.

Prints one JSON object. Never asserts speed.
Usage: .ci/with-postgres python benchmarks/bench_postgres.py [--events 50000] [--kills 5]"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import crash  # benchmarks/crash.py: the store, the config and the child environment
from bench_projections import make_log

from domain.cycle import PruneCycle
from domain.phases import PrunePhase
from infrastructure.config_file import CONFIG_FILE, load_settings
from infrastructure.eventlog import EventsourcingLog
from infrastructure.runtime import Runtime
from projections.runner import ProjectionRunner

BACKENDS = ("postgresql", "sqlite")
HASHES_PER_EVENT = 100
INTERVAL_S = 0.05
RETRY_S = max(INTERVAL_S, 1.0)  # how often a waiting node tries the lock (cli_run._watch)
# As in tests/infrastructure/test_multinode.py: owner ids and liveness use gethostname().
ON_ITS_OWN_HOST = """\
import os, socket
socket.gethostname = lambda: os.environ["PRUNELOG_TEST_HOSTNAME"]
from infrastructure.cli import main
main()
"""


def open_log(backend: str, data_dir: Path, url: str | None) -> EventsourcingLog:
    if backend == "postgresql":
        assert url is not None
        return EventsourcingLog.open_postgres(url)
    return EventsourcingLog.open_sqlite(data_dir)


def fresh_url(base: str) -> str:
    return f"{base}?schema=bench_{uuid.uuid4().hex[:12]}"


def rate(count: int, seconds: float) -> int:
    return round(count / seconds) if seconds > 0 else 0


# --- 2. appends -------------------------------------------------------------------------------


def append_rate(log: EventsourcingLog, events: int, per_save: int) -> int:
    """NodesSwept events per second into one cycle, `per_save` events per save."""
    now = datetime.now(UTC)
    cycle = PruneCycle(f"append-{per_save}", 1, 1, now)
    cycle.start_phase(PrunePhase.BUILD_REACH, 1, now)
    cycle.complete_phase(PrunePhase.BUILD_REACH, {}, now)
    cycle.start_phase(PrunePhase.SWEEP_EXPIRED, 1, now)
    log.save(cycle)
    deleted = [(os.urandom(32), 200) for _ in range(HASHES_PER_EVENT)]
    started = time.perf_counter()
    for n in range(1, events + 1):
        cycle.record_batch(PrunePhase.SWEEP_EXPIRED, 1, n, deleted, now)
        if n % per_save == 0 or n == events:
            log.save(cycle)
    return rate(events, time.perf_counter() - started)


# --- 3. catch-up ------------------------------------------------------------------------------


def catch_up_rate(log: EventsourcingLog, target: int, work: Path) -> dict[str, Any]:
    t = time.perf_counter()
    head = make_log(log, target)
    built = time.perf_counter() - t
    t, pos = time.perf_counter(), 0
    while page := log.read(pos + 1, 2000):
        pos = page[-1][0]
    read = time.perf_counter() - t
    runner = ProjectionRunner(work / "projections.sqlite", log)
    t = time.perf_counter()
    runner.catch_up()
    caught = time.perf_counter() - t
    runner.close()
    return {
        "events": head,
        "catch_up_events_per_s": rate(head, caught),
        "read_decode_only_events_per_s": rate(head, read),
        "log_build_events_per_s": rate(head, built),
    }


# --- 1. handover ------------------------------------------------------------------------------


class Node:
    def __init__(self, data_dir: Path, env: dict[str, str], host: str | None) -> None:
        self.out = data_dir.parent / f"node-{uuid.uuid4().hex[:8]}.out"
        command = [*crash.prunelog_command()]
        if host is not None:
            env = env | {"PRUNELOG_TEST_HOSTNAME": host}
            command = [sys.executable, "-c", ON_ITS_OWN_HOST]
        self.err = self.out.with_suffix(".err")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [*command, "--data-dir", str(data_dir), "run", "--json"],
                env=env,
                stdout=out,
                stderr=err,
                cwd=str(crash.REPO),
            )

    def waiting(self) -> bool:
        return '"waiting": true' in self.out.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def wait_until(
    found: Callable[[], Any], timeout: float = 120, on_timeout: Callable[[], str] = str
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = found()
        if result:
            return result
        time.sleep(0.005)
    raise TimeoutError(f"benchmark: a handover step did not happen in time; {on_timeout()}")


def handovers(backend: str, base_url: str, mode: str, kills: int, work: Path) -> dict[str, Any]:
    timeout_ms = 1000 if mode == "after_timeout" else 600_000
    data_dir = work / f"{backend}-{mode}" / "data"
    opts = crash.Options(seed=5, initial_txs=300, interval_s=INTERVAL_S, delete_batch_size=200)
    crash.prepare(data_dir, opts)
    (data_dir / CONFIG_FILE).write_text(
        f"[snapshot]\nlock_timeout_ms = {timeout_ms}\n" + crash.config_toml(opts)
    )
    url = fresh_url(base_url) if backend == "postgresql" else None
    env = crash.child_env(None) | ({"PRUNELOG_EVENT_STORE": url} if url else {})
    hosts = iter(f"bench-host-{i}" for i in range(1000))

    def spawn() -> Node:
        return Node(data_dir, env, next(hosts) if mode == "after_timeout" else None)

    nodes = [spawn(), spawn()]
    seen: list[Any] = []
    last = [0]  # the last log position read
    log: EventsourcingLog | None = None

    def poll() -> list[Any]:
        nonlocal log
        if log is None:
            log = wait_until(lambda: _try_open(backend, data_dir, url), 60)
        page = log.read(last[0] + 1, 10_000)  # positions may have gaps on PostgreSQL
        if page:
            last[0] = page[-1][0]
        seen.extend(e for _, e in page)
        return seen

    def held_by_a_live_node() -> Any:
        lock = next(
            (e for e in reversed(poll()) if type(e).__qualname__.startswith("PhaseLock.")), None
        )
        if lock is None or type(lock).__qualname__ not in ("PhaseLock.Locked", "PhaseLock.Renewed"):
            return None
        holder = next((n for n in nodes if f":{n.proc.pid}:" in lock.owner), None)
        others = [n for n in nodes if n is not holder and n.proc.poll() is None]
        return (lock, holder) if holder and others and all(n.waiting() for n in others) else None

    def state() -> str:
        lock = next(
            (e for e in reversed(seen) if type(e).__qualname__.startswith("PhaseLock.")), None
        )
        alive = [(n.proc.pid, n.proc.poll(), n.waiting(), crash.tail(n.err, 2)) for n in nodes]
        return f"last lock event {lock!r}; nodes (pid, exit, waiting, stderr) {alive}"

    times: list[float] = []
    crashed: list[str] = []  # nodes that exited by themselves, with their last words
    rng = random.Random(f"{backend}/{mode}")
    try:
        for _ in range(3 * kills):
            if len(times) == kills:
                break
            for dead_by_itself in [n for n in nodes if n.proc.poll() is not None]:
                nodes.remove(dead_by_itself)  # its stderr says why; the run goes on
                crashed.append(crash.tail(dead_by_itself.err, 3))
                nodes.append(spawn())
            wait_until(held_by_a_live_node, on_timeout=state)
            # A waiter retries the lock every RETRY_S: kill at a random point of that period,
            # not right after a failed try (that would measure the worst case every time).
            time.sleep(rng.uniform(0, RETRY_S))
            lock, holder = wait_until(held_by_a_live_node)
            killed_at = time.time()
            os.kill(holder.proc.pid, signal.SIGKILL)
            holder.proc.wait()
            nodes.remove(holder)
            found = wait_until(partial(handover_of, poll, lock.owner))
            if found == "released":
                nodes.append(spawn())
                continue  # it let go of the lock just before the kill: not a handover
            last_own, locked = found
            expires = last_own.at.timestamp() + timeout_ms / 1000
            start = max(killed_at, expires) if mode == "after_timeout" else killed_at
            times.append(locked.at.timestamp() - start)
            nodes.append(spawn())  # after the measurement: its start-up takes a core
    finally:
        for node in nodes:
            node.stop()
        if log is not None:
            log.close()
    return {
        "kills": len(times),
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "waiter_retry_period_s": RETRY_S,
        **({"nodes_that_exited_by_themselves": crashed} if crashed else {}),
        **({"timeout_ms_excluded": timeout_ms} if mode == "after_timeout" else {}),
    }


def handover_of(poll: Callable[[], list[Any]], dead: str) -> Any:
    """(the dead owner's last lock event, its successor's Locked) once the successor locked;
    "released" if the dead owner let go of the lock before it died; None while waiting."""
    locks = [e for e in poll() if type(e).__qualname__.startswith("PhaseLock.")]
    own = [i for i, e in enumerate(locks) if getattr(e, "owner", None) == dead]
    last = locks[own[-1]]
    if type(last).__qualname__ == "PhaseLock.Released":
        return "released"
    after = (e for e in locks[own[-1] + 1 :] if type(e).__qualname__ == "PhaseLock.Locked")
    successor = next(after, None)
    return None if successor is None else (last, successor)


def takeover_work(backend: str, base_url: str, repeats: int, work: Path) -> dict[str, Any]:
    """The handover's own cost, with no waiting at all: a holder process is SIGKILLed while it
    holds the lock, then, in this process, a successor (opened beforehand) runs run_cycle();
    the figure runs from that call to its PhaseLock.Locked (journal reconciled, interrupted
    phase recorded, lock taken over)."""
    data_dir = work / f"{backend}-work" / "data"
    opts = crash.Options(seed=5, initial_txs=300, interval_s=INTERVAL_S, delete_batch_size=200)
    crash.prepare(data_dir, opts)
    (data_dir / CONFIG_FILE).write_text(crash.config_toml(opts))
    url = fresh_url(base_url) if backend == "postgresql" else None
    env = crash.child_env(None) | ({"PRUNELOG_EVENT_STORE": url} if url else {})
    settings = load_settings(data_dir)
    settings.event_store = url
    times: list[float] = []
    for _ in range(repeats):
        holder = Node(data_dir, env, None)
        with wait_until(lambda: _try_open(backend, data_dir, url), 60) as log:
            wait_until(partial(_held_by, log, holder.proc.pid), 60)
        holder.stop()
        with Runtime(settings) as successor:
            head, started = successor.log.head(), time.time()
            successor.pruner.run_cycle()
            locked = next(
                e
                for _, e in successor.log.read(head + 1, 1_000_000)
                if type(e).__qualname__ == "PhaseLock.Locked" and e.owner == successor.manager.owner
            )
            times.append(locked.at.timestamp() - started)
    return {
        "repeats": len(times),
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
    }


def _held_by(log: EventsourcingLog, pid: int) -> bool:
    head = log.head()
    page = log.read(max(1, head - 50), 100)
    locks = [e for _, e in page if type(e).__qualname__.startswith("PhaseLock.")]
    return (
        bool(locks)
        and type(locks[-1]).__qualname__ in ("PhaseLock.Locked", "PhaseLock.Renewed")
        and f":{pid}:" in locks[-1].owner
    )


def _try_open(backend: str, data_dir: Path, url: str | None) -> EventsourcingLog | None:
    try:
        return open_log(backend, data_dir, url)
    except Exception:
        return None


# --- the run ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000, help="catch-up log size")
    parser.add_argument("--appends", type=int, default=2_000, help="events per append run")
    parser.add_argument("--kills", type=int, default=5, help="handovers per backend and mode")
    args = parser.parse_args()
    base = os.environ.get("PRUNELOG_TEST_POSTGRES")
    if not base:
        sys.exit("no PostgreSQL: run under .ci/with-postgres (sets PRUNELOG_TEST_POSTGRES)")
    result: dict[str, Any] = {"benchmark": "postgresql_vs_sqlite", "host_cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        work = Path(tmp)
        for backend in BACKENDS:
            figures: dict[str, Any] = {}
            where = work / backend
            where.mkdir()
            log = open_log(backend, where / "appends", fresh_url(base))
            figures["append_events_per_s"] = {
                "one_save_per_event": append_rate(log, args.appends, 1),
                "100_events_per_save": append_rate(log, args.appends * 5, 100),
            }
            log.close()
            log = open_log(backend, where / "catch-up", fresh_url(base))
            figures["projection_catch_up"] = catch_up_rate(log, args.events, where)
            log.close()
            figures["lock_handover"] = {
                mode: handovers(backend, base, mode, args.kills, where)
                for mode in ("same_host", "after_timeout")
            }
            figures["lock_handover"]["takeover_work_only"] = takeover_work(
                backend, base, args.kills, where
            )
            result[backend] = figures
    result["note"] = (
        "sqlite is the same-run baseline. Handover end to end: a waiting node retries the lock "
        "every max(interval_s, 1 s), noticed at 0.5 s ticks, so same_host/after_timeout are "
        "that wait plus the takeover's own work; takeover_work_only is the work alone."
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
