"""The legal phase order, declared once as data and enforced with `transitions`."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from transitions import Machine

from domain.errors import IllegalPhaseOrderError, UnknownPhaseError


class PrunePhase(StrEnum):
    """The three phases of a prune cycle."""

    BUILD_REACH = "BuildReach"
    SWEEP_EXPIRED = "SweepExpired"
    INCREMENTAL_SWEEP = "IncrementalSweep"

    @classmethod
    def parse(cls, name: str | PrunePhase) -> PrunePhase:
        """Accepts `BuildReach`, `build_reach` or `build-reach`, whatever the case."""
        if isinstance(name, PrunePhase):
            return name
        wanted = str(name).replace("_", "").replace("-", "").lower()
        for phase in cls:
            if phase.value.lower() == wanted:
                return phase
        valid = ", ".join(p.value for p in cls)
        raise UnknownPhaseError(f"unknown phase {name!r}; expected one of: {valid}")

    def __str__(self) -> str:
        return self.value


IDLE: Final = "Idle"
FAILED: Final = "Failed"
RECOVERING: Final = "Recovering"
ROLLED_BACK: Final = "RolledBack"
RUNNING: Final = tuple(p.value for p in PrunePhase)

STATES: Final = (IDLE, *RUNNING, FAILED, RECOVERING, ROLLED_BACK)

# The whole phase order. One row per trigger; nothing else in the code decides what may follow
# what. A cycle is a fresh aggregate, so "Idle" is both where it starts and where it ends.
# `dest: None` is an internal step that stays in the phase; conditions name cycle flags.
PHASE_ORDER: Final[tuple[dict[str, object], ...]] = (
    {"trigger": "start_build_reach", "source": [IDLE, ROLLED_BACK], "dest": "BuildReach"},
    {"trigger": "progress", "source": list(RUNNING), "dest": None, "unless": "phase_completed"},
    {
        "trigger": "complete_phase",
        "source": list(RUNNING),
        "dest": None,
        "unless": "phase_completed",
    },
    {
        "trigger": "start_sweep_expired",
        "source": "BuildReach",
        "dest": "SweepExpired",
        "conditions": "phase_completed",
    },
    {
        "trigger": "start_incremental_sweep",
        "source": "SweepExpired",
        "dest": "IncrementalSweep",
        "conditions": "phase_completed",
    },
    {
        "trigger": "complete_cycle",
        "source": ["SweepExpired", "IncrementalSweep"],
        "dest": IDLE,
        "conditions": "phase_completed",
    },
    {"trigger": "fail", "source": list(RUNNING), "dest": FAILED},
    {"trigger": "schedule_retry", "source": FAILED, "dest": RECOVERING},
    {"trigger": "resume_build_reach", "source": RECOVERING, "dest": "BuildReach"},
    {"trigger": "resume_sweep_expired", "source": RECOVERING, "dest": "SweepExpired"},
    {"trigger": "resume_incremental_sweep", "source": RECOVERING, "dest": "IncrementalSweep"},
    {"trigger": "roll_back", "source": [FAILED, RECOVERING], "dest": ROLLED_BACK},
    {"trigger": "give_up", "source": [FAILED, RECOVERING], "dest": FAILED},
)


def start_trigger(phase: PrunePhase) -> str:
    return {
        PrunePhase.BUILD_REACH: "start_build_reach",
        PrunePhase.SWEEP_EXPIRED: "start_sweep_expired",
        PrunePhase.INCREMENTAL_SWEEP: "start_incremental_sweep",
    }[phase]


def resume_trigger(phase: PrunePhase) -> str:
    return "resume_" + start_trigger(phase).removeprefix("start_")


class _Table:
    """Holds the compiled machine. Queries only: no model is mutated, so it is thread-safe."""

    def __init__(self) -> None:
        self.machine = Machine(
            model=None,
            states=list(STATES),
            transitions=[dict(row) for row in PHASE_ORDER],
            initial=IDLE,
            auto_transitions=False,
        )

    def next_state(self, state: str, trigger: str, flags: Mapping[str, bool]) -> str:
        """The state after `trigger`, or IllegalPhaseOrderError. `flags` answer the conditions."""
        for candidate in self.machine.get_transitions(trigger=trigger, source=state):
            conditions = candidate.conditions
            if all(bool(flags.get(str(c.func), False)) == c.target for c in conditions):
                return state if candidate.dest is None else str(candidate.dest)
        allowed = ", ".join(self.allowed(state, flags)) or "nothing"
        raise IllegalPhaseOrderError(
            f"trigger {trigger!r} is not legal in state {state}; allowed now: {allowed}"
        )

    def allowed(self, state: str, flags: Mapping[str, bool]) -> list[str]:
        out = []
        for trigger in sorted(self.machine.get_triggers(state)):
            for candidate in self.machine.get_transitions(trigger=trigger, source=state):
                if all(
                    bool(flags.get(str(c.func), False)) == c.target for c in candidate.conditions
                ):
                    out.append(trigger)
                    break
        return out


PHASE_TABLE: Final = _Table()
