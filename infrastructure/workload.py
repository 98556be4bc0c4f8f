"""A seeded workload writer that plays the chain against a `SqliteStateStore`.

Each tx is a random mix of the patterns that broke Rooch's pruner:
- plain updates and deletes;
- reverts: a key set back to a value it had earlier, so old leaf hashes come back;
- undo txs: a tx that restores every key the previous tx changed, so a whole old path
  (often the old global root) is written again and must be re-stamped;
- objects with field trees, created and deleted, often from a few shared templates, so
  equal field trees sit under different keys and the store is a DAG.

Same seed on an empty store gives the same sequence of roots: all randomness comes from the
seed and `chain_timestamp` from the tx number, never the clock.

Run as a process: `python -m infrastructure.workload --db PATH --txs N --seed S`.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

from infrastructure.state_store import SqliteStateStore, TxResult, TxSpec

GENESIS_TIMESTAMP_MS = 1_700_000_000_000
BLOCK_INTERVAL_MS = 1_000
TEMPLATES = 6
UNDO_PROBABILITY = 0.06

Fields = dict[bytes, bytes]


def chain_timestamp_for(tx_order: int) -> int:
    return GENESIS_TIMESTAMP_MS + tx_order * BLOCK_INTERVAL_MS


@dataclass(slots=True)
class WorkloadStats:
    txs: int = 0
    nodes_written: int = 0
    nodes_reused: int = 0
    stale_written: int = 0
    last: TxResult | None = None
    op_counts: dict[str, int] = field(default_factory=dict)


class WorkloadWriter:
    """Commits one seeded random tx per `step()`; keeps a model of the state it wrote."""

    def __init__(
        self,
        store: SqliteStateStore,
        seed: int,
        keys: int = 2_000,
        ops_per_tx: int = 8,
        field_count: int = 6,
    ) -> None:
        if keys < 1 or ops_per_tx < 1 or field_count < 1:
            raise ValueError("keys, ops_per_tx and field_count must be positive")
        self.store = store
        self.rng = random.Random(seed)
        self.keys = keys
        self.ops_per_tx = ops_per_tx
        self.field_count = field_count
        self.stats = WorkloadStats()
        self.values: dict[bytes, bytes] = {}
        self.history: dict[bytes, list[bytes]] = {}
        self.objects: dict[bytes, Fields] = {}
        self.templates = [self._fields(f"template-{i}") for i in range(TEMPLATES)]
        # What the previous tx overwrote, so an undo tx can restore it exactly.
        self._undo_plain: dict[bytes, bytes | None] = {}
        self._undo_objects: dict[bytes, Fields | None] = {}
        latest = store.latest()
        self._next_order = 0 if latest is None else latest.tx_order + 1

    def _fields(self, tag: str) -> Fields:
        count = self.rng.randint(1, self.field_count)
        return {f"f{i}".encode(): f"{tag}:{i}".encode() for i in range(count)}

    def _count(self, op: str) -> None:
        self.stats.op_counts[op] = self.stats.op_counts.get(op, 0) + 1

    def _plan(self) -> tuple[dict[bytes, bytes | None], dict[bytes, Fields | None]]:
        rng = self.rng
        if (self._undo_plain or self._undo_objects) and rng.random() < UNDO_PROBABILITY:
            self._count("undo")
            return dict(self._undo_plain), dict(self._undo_objects)
        plain: dict[bytes, bytes | None] = {}
        objs: dict[bytes, Fields | None] = {}
        tag = self._next_order
        for op_index in range(rng.randint(1, 2 * self.ops_per_tx - 1)):
            roll = rng.random()
            if roll < 0.70:
                key = b"key-%06d" % rng.randrange(self.keys)
                earlier = [v for v in self.history.get(key, []) if v != self.values.get(key)]
                if roll < 0.15 and earlier:
                    self._count("revert")
                    plain[key] = rng.choice(earlier)
                elif roll < 0.25 and key in self.values:
                    self._count("delete")
                    plain[key] = None
                else:
                    self._count("update")
                    plain[key] = b"v:%d:%d" % (tag, op_index)
            else:
                key = b"obj-%06d" % rng.randrange(max(1, self.keys // 4))
                if roll < 0.78 and key in self.objects:
                    self._count("object_delete")
                    objs[key] = None
                elif roll < 0.90:
                    self._count("object_template")
                    objs[key] = dict(rng.choice(self.templates))
                else:
                    self._count("object_fresh")
                    objs[key] = self._fields(f"o:{tag}:{op_index}")
        return plain, objs

    def _next_spec(self) -> TxSpec:
        """Plan the next tx and apply it to the model (the commit follows)."""
        plain, objs = self._plan()
        spec = TxSpec(plain, chain_timestamp_for(self._next_order), objs)
        self._next_order += 1
        self._undo_plain = {k: self.values.get(k) for k in plain}
        self._undo_objects = {k: self.objects.get(k) for k in objs}
        for key, value in plain.items():
            if value is None:
                self.values.pop(key, None)
                continue
            self.values[key] = value
            seen = self.history.setdefault(key, [])
            if value not in seen:
                seen.append(value)
        for key, fields in objs.items():
            if fields is None:
                self.objects.pop(key, None)
            else:
                self.objects[key] = fields
        return spec

    def step(self) -> TxResult:
        """Commit ONE transaction."""
        return self.step_many(1)[0]

    def step_many(self, count: int) -> list[TxResult]:
        """Bulk mode: `count` txs in one SQLite commit; the same roots as `count` steps.

        A failed commit leaves the model ahead of the store: make a new writer after one.
        """
        results = self.store.commit_many([self._next_spec() for _ in range(count)])
        stats = self.stats
        for result in results:
            stats.txs += 1
            stats.nodes_written += result.nodes_written
            stats.nodes_reused += result.nodes_reused
            stats.stale_written += result.stale_written
            stats.last = result
        return results

    def run(
        self,
        n_txs: int,
        sleep_ms: float = 0,
        should_stop: StopFlag | None = None,
        batch: int = 1,
    ) -> int:
        """Commit up to `n_txs` txs (0 = until stopped), `batch` per SQLite commit.

        Returns how many were committed. `should_stop` is checked between commits only.
        """
        done = 0
        while (n_txs <= 0 or done < n_txs) and not (should_stop and should_stop.stop):
            count = batch if n_txs <= 0 else min(batch, n_txs - done)
            done += len(self.step_many(count))
            if sleep_ms > 0:
                time.sleep(sleep_ms / 1000)
        return done

    def summary(self) -> dict[str, object]:
        s = self.stats
        return {
            "txs": s.txs,
            "last_order": None if s.last is None else s.last.tx_order,
            "state_root": None if s.last is None else s.last.state_root.hex(),
            "nodes_written": s.nodes_written,
            "nodes_reused": s.nodes_reused,
            "stale_written": s.stale_written,
            "ops": dict(sorted(s.op_counts.items())),
        }


@dataclass(slots=True)
class StopFlag:
    """Set by a signal handler; the loop checks it between txs, never inside one."""

    stop: bool = False
    signal_name: str | None = None

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        self.stop = True
        self.signal_name = signal.Signals(signum).name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infrastructure.workload")
    parser.add_argument("--db", required=True, help="state store SQLite file")
    parser.add_argument("--txs", type=int, required=True, help="txs to commit; 0 = until signal")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--keys", type=int, default=2_000, help="size of the plain key space")
    parser.add_argument("--ops-per-tx", type=int, default=8, help="mean changes per tx")
    parser.add_argument("--sleep-ms", type=float, default=0, help="pause after each commit")
    parser.add_argument(
        "--batch", type=int, default=1, help="txs per SQLite commit (bulk mode for big stores)"
    )
    args = parser.parse_args(argv)
    flag = StopFlag()
    signal.signal(signal.SIGTERM, flag.handle)
    signal.signal(signal.SIGINT, flag.handle)
    started = time.perf_counter()
    error: str | None = None
    with SqliteStateStore.open(args.db) as store:
        writer = WorkloadWriter(store, args.seed, keys=args.keys, ops_per_tx=args.ops_per_tx)
        try:
            writer.run(args.txs, args.sleep_ms, should_stop=flag, batch=max(1, args.batch))
        except Exception as exc:  # e.g. a MissingNodeError: report it, exit non-zero
            error = f"{type(exc).__name__}: {exc}"
        summary = writer.summary()
        summary["node_count"] = store.node_count()
    summary["elapsed_s"] = round(time.perf_counter() - started, 3)
    summary["stopped_by"] = flag.signal_name
    summary["error"] = error
    print(json.dumps(summary), flush=True)
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
