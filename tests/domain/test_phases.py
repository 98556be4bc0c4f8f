from __future__ import annotations

import pytest

from domain.errors import UnknownPhaseError
from domain.phases import PHASE_ORDER, PHASE_TABLE, STATES, PrunePhase


@pytest.mark.parametrize(
    ("name", "phase"),
    [
        ("BuildReach", PrunePhase.BUILD_REACH),
        ("build_reach", PrunePhase.BUILD_REACH),
        ("build-reach", PrunePhase.BUILD_REACH),
        ("BUILD-REACH", PrunePhase.BUILD_REACH),
        ("SweepExpired", PrunePhase.SWEEP_EXPIRED),
        ("sweep_expired", PrunePhase.SWEEP_EXPIRED),
        ("incremental-sweep", PrunePhase.INCREMENTAL_SWEEP),
        (PrunePhase.INCREMENTAL_SWEEP, PrunePhase.INCREMENTAL_SWEEP),
    ],
)
def test_parse_accepts_the_camel_snake_and_kebab_spellings_of_a_phase(
    name: str | PrunePhase, phase: PrunePhase
) -> None:
    assert PrunePhase.parse(name) is phase


@pytest.mark.parametrize("name", ["sweep", "BuildReachX", "", "Idle", "build reach"])
def test_parse_of_an_unknown_name_raises_unknown_phase_error_listing_the_valid_names(
    name: str,
) -> None:
    with pytest.raises(UnknownPhaseError) as excinfo:
        PrunePhase.parse(name)
    message = str(excinfo.value)
    assert repr(name) in message
    for phase in PrunePhase:
        assert phase.value in message


def test_an_unknown_phase_error_is_also_a_value_error_for_callers_that_expect_one() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        PrunePhase.parse("nope")


def test_a_phase_prints_as_its_spec_name() -> None:
    assert [str(p) for p in PrunePhase] == ["BuildReach", "SweepExpired", "IncrementalSweep"]


def test_every_state_and_trigger_in_the_phase_order_table_is_a_known_state() -> None:
    for row in PHASE_ORDER:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        assert set(sources) <= set(STATES), row
        assert row["dest"] is None or row["dest"] in STATES, row


def test_the_table_allows_only_build_reach_from_idle() -> None:
    assert PHASE_TABLE.allowed("Idle", {"phase_completed": False}) == ["start_build_reach"]
