"""Read models fed from the log: caught up once and only once, a table corrupted or dropped by
hand is flagged by `status` and repaired by `rebuild`, and tables from another version of
prunelog are rebuilt, never applied on top of."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from infrastructure.runtime import PROJECTIONS_FILE, Runtime, Settings
from projections.runner import ProjectionRunner
from tests.fakes import SMALL_PRUNE, write_chain


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    data = tmp_path / "data"
    write_chain(data / "state.sqlite", 150)
    with Runtime(Settings(data_dir=data, prune=SMALL_PRUNE), owner="node-a") as opened:
        opened.pruner.run_cycle()
        opened.pruner.run_cycle()
        opened.projections().catch_up()
        yield opened


def audit_rows_in_log(rt: Runtime) -> int:
    kinds = ("PruneCycle.NodesSwept", "PruneCycle.BatchRecovered")
    return sum(len(e.hashes) for e in rt.log.events() if type(e).__qualname__ in kinds)


def consistency(runner: ProjectionRunner) -> dict[str, bool | None]:
    return {s.name: s.consistent for s in runner.status()}


def test_a_caught_up_runner_applies_nothing_again_and_agrees_with_a_rebuild(rt: Runtime) -> None:
    runner = rt.projections()
    assert all(n == 0 for n in runner.catch_up().values())
    assert set(consistency(runner).values()) == {True}
    assert runner.rows("SELECT count(*) FROM audit")[0][0] == audit_rows_in_log(rt) > 0


def test_events_appended_later_are_applied_once_from_the_tracked_position(rt: Runtime) -> None:
    runner = rt.projections()
    before = {name: runner.position(name) for name in runner.projections}
    rt.pruner.run_cycle()
    applied = runner.catch_up()
    head = rt.log.head()
    assert all(applied[name] == head - before[name] for name in applied)
    assert runner.rows("SELECT count(*) FROM audit")[0][0] == audit_rows_in_log(rt)
    assert set(consistency(runner).values()) == {True}


@pytest.mark.parametrize(
    "name,vandalism",
    [
        ("locks", "DELETE FROM locks"),
        ("timeline", "UPDATE timeline SET deleted = deleted + 1"),
        ("audit", "DELETE FROM audit WHERE rowid IN (SELECT rowid FROM audit LIMIT 3)"),
        ("snapshots", "UPDATE snapshots SET status = 'invalidated'"),
        ("health", "UPDATE health SET status = 'unhealthy'"),
    ],
)
def test_a_table_edited_by_hand_is_flagged_by_status_and_repaired_by_rebuild(
    rt: Runtime, name: str, vandalism: str
) -> None:
    runner = rt.projections()
    runner.db.execute(vandalism)

    flagged = consistency(runner)
    assert flagged[name] is False
    assert all(ok for other, ok in flagged.items() if other != name)

    runner.rebuild([name])
    assert consistency(runner)[name] is True


def test_a_table_dropped_by_hand_is_flagged_and_rebuild_brings_it_back(rt: Runtime) -> None:
    runner = rt.projections()
    runner.db.execute("DROP VIEW audit_view")
    runner.db.execute("DROP TABLE audit")

    status = {s.name: s for s in runner.status()}
    assert status["audit"].tables_ok is False and status["audit"].ok is False

    runner.rebuild(["audit"])
    assert runner.rows("SELECT count(*) FROM audit")[0][0] == audit_rows_in_log(rt)
    assert consistency(runner)["audit"] is True


def test_tables_from_another_version_are_rebuilt_from_the_start_never_applied_on_top(
    rt: Runtime,
) -> None:
    path = rt.settings.data_dir / PROJECTIONS_FILE
    rt.projections().close()
    rt._projections = None
    with sqlite3.connect(path) as db:  # as if an older prunelog had written these tables
        db.execute("UPDATE schema SET version = version - 1 WHERE name = 'audit'")
        db.execute("UPDATE tracking SET position = 3 WHERE name = 'audit'")

    runner = rt.projections()  # opening notices the version and starts `audit` over
    assert runner.position("audit") == 0
    runner.catch_up()
    assert runner.rows("SELECT count(*) FROM audit")[0][0] == audit_rows_in_log(rt)
    assert set(consistency(runner).values()) == {True}


def test_the_cli_exits_1_on_a_vandalised_projection_and_0_after_rebuilding_it(
    rt: Runtime,
) -> None:
    from click.testing import CliRunner

    from infrastructure.cli import cli

    rt.projections().db.execute("DELETE FROM locks")
    base = ["--data-dir", str(rt.settings.data_dir)]
    (rt.settings.data_dir / "prunelog.toml").write_text(
        f"[prune]\nprotection_orders = {SMALL_PRUNE.protection_orders}\n"
        f"delete_batch_size = {SMALL_PRUNE.delete_batch_size}\n"
    )
    flagged = CliRunner().invoke(cli, [*base, "projections", "status", "--json"])
    assert flagged.exit_code == 1
    assert CliRunner().invoke(cli, [*base, "projections", "rebuild", "locks"]).exit_code == 0
    assert CliRunner().invoke(cli, [*base, "projections", "status"]).exit_code == 0
