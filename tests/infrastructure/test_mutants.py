"""The state machine can fail: each test runs it against a deliberately broken variant of one
safety mechanism and asserts that it finds a counterexample, of the kind that mechanism guards.

The mutants plug in through the kit's Adapters, the way a user's own component would:
- a sweep without the written_order guard (a SqliteNodeStore whose DELETE ignores max_order);
- a sweep that loads the PREVIOUS snapshot's reach set instead of its own;
- a Bloom filter as the mark set (false positives: BuildReach skips a live subtree);
- a lock check that ignores timeouts (another owner takes a live, unexpired lock).

The runs are derandomized, so each mutant is caught by the same example every time; shrinking
is off (a counterexample is printed as found), to stay within the CI budget."""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from domain.errors import ReachSetCorruptError
from domain.lock import PhaseLock
from domain.manager import AtomicSnapshotManager
from domain.ports import JournalEntry, ReachSet, StaleEntry
from infrastructure.sqlite_nodes import FileReachStore, RoaringReach, SqliteNodeStore
from infrastructure.testkit import (
    Adapters,
    InvariantViolation,
    LockViolation,
    MachineConfig,
    PruningMachine,
    SafetyViolation,
    pruning_machine,
)

# --- the mutants -----------------------------------------------------------------------------

NO_GUARD = 2**62


class UnguardedNodeStore(SqliteNodeStore):
    """Deletes whatever it is asked to: the DELETE no longer re-checks written_order, so a node
    that a writer stamped again after the snapshot is deleted anyway (Rooch's hash-reuse bug)."""

    def delete_guarded(
        self, row_ids: list[int], max_order: int, journal: JournalEntry, swept: list[int]
    ) -> list[tuple[bytes, int]]:
        return super().delete_guarded(row_ids, NO_GUARD, journal, swept)

    def sweep_stale(
        self,
        entries: list[StaleEntry],
        row_ids: list[int],
        max_order: int,
        journal: JournalEntry,
    ) -> list[tuple[bytes, int]]:
        return super().sweep_stale(entries, row_ids, NO_GUARD, journal)


class PreviousSnapshotReachStore(FileReachStore):
    """The sweep reads the reach set of the snapshot before its own (phases reading state from
    different moments: Rooch's first bug). The first snapshot has none before it."""

    def load(self, snapshot_id: int, digest: str) -> ReachSet:
        older = sorted(
            (int(p.name.split("-")[1]), p)
            for p in self.directory.glob("reach-*.roaring")
            if int(p.name.split("-")[1]) < snapshot_id
        )
        if not older:
            return super().load(snapshot_id, digest)
        return RoaringReach.deserialize(older[-1][1].read_bytes())


class BloomReachSet:
    """A real Bloom filter over row ids: never a false negative, sometimes a false positive.
    `Pruner._mark` skips a node that is already "in" the set, with its whole subtree."""

    HEADER = struct.Struct(">IHI")  # bits, hashes, count

    def __init__(self, bits: int = 512, hashes: int = 3) -> None:
        self.bits = bits
        self.hashes = hashes
        self.array = bytearray(bits // 8)
        self.count = 0

    def _positions(self, row_id: int) -> list[int]:
        digest = hashlib.blake2b(row_id.to_bytes(8, "big"), digest_size=8 * self.hashes).digest()
        return [
            int.from_bytes(digest[8 * i : 8 * i + 8], "big") % self.bits for i in range(self.hashes)
        ]

    def add(self, row_id: int) -> None:
        for p in self._positions(row_id):
            self.array[p // 8] |= 1 << (p % 8)
        self.count += 1

    def __contains__(self, row_id: int, /) -> bool:
        return all(self.array[p // 8] & (1 << (p % 8)) for p in self._positions(row_id))

    def __len__(self) -> int:
        return self.count

    def add_new(self, row_ids: Iterable[int], *, unless_in: Any = None) -> list[int]:
        new = []
        for row_id in sorted(set(row_ids)):
            if unless_in is not None and row_id in unless_in:
                continue
            if row_id not in self:  # a false positive: skipped, and its subtree with it
                self.add(row_id)
                new.append(row_id)
        return new

    def absent(self, row_ids: Iterable[int], *, unless_in: Any = None) -> list[int]:
        return [
            row_id
            for row_id in sorted(set(row_ids))
            if row_id not in self and (unless_in is None or row_id not in unless_in)
        ]

    def serialize(self) -> bytes:
        return self.HEADER.pack(self.bits, self.hashes, self.count) + bytes(self.array)

    @classmethod
    def deserialize(cls, data: bytes) -> BloomReachSet:
        bits, hashes, count = cls.HEADER.unpack_from(data)
        bloom = cls(bits, hashes)
        bloom.array = bytearray(data[cls.HEADER.size :])
        bloom.count = count
        return bloom


class BloomReachStore:
    """A ReachStorePort that persists Bloom filters, digest-checked like FileReachStore."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def new(self) -> ReachSet:
        return BloomReachSet()

    def _path(self, snapshot_id: int, digest: str) -> Path:
        return self.directory / f"reach-{snapshot_id}-{digest[:32]}.bloom"

    def save(self, snapshot_id: int, reach: ReachSet) -> str:
        assert isinstance(reach, BloomReachSet)
        data = reach.serialize()
        digest = hashlib.blake2b(data, digest_size=32).hexdigest()
        self._path(snapshot_id, digest).write_bytes(data)
        return digest

    def load(self, snapshot_id: int, digest: str) -> ReachSet:
        path = self._path(snapshot_id, digest)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ReachSetCorruptError(f"{path.name}: {exc}") from None
        if hashlib.blake2b(data, digest_size=32).hexdigest() != digest:
            raise ReachSetCorruptError(f"{path.name}: digest mismatch")
        return BloomReachSet.deserialize(data)


class TimeoutBlindManager(AtomicSnapshotManager):
    """Reads every OTHER holder's lock as already timed out, so it takes over a live one (its
    own lock it still reads correctly)."""

    def _lock(self) -> PhaseLock:
        lock = super()._lock()
        if lock.owner is not None and lock.owner != self.owner:
            lock.timeout_ms = 0
        return lock


# --- running a mutant ------------------------------------------------------------------------

# The safety mutants need only the writer, the pruner's steps, crashes and clock jumps; the lock
# mutant needs the second pruner. Faults stay off, so that no other failure can come first; and
# a mutant that marks too much also leaks garbage, so the garbage check is off for the safety
# mutants: each must be caught deleting a live node.
SAFETY_ONLY = MachineConfig(
    contention=False,
    faults=False,
    check_projections=False,
    check_garbage=False,
    initial_txs=(10, 40),
    workload_keys=48,
)
LOCKS_ONLY = MachineConfig(faults=False, crashes=False, check_projections=False)
MAX_EXAMPLES = 60


@dataclass
class Caught:
    error: InvariantViolation
    examples: int
    seconds: float


class Counted(PruningMachine):
    """Counts the examples a run generated before the one that failed."""

    started: ClassVar[int] = 0

    def __init__(self) -> None:
        type(self).started += 1
        super().__init__()


def catch(adapters: Adapters, config: MachineConfig, name: str) -> Caught:
    machine = pruning_machine(adapters, config, name=name, base=Counted)
    machine.started = 0
    run = settings(
        settings.default,
        max_examples=MAX_EXAMPLES,
        phases=(Phase.explicit, Phase.generate),
        report_multiple_bugs=False,
        print_blob=False,
    )
    started = time.perf_counter()
    with pytest.raises(InvariantViolation) as info:
        run_state_machine_as_test(machine, settings=run)
    # Hypothesis replays the failing example once more to report it: not a new example.
    return Caught(info.value, max(1, machine.started - 1), time.perf_counter() - started)


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[list[Caught]]:
    found: list[Caught] = []
    yield found
    for caught in found:
        request.node.user_properties.append(("examples", caught.examples))
        request.node.user_properties.append(("seconds", round(caught.seconds, 1)))
        print(
            f"\n{request.node.name}: caught by example {caught.examples} in "
            f"{caught.seconds:.1f} s: {type(caught.error).__name__}"
        )


def test_a_sweep_without_the_written_order_guard_is_caught(report: list[Caught]) -> None:
    caught = catch(Adapters(node_store=UnguardedNodeStore), SAFETY_ONLY, "UnguardedSweep")
    report.append(caught)
    assert isinstance(caught.error, SafetyViolation), caught.error


def test_a_sweep_that_uses_the_previous_snapshots_reach_set_is_caught(
    report: list[Caught],
) -> None:
    adapters = Adapters(reach_store=PreviousSnapshotReachStore)
    caught = catch(adapters, SAFETY_ONLY, "PreviousReachSet")
    report.append(caught)
    assert isinstance(caught.error, SafetyViolation), caught.error


def test_a_bloom_filter_mark_set_with_short_circuit_is_caught(report: list[Caught]) -> None:
    caught = catch(Adapters(reach_store=BloomReachStore), SAFETY_ONLY, "BloomMark")
    report.append(caught)
    assert isinstance(caught.error, SafetyViolation), caught.error


def test_a_lock_check_that_ignores_timeouts_is_caught(report: list[Caught]) -> None:
    caught = catch(Adapters(manager=TimeoutBlindManager), LOCKS_ONLY, "TimeoutBlindLock")
    report.append(caught)
    assert isinstance(caught.error, LockViolation), caught.error
    assert "took" in str(caught.error)


def test_the_bloom_mutant_really_has_false_positives_and_no_false_negatives() -> None:
    bloom = BloomReachSet()
    for row_id in range(0, 400, 2):
        bloom.add(row_id)
    assert all(row_id in bloom for row_id in range(0, 400, 2))
    assert any(row_id in bloom for row_id in range(1, 400, 2))
    assert BloomReachSet.deserialize(bloom.serialize()).array == bloom.array
