"""The stateful machine's rules, invariant and final liveness check. Its state and helpers
live in the MachineState mixin (machine_state.py)."""

from __future__ import annotations

import sys
from typing import Any, ClassVar, cast

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from domain.errors import LockContendedError
from domain.pruning import CycleReport
from infrastructure.testkit.adapters import Adapters, open_pruner
from infrastructure.testkit.checks import assert_invariants, garbage_violations, unaudited_deletions
from infrastructure.testkit.fold import event_kind
from infrastructure.testkit.machine_state import MachineConfig, MachineState
from infrastructure.testkit.strategies import FaultSpec, WriterTx, faults, writer_transactions
from infrastructure.testkit.violations import (
    AuditViolation,
    ContentionViolation,
    LivenessViolation,
    LockViolation,
)
from infrastructure.workload import WorkloadWriter


def _chain_has(exc: BaseException | None, kind: type[BaseException]) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class PruningMachine(MachineState, RuleBasedStateMachine):
    """The real writer, pruner, log and projections on temp files, with every invariant
    checked after every step. Subclass it, or use `pruning_machine(...)`, to change
    `adapters` (your components) or `config` (sizes, timeouts, which rule families run)."""

    adapters: ClassVar[Adapters] = Adapters()
    config: ClassVar[MachineConfig] = MachineConfig()

    # --- the writer ------------------------------------------------------------------------

    @initialize(seed=st.integers(0, 2**16), txs=st.integers(0, 2**16))
    def start_the_chain(self, seed: int, txs: int) -> None:
        cfg = self.config
        self.workload = WorkloadWriter(
            self.store, seed, keys=cfg.workload_keys, ops_per_tx=cfg.workload_ops
        )
        low, high = cfg.initial_txs
        for _ in range(low + txs % (high - low + 1)):
            self.workload.step()
        self._note_writes()

    @rule(txs=st.integers(1, 5))
    def writer_runs_the_workload(self, txs: int) -> None:
        assert self.workload is not None
        for _ in range(txs):
            self.workload.step()
        self._note_writes()
        self._count("workload txs")

    @rule(tx=writer_transactions())
    def writer_commits(self, tx: WriterTx) -> None:
        tx.commit(self.store)
        state = dict(self.history[-1])
        state.update(tx.changes)
        self.history.append(state)
        self._note_writes()
        self._count("writer txs")

    @rule(back=st.integers(1, 6))
    def writer_reverts_to_an_earlier_state(self, back: int) -> None:
        """Every WriterTx key goes back to its value `back` txs ago: a whole old path again."""
        old = self.history[max(0, len(self.history) - 1 - back)]
        now = self.history[-1]
        changes = {k: old.get(k) for k in now.keys() | old.keys() if old.get(k) != now.get(k)}
        if not changes:
            return
        WriterTx(changes, {}).commit(self.store)
        self.history.append(dict(old))
        self._note_writes()
        self._count("reverts")

    # --- the pruner ------------------------------------------------------------------------

    @rule(until=st.sampled_from(("next", "phase_start", "batch")))
    def pruner_steps(self, until: str) -> None:
        self._record(self._pruner().advance(until))

    @rule(until=st.sampled_from(("phase_end", "cycle")))
    def pruner_runs(self, until: str) -> None:
        self._record(self._pruner().advance(until))

    @precondition(lambda self: self.config.crashes)
    @rule()
    def pruner_crashes(self) -> None:
        """Drops every in-memory object of the pruner, mid-cycle or not; the next pruner rule
        reopens everything from disk as a new process, which resumes the cycle."""
        if self.process is not None and self.process.alive:
            self._count("crashes mid-cycle" if self.process.paused_at else "crashes idle")
            self.process.crash()
            self.gone.add(self.process.owner)

    @precondition(lambda self: self.config.contention)
    @rule()
    def second_pruner_tries_the_lock(self) -> None:
        """Another owner runs a cycle. It must be refused (LockContendedError, nothing
        appended) while a running pruner holds an unexpired lock; otherwise it may take over."""
        self._sync_log()
        holder = self.fold.holder(self.config.group)
        now = self.clock.now()
        live = holder is not None and holder.owner not in self.gone and now < holder.expires_at
        self.contenders += 1
        owner = f"pruner-b.{self.contenders}"
        parts = open_pruner(self.settings, self.clock, owner, self.adapters, self.liveness)
        error: Exception | None = None
        try:
            parts.pruner.run_cycle()
        except Exception as exc:
            error = exc
        finally:
            parts.close()
            self.gone.add(owner)
        new = self._sync_log()
        self._count("contenders refused" if live else "contenders free")
        self.outcomes.append(f"{owner}: {'ok' if error is None else type(error).__name__}")
        if not live or holder is None:
            return
        took = [
            e
            for e in new
            if (event_kind(e) == "PhaseLock.Locked" and e.owner == owner)
            or (event_kind(e) == "PhaseLock.Expired" and e.taken_over_by == owner)
        ]
        if took:
            raise LockViolation(
                [
                    f"{owner} took the lock at {now} from {holder.owner}, which is running and "
                    f"holds it until {holder.expires_at}"
                ]
            )
        problems = []
        if not _chain_has(error, LockContendedError):
            problems.append(
                f"{owner} should get LockContendedError from {holder.owner}'s live lock, got "
                f"{'success' if error is None else f'{type(error).__name__}: {error}'}"
            )
        if new:
            kinds = ", ".join(event_kind(e) for e in new)
            problems.append(f"{owner} was refused the lock yet appended {len(new)}: {kinds}")
        if problems:
            raise ContentionViolation(problems)

    @precondition(lambda self: self.config.clock)
    @rule(jump=st.sampled_from(("a second", "past the lock timeout", "past max snapshot age")))
    def clock_moves(self, jump: str) -> None:
        cfg = self.config
        ms = {
            "a second": 1_000,
            "past the lock timeout": cfg.lock_timeout_ms + 1,
            "past max snapshot age": cfg.max_snapshot_age_ms + 1,
        }[jump]
        self.clock.advance(ms=ms)

    @precondition(lambda self: self.config.faults)
    @rule(spec=faults())
    def an_operation_fails(self, spec: FaultSpec) -> None:
        self.plan.arm(spec)
        self._count("faults armed")

    @precondition(lambda self: self.config.faults)
    @rule(how=st.sampled_from(("flip a byte", "truncate", "delete")))
    def a_reach_set_file_is_corrupted(self, how: str) -> None:
        files = sorted(
            (self.data_dir / "reach").glob("reach-*"), key=lambda p: (p.stat().st_mtime_ns, p.name)
        )
        if not files:
            return
        target = files[-1]
        data = target.read_bytes()
        if how == "delete" or not data:
            target.unlink()
        elif how == "truncate":
            target.write_bytes(data[: len(data) // 2])
        else:
            target.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
        self._count("reach sets corrupted")

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        self._count("invariant checks")
        self._sync_log()
        assert_invariants(self.store, self.fold, runner=self.runner)

    # --- the end: the writer stops, clean cycles run, garbage must be gone --------------------

    def finish(self) -> None:
        """Stops faults, lets the pruner finish, runs cycles until `final_cycles` in a row
        succeed, then checks that no garbage is left and that the audit has every deletion."""
        cfg = self.config
        self.plan.disarm()
        process = self._pruner()
        if process.paused_at is not None:
            self._record(process.run_cycle())
        clean = 0
        errors: list[str] = []
        report: CycleReport | None = None
        for _ in range(cfg.final_attempts):
            outcome = self._pruner().run_cycle()
            self._record(outcome)
            self.invariants_hold()
            if outcome.error is None:
                clean, report = clean + 1, outcome.report
                if clean == cfg.final_cycles:
                    break
            else:
                clean = 0
                errors.append(outcome.describe())
        if clean < cfg.final_cycles or report is None:
            raise LivenessViolation(
                [
                    f"{cfg.final_cycles} clean cycles in a row never ran after the writer stopped",
                    *errors[-3:],
                ]
            )
        since = max(0, report.latest_order - cfg.protection_orders)
        problems = garbage_violations(self.store, since) if cfg.check_garbage else []
        if problems:
            raise LivenessViolation(problems)
        lost = unaudited_deletions(self.fold, self.ever_stored, self.store)
        if lost:
            raise AuditViolation(lost)

    def teardown(self) -> None:
        try:
            if sys.exc_info()[0] is None:  # a step failed: report that, not a consequence
                self.finish()
        finally:
            self.close()


def pruning_machine(
    adapters: Adapters | None = None,
    config: MachineConfig | None = None,
    *,
    name: str = "PruningMachine",
    base: type[PruningMachine] = PruningMachine,
) -> type[PruningMachine]:
    """A PruningMachine subclass over `adapters` with `config`; run it with Hypothesis'
    `run_state_machine_as_test(machine, settings=...)` or expose `machine.TestCase`."""
    attrs: dict[str, Any] = {
        "adapters": adapters or base.adapters,
        "config": config or base.config,
        "__module__": base.__module__,
    }
    return cast(type[PruningMachine], type(name, (base,), attrs))
