"""Imports point inward (DESIGN.md, Layout): domain/ touches no storage, no clock and no random
ids, and projections/ never reaches into infrastructure/."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BANNED_IN_DOMAIN = (
    "sqlite3",
    "msgpack",
    "time",
    "eventsourcing.persistence",
    "eventsourcing.sqlite",
    "eventsourcing.postgres",
    "eventsourcing.application",
    "infrastructure",
    "projections",
)
# Calls that read the clock or make a random id: time and ids must arrive as arguments.
BANNED_CALLS = {"datetime.now", "datetime.utcnow", "datetime.today", "date.today", "uuid4"}


@dataclass(frozen=True)
class Violation:
    where: str
    what: str


def _banned(module: str, banned: tuple[str, ...]) -> bool:
    return any(module == b or module.startswith(b + ".") for b in banned)


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        base = func.value
        prefix = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
        return f"{prefix}.{func.attr}"
    return ""


def violations(source: str, where: str, banned: tuple[str, ...], calls: bool) -> list[Violation]:
    found: list[Violation] = []
    for node in ast.walk(ast.parse(source)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            if calls and node.module == "uuid":
                modules += [a.name for a in node.names if a.name == "uuid4"]
        for module in modules:
            if _banned(module, banned) or module == "uuid4":
                found.append(
                    Violation(f"{where}:{getattr(node, 'lineno', 0)}", f"imports {module}")
                )
        if calls and isinstance(node, ast.Call):
            name = _call_name(node)
            if name in BANNED_CALLS or name.endswith(".uuid4"):
                found.append(Violation(f"{where}:{getattr(node, 'lineno', 0)}", f"calls {name}()"))
    return found


def sources(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    return [f for f in files if "__pycache__" not in f.parts]


DOMAIN_FILES = sources("domain")


def test_the_layering_check_finds_what_it_looks_for() -> None:
    bad = (
        "import sqlite3\n"
        "import time as t\n"
        "from eventsourcing.persistence import Mapper\n"
        "from eventsourcing import sqlite\n"
        "from uuid import uuid4\n"
        "from infrastructure.clock import SystemClock\n"
        "x = datetime.now()\n"
        "y = uuid.uuid4()\n"
        "z = datetime.datetime.utcnow()\n"
    )
    whats = {v.what for v in violations(bad, "bad.py", BANNED_IN_DOMAIN, calls=True)}
    assert whats >= {
        "imports sqlite3",
        "imports time",
        "imports eventsourcing.persistence",
        "imports eventsourcing.sqlite",
        "imports uuid4",
        "imports infrastructure.clock",
        "calls datetime.now()",
        "calls uuid.uuid4()",
        "calls datetime.utcnow()",
    }
    fine = "from eventsourcing.domain import Aggregate\nfrom uuid import uuid5\nimport datetime\n"
    assert violations(fine, "fine.py", BANNED_IN_DOMAIN, calls=True) == []


def test_the_domain_package_has_modules_to_check() -> None:
    names = {f.name for f in DOMAIN_FILES}
    assert {"cycle.py", "lock.py", "snapshot.py", "manager.py", "phases.py"} <= names


@pytest.mark.parametrize("path", DOMAIN_FILES, ids=lambda p: p.name)
def test_a_domain_module_touches_no_storage_clock_or_random_ids(path: Path) -> None:
    found = violations(path.read_text(), path.name, BANNED_IN_DOMAIN, calls=True)
    assert found == []


def test_projections_import_nothing_from_infrastructure() -> None:
    found = [
        v
        for path in sources("projections")
        for v in violations(path.read_text(), path.name, ("infrastructure",), calls=False)
    ]
    assert found == []
