"""Two pruner groups (two stores) on one fleet-wide PostgreSQL log: `status`, `replay` and
`audit` read it through PRUNELOG_EVENT_STORE and keep the groups apart with --group."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import postgres_url
from tests.infrastructure.pg_nodes import Node, group_dir, make_template, prunelog

A, B = "fleet-a", "fleet-b"


@dataclass
class Fleet:
    url: str
    a: Path  # the data dir of group fleet-a's node
    b: Path
    a_owner_pid: int
    b_owner_pid: int


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """Two copies of one store (the same hashes), each pruned once by its own group's node, at
    the same time, on one log."""
    url = postgres_url()
    base = tmp_path_factory.mktemp("two-groups")
    template = make_template(base / "template")
    a, b = group_dir(template, base / "a" / "data", A), group_dir(template, base / "b" / "data", B)
    nodes = [Node(a, url, A, "--once"), Node(b, url, B, "--once")]
    for node in nodes:
        assert node.proc.wait(timeout=120) == 0, node.stderr()
    return Fleet(url, a, b, nodes[0].proc.pid, nodes[1].proc.pid)


def command_json(data_dir: Path, url: str, *args: str, codes: tuple[int, ...] = (0,)) -> Any:
    done = prunelog(data_dir, url, *args, "--json")
    assert done.returncode in codes, done.stderr
    return json.loads(done.stdout)


def replayed(data_dir: Path, url: str, *args: str) -> list[dict[str, Any]]:
    done = prunelog(data_dir, url, "replay", "--json", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_status_shows_the_group_of_the_config_or_the_one_asked_for(fleet: Fleet) -> None:
    mine = command_json(fleet.a, fleet.url, "status", codes=(0, 1))
    assert mine["group"] == A
    assert (mine["cycle"]["cycle"], mine["cycle"]["finished"]) == (1, True)
    assert mine["lock"]["holder"] is None
    other = command_json(fleet.a, fleet.url, "status", "--group", B, codes=(0, 1))
    assert other["group"] == B
    assert (other["cycle"]["cycle"], other["cycle"]["finished"]) == (1, True)
    assert other["log_head"] == mine["log_head"]  # one log


def test_status_for_an_unknown_group_fails_and_creates_nothing(fleet: Fleet) -> None:
    unknown = prunelog(fleet.a, fleet.url, "status", "--group", "nope")
    assert unknown.returncode == 2 and "no pruner group 'nope'" in unknown.stderr
    assert replayed(fleet.a, fleet.url, "--group", "nope") == []


def test_replay_with_a_group_shows_that_groups_events_and_no_others(fleet: Fleet) -> None:
    everything = replayed(fleet.a, fleet.url)
    a = replayed(fleet.a, fleet.url, "--group", A)
    b = replayed(fleet.b, fleet.url, "--group", B)
    assert a and b and len(a) + len(b) == len(everything)
    assert {r["aggregate_id"] for r in a}.isdisjoint({r["aggregate_id"] for r in b})
    assert sorted(r["position"] for r in a + b) == [r["position"] for r in everything]
    owners = {
        grp: {r["fields"]["owner"] for r in rows if r["type"] == "PhaseLock.Locked"}
        for grp, rows in ((A, a), (B, b))
    }
    assert all(f":{fleet.a_owner_pid}:" in owner for owner in owners[A])
    assert all(f":{fleet.b_owner_pid}:" in owner for owner in owners[B])
    # --cycle N --group G: group G's cycle N (from any data dir), not the config's group's.
    cycle_one = replayed(fleet.a, fleet.url, "--group", B, "--cycle", "1")
    assert {r["aggregate_id"] for r in cycle_one} <= {r["aggregate_id"] for r in b}
    assert [r for r in cycle_one if r["type"].startswith("PruneCycle.")] == [
        r for r in b if r["type"].startswith("PruneCycle.")
    ]


def test_audit_with_a_group_shows_only_that_groups_deletions(fleet: Fleet) -> None:
    swept_b = replayed(fleet.b, fleet.url, "--group", B, "--type", "NodesSwept")
    node_hash = swept_b[0]["fields"]["hashes"][0]  # the same store: fleet-a deleted it too
    everywhere = command_json(fleet.a, fleet.url, "audit", node_hash)["deletions"]
    assert {d["grp"] for d in everywhere} == {A, B}
    only_b = command_json(fleet.a, fleet.url, "audit", node_hash, "--group", B)["deletions"]
    assert [d["grp"] for d in only_b] == [B]
    batches = command_json(fleet.a, fleet.url, "audit", "--cycle", "1", "--group", B)["batches"]
    assert len(batches) == len(swept_b)
