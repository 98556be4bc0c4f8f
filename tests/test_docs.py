"""Docs that cannot drift from the code.

- docs/events.md is generated here from the aggregates' nested event classes in domain/.
- The phase diagram in docs/architecture.md must say exactly what domain/phases.py's
  PHASE_ORDER says.
- docs/operations.md may name only `prunelog` commands and flags that exist.

After changing an event or the phase table, regenerate both docs with:

    PRUNELOG_REGEN_DOCS=1 python -m pytest tests/test_docs.py
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import os
import pkgutil
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from eventsourcing.domain import Aggregate, CanMutateAggregate

import domain
from domain.health import HealthMonitor
from domain.phases import PHASE_ORDER
from infrastructure.cli import cli
from infrastructure.topics import TOPICS
from projections.models import ALL

ROOT = Path(__file__).resolve().parents[1]
EVENTS_MD = ROOT / "docs" / "events.md"
ARCHITECTURE_MD = ROOT / "docs" / "architecture.md"
OPERATIONS_MD = ROOT / "docs" / "operations.md"
REGEN_ENV = "PRUNELOG_REGEN_DOCS"
REGEN_HINT = f"{REGEN_ENV}=1 python -m pytest tests/test_docs.py"

# The catalog lists aggregates in the order a cycle meets them; any new one goes last.
LIFECYCLE = ("Snapshot", "PhaseLock", "PruneCycle", "Recovery")

# The envelope the eventsourcing library puts on every event (Created events also carry
# originator_topic). Names and types are read from the library; these are the meanings.
ENVELOPE_MEANINGS = {
    "originator_id": "the aggregate's id (a uuid5 of the group and the aggregate's number)",
    "originator_version": (
        "the aggregate's version after this event; two appends of one version conflict, "
        "which is what makes the phase lock exclusive"
    ),
    "timestamp": (
        "when the event object was made; `prunelog replay --since/--until/--at TIME` filter on it"
    ),
    "originator_topic": (
        "Created events only: the aggregate's class; a replay accepts only prunelog's own "
        "aggregates here"
    ),
}

# One line per event. An event without an entry here uses its class's own docstring, and
# one with neither fails test_every_event_has_a_one_line_meaning. A class docstring is shown
# beside the entry too (it often says something else, such as how the event was versioned).
MEANINGS = {
    "Snapshot.Created": (
        "The cycle's snapshot S, read from the state store in one read transaction, with the "
        "integrity hash over all its other fields; appended atomically with "
        "`PhaseLock.Locked` (and `Snapshot.Validated` when validation passes)."
    ),
    "Snapshot.Validated": (
        "Every check in `checks` passed (`internal_consistency`, `age`, `chain_state`)."
    ),
    "Snapshot.Invalidated": (
        "The snapshot may never be used again: recovery found it tampered, off-chain, its "
        "reach set corrupt, or a sweep on it kept failing."
    ),
    "Snapshot.Expired": (
        "An explicit validation (`AtomicSnapshotManager.validate_snapshot`) found the "
        "snapshot older than `max_snapshot_age_ms` and nothing else wrong."
    ),
    "Snapshot.ReachBuilt": (
        "BuildReach persisted the reach set: how many nodes it marked and the blake2b digest "
        "of the file that every sweep of this snapshot must load."
    ),
    "PhaseLock.Created": "The pruner group's lock exists (appended once, by the first node).",
    "PhaseLock.Locked": (
        "`owner` holds the group's lock for `phase` on `snapshot_id` until `at` + `timeout_ms`."
    ),
    "PhaseLock.Renewed": (
        "`owner`, still working on `phase`, extended its lock to `at` + the lock's timeout "
        "(once half the timeout has passed), so a live holder is never taken over."
    ),
    "PhaseLock.Released": (
        "`owner` let go: at the end of a cycle, when handing over to its own next phase, or "
        "after giving up."
    ),
    "PhaseLock.Expired": (
        "A holder past its timeout, or one whose process has exited, lost the lock; "
        "`taken_over_by` names the new holder when this is a takeover."
    ),
    "PruneCycle.Created": "Cycle `cycle_no` of `group` begins, on snapshot `snapshot_id`.",
    "PruneCycle.PhaseStarted": "A phase begins on the cycle's snapshot (trigger `start_*`).",
    "PruneCycle.PhaseProgressed": (
        "A resumable checkpoint inside the running phase (SweepExpired records "
        "`swept_through_order`)."
    ),
    "PruneCycle.NodesSwept": (
        "One guarded-delete batch committed in the state store: what it deleted (every hash), "
        "the count and the bytes freed. The audit is built from these."
    ),
    "PruneCycle.BatchRecovered": (
        "A batch the store deleted whose `NodesSwept` never reached the log, found in the "
        "sweep journal after the cycle had moved on; audited the same way, moves no phase."
    ),
    "PruneCycle.PhaseCompleted": (
        "The running phase finished; `stats` holds visited, deleted, bytes_freed, "
        "kept_by_guard, roots and seconds."
    ),
    "PruneCycle.PhaseFailed": (
        "An attempt of the phase failed (`error_type` `Interrupted` when startup found it cut "
        "short by a crash)."
    ),
    "PruneCycle.RetryScheduled": (
        "The failed phase will run again after `delay_ms` (exponential backoff); `attempt` "
        "counts from 2."
    ),
    "PruneCycle.PhaseResumed": "The failed phase runs again, on the same snapshot.",
    "PruneCycle.RolledBack": (
        "The cycle drops its progress and goes back to BuildReach on the fresh snapshot "
        "`new_snapshot_id`."
    ),
    "PruneCycle.RecoveryExhausted": (
        "Retries and rollbacks could not finish the cycle: it ends in Failed and deletes "
        "nothing more."
    ),
    "PruneCycle.Completed": "Every phase of the cycle finished; the cycle accepts nothing more.",
    "Recovery.Created": "The pruner group's recovery ledger exists.",
    "Recovery.Started": (
        "A snapshot recovery of cycle `cycle_no` began after `error_type` in `phase`."
    ),
    "Recovery.SnapshotRecreated": (
        "Cycle `cycle_no` replaced snapshot `old_snapshot_id` with `new_snapshot_id`."
    ),
    "Recovery.Succeeded": "A cycle that needed a snapshot recovery completed.",
    "Recovery.Exhausted": "Recovery of cycle `cycle_no` gave up in `phase`.",
    "Recovery.SnapshotCreationFailed": (
        "One attempt to create a snapshot failed; more than 3 in a row raise the "
        "PrunerSnapshotCreationFailures alert."
    ),
    "Recovery.ValidationRecorded": (
        "The outcome of `prunelog validate`: one `{check, status, message}` per check."
    ),
}


# --- reading the code ---------------------------------------------------------------------


def domain_aggregates() -> list[type[Aggregate]]:
    """Every Aggregate subclass defined in a module of domain/, in LIFECYCLE order."""
    found: list[type[Aggregate]] = []
    for info in pkgutil.iter_modules(domain.__path__):
        module = importlib.import_module(f"domain.{info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Aggregate)
                and value.__module__ == module.__name__
            ):
                found.append(value)
    rank = {name: i for i, name in enumerate(LIFECYCLE)}
    return sorted(found, key=lambda a: (rank.get(a.__name__, len(rank)), a.__name__))


def event_classes(aggregate: type[Aggregate]) -> list[type[CanMutateAggregate[Any]]]:
    """The aggregate's nested event classes (not its `Event` base), in the order its methods
    apply them (`@event` on `__init__` and on the event methods), so the catalog reads in
    lifecycle order however an event class is declared. Classes no method applies go last."""
    classes = {
        name: value
        for name, value in vars(aggregate).items()
        if name != "Event" and isinstance(value, type) and issubclass(value, CanMutateAggregate)
    }
    applied: list[str] = []
    for value in vars(aggregate).values():
        given = getattr(value, "given_event_cls", None)
        name = getattr(value, "event_cls_name", None) or getattr(given, "__name__", None)
        if isinstance(name, str) and name in classes and name not in applied:
            applied.append(name)
    return [classes[n] for n in [*applied, *(n for n in classes if n not in applied)]]


def event_key(aggregate: type[Aggregate], event: type[object]) -> str:
    return f"{aggregate.__name__}.{event.__name__}"


def _envelope(event: type[object]) -> list[dataclasses.Field[object]]:
    base = Aggregate.Created if issubclass(event, Aggregate.Created) else Aggregate.Event
    return list(dataclasses.fields(base))


def own_fields(event: type[object]) -> list[tuple[str, str]]:
    """(name, type) of the fields an event adds to the library's envelope."""
    envelope = {f.name for f in _envelope(event)}
    return [
        (f.name, _type_name(f.type))
        for f in dataclasses.fields(event)  # type: ignore[arg-type]
        if f.name not in envelope
    ]


def _type_name(annotation: object) -> str:
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def _written_doc(cls: type[object]) -> str | None:
    """The docstring someone wrote for this event class (not the one dataclasses makes up)."""
    for klass in cls.__mro__:
        if klass.__qualname__ != cls.__qualname__:
            continue
        doc = klass.__dict__.get("__doc__")
        if doc and not doc.startswith(f"{cls.__name__}("):
            return " ".join(inspect.cleandoc(doc).split())
    return None


def meaning(aggregate: type[Aggregate], event: type[object]) -> str | None:
    return MEANINGS.get(event_key(aggregate, event)) or _written_doc(event)


def class_note(aggregate: type[Aggregate], event: type[object]) -> str | None:
    """The class's own docstring, when it is not already the meaning."""
    doc = _written_doc(event)
    return doc if doc and doc != meaning(aggregate, event) else None


def _aggregate_doc(aggregate: type[Aggregate]) -> str:
    module_doc = sys.modules[aggregate.__module__].__doc__
    doc: str = aggregate.__dict__.get("__doc__") or module_doc or ""
    return " ".join(inspect.cleandoc(doc).split())


def _identity(aggregate: type[Aggregate]) -> str:
    create_id = aggregate.__dict__.get("create_id")
    if create_id is None:
        return "a random id"
    params = list(inspect.signature(create_id.__func__).parameters)
    key = params[0] if len(params) == 1 else "(" + ", ".join(params) + ")"
    return f"one per `{key}`"


def read_models(key: str) -> list[str]:
    """The projections that fold this event (health folds through HealthMonitor)."""
    handler = key.replace(".", "_")
    names = [p.name for p in ALL if hasattr(p, f"on_{handler}")]
    if hasattr(HealthMonitor, f"_on_{handler}"):
        names.append("health")
    return sorted(names)


# --- docs/events.md -----------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_event_catalog() -> str:
    aggregates = domain_aggregates()
    total = sum(len(event_classes(a)) for a in aggregates)
    out = [
        "# Event catalog",
        "",
        "<!-- Generated from the event classes in domain/ by tests/test_docs.py. Do not edit",
        f"     by hand; after changing an event run: {REGEN_HINT} -->",
        "",
        f"The event log is the source of truth. It holds {total} event types of "
        f"{len(aggregates)} aggregates, listed here with their fields as the code declares "
        "them. How they fit together: [architecture.md](architecture.md); how the code uses "
        "them: [design.md](design.md).",
        "",
        "- Events are stored msgpack-encoded under a stable topic "
        "`prunelog:<Aggregate>.<Event>` (`infrastructure/topics.py`). A stored topic that is "
        "not in this catalog is refused, never imported.",
        "- Most events carry `at`: the time from the pruner's clock port, handed in by the "
        "command. Event methods never read a clock, so a replay rebuilds the same state.",
        "- *Read models* names the projections (`projections/models.py`, in "
        "`projections.sqlite`) that fold the event. `health` folds through "
        "`domain/health.py: HealthMonitor`.",
        "",
        "## The envelope",
        "",
        "The eventsourcing library puts these fields on every event; the tables below leave "
        "them out.",
        "",
        "| field | type | meaning |",
        "|---|---|---|",
    ]
    envelope = list(dataclasses.fields(Aggregate.Created))
    for f in envelope:
        out.append(f"| `{f.name}` | `{_type_name(f.type)}` | {ENVELOPE_MEANINGS[f.name]} |")
    out += ["", "## Summary", "", "| aggregate | identity | events |", "|---|---|---|"]
    for agg in aggregates:
        names = ", ".join(f"`{e.__name__}`" for e in event_classes(agg))
        out.append(f"| `{agg.__name__}` | {_identity(agg)} | {names} |")
    for agg in aggregates:
        out += ["", f"## {agg.__name__}", ""]
        out.append(f"`{agg.__module__}.{agg.__name__}`, {_identity(agg)}. {_aggregate_doc(agg)}")
        for event in event_classes(agg):
            key = event_key(agg, event)
            readers = ", ".join(read_models(key)) or "none"
            out += ["", f"### `{key}`", "", meaning(agg, event) or "(no meaning recorded)", ""]
            note = class_note(agg, event)
            if note:
                out += [f"From the class: {note}", ""]
            version = int(getattr(event, "class_version", 1))
            stored = f"Topic `prunelog:{key}`" + (
                f", class version {version}" if version > 1 else ""
            )
            out += [f"{stored}. Read models: {readers}.", ""]
            fields = own_fields(event)
            if fields:
                out += ["| field | type |", "|---|---|"]
                out += [f"| `{name}` | `{_cell(kind)}` |" for name, kind in fields]
            else:
                out.append("No fields beyond the envelope.")
    return "\n".join(out) + "\n"


# --- the phase diagram in docs/architecture.md ---------------------------------------------


def _names(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    raise TypeError(f"unexpected PHASE_ORDER value {value!r}")


def _label(row: dict[str, object]) -> str:
    guards = _names(row.get("conditions")) + [f"not {u}" for u in _names(row.get("unless"))]
    trigger = str(row["trigger"])
    return f"{trigger} [{' and '.join(guards)}]" if guards else trigger


def phase_transitions() -> list[tuple[str, str, str]]:
    """(source, dest, label) for every row and source of PHASE_ORDER; `dest: None` stays put."""
    out: list[tuple[str, str, str]] = []
    for row in PHASE_ORDER:
        for source in _names(row["source"]):
            dest = source if row["dest"] is None else str(row["dest"])
            edge = (source, dest, _label(row))
            if edge not in out:
                out.append(edge)
    return out


def phase_diagram() -> str:
    lines = ["stateDiagram-v2", "    [*] --> Idle"]
    lines += [f"    {s} --> {d}: {label}" for s, d, label in phase_transitions()]
    return "\n".join(lines)


MERMAID_BLOCK = re.compile(r"```mermaid\n(.*?)```", re.DOTALL)
TRANSITION = re.compile(r"^\s*([A-Za-z_]\w*)\s*-->\s*([A-Za-z_]\w*)\s*:\s*(.+?)\s*$")


def state_diagrams(markdown: str) -> list[str]:
    return [b for b in MERMAID_BLOCK.findall(markdown) if b.lstrip().startswith("stateDiagram")]


def parse_transitions(diagram: str) -> set[tuple[str, str, str]]:
    """`A --> B: label` lines; the `[*]` start marker and anything else are skipped."""
    found: set[tuple[str, str, str]] = set()
    for line in diagram.splitlines():
        match = TRANSITION.match(line)
        if match:
            source, dest, label = match.groups()
            found.add((source, dest, " ".join(label.split())))
    return found


# --- commands named in docs/operations.md ----------------------------------------------------

# The group's own options, and which of them are bare flags (they take no value).
GLOBAL_OPTIONS = {o for p in cli.params for o in p.opts}
GLOBAL_FLAGS = {o for p in cli.params if getattr(p, "is_flag", False) for o in p.opts}
PENDING_FLAGS: set[tuple[str, str]] = set()
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.DOTALL)


def command_lines(markdown: str) -> Iterator[str]:
    """Every `prunelog ...` written in a code span or a fenced block."""
    fenced = FENCE.findall(markdown)
    for block in fenced:
        yield from (ln.strip() for ln in block.splitlines() if ln.strip().startswith("prunelog"))
    prose = FENCE.sub("", markdown)
    yield from (s.strip() for s in CODE_SPAN.findall(prose) if s.strip().startswith("prunelog "))


def _options(command: click.Command) -> set[str]:
    opts = {"--help"}
    for param in command.params:
        if isinstance(param, click.Option):
            opts.update(param.opts + param.secondary_opts)
    return opts


def unknown_usages(line: str) -> list[str]:
    tokens = line.split("#", 1)[0].split()[1:]
    while tokens and tokens[0].split("=")[0] in GLOBAL_OPTIONS:
        bare = "=" in tokens[0] or tokens[0] in GLOBAL_FLAGS
        tokens = tokens[1:] if bare else tokens[2:]
    if not tokens:
        return []
    command: click.Command | None = cli.commands.get(tokens[0])
    if command is None:
        return [f"{line!r}: no command {tokens[0]!r}"]
    name, rest = tokens[0], tokens[1:]
    if isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            return [f"{line!r}: no command {name} {rest[0]!r}"]
        command, name, rest = sub, f"{name} {rest[0]}", rest[1:]
    known = _options(command) | set(GLOBAL_OPTIONS)
    return [
        f"{line!r}: `prunelog {name}` has no option {flag}"
        for flag in (t.split("=")[0] for t in rest if t.startswith("--"))
        if flag not in known and (name, flag) not in PENDING_FLAGS
    ]


# --- the tests ------------------------------------------------------------------------------


def _regenerate() -> bool:
    return os.environ.get(REGEN_ENV, "") not in ("", "0")


def test_the_event_catalog_matches_the_code() -> None:
    generated = render_event_catalog()
    if _regenerate():
        EVENTS_MD.write_text(generated)
    current = EVENTS_MD.read_text() if EVENTS_MD.exists() else ""
    if current != generated:
        diff = difflib.unified_diff(
            current.splitlines(),
            generated.splitlines(),
            "docs/events.md",
            "generated",
            n=1,
            lineterm="",
        )
        shown = "\n".join(list(diff)[:60])
        raise AssertionError(
            f"docs/events.md is out of date with the event classes in domain/.\n"
            f"Regenerate it with: {REGEN_HINT}\n{shown}"
        )


def test_every_event_has_a_one_line_meaning() -> None:
    missing = [
        event_key(agg, e)
        for agg in domain_aggregates()
        for e in event_classes(agg)
        if not meaning(agg, e)
    ]
    assert not missing, (
        f"give these events a docstring or an entry in MEANINGS in tests/test_docs.py: {missing}"
    )


def test_no_meaning_is_kept_for_an_event_that_no_longer_exists() -> None:
    events = {event_key(a, e) for a in domain_aggregates() for e in event_classes(a)}
    assert set(MEANINGS) <= events, f"stale MEANINGS entries: {sorted(set(MEANINGS) - events)}"


def test_the_catalog_lists_exactly_the_events_the_log_can_store() -> None:
    cataloged = {
        f"prunelog:{event_key(a, e)}" for a in domain_aggregates() for e in event_classes(a)
    }
    assert cataloged == set(TOPICS), (
        f"only in domain/: {sorted(cataloged - set(TOPICS))}; "
        f"only in infrastructure/topics.py: {sorted(set(TOPICS) - cataloged)}"
    )


def test_the_catalog_finds_the_four_aggregates_and_their_created_events() -> None:
    aggregates = domain_aggregates()
    assert [a.__name__ for a in aggregates][:4] == list(LIFECYCLE)
    for agg in aggregates:
        assert "Created" in [e.__name__ for e in event_classes(agg)]
    assert ("hashes", "list[bytes]") in own_fields(TOPICS["prunelog:PruneCycle.NodesSwept"])
    assert ("group", "str") in own_fields(TOPICS["prunelog:Snapshot.Created"])
    assert "originator_topic" not in dict(own_fields(TOPICS["prunelog:Recovery.Created"]))


def test_the_phase_diagram_in_the_architecture_doc_matches_phase_order() -> None:
    text = ARCHITECTURE_MD.read_text()
    diagrams = state_diagrams(text)
    assert len(diagrams) == 1, "docs/architecture.md must hold exactly one stateDiagram"
    if _regenerate():
        text = text.replace(diagrams[0], phase_diagram() + "\n")
        ARCHITECTURE_MD.write_text(text)
        diagrams = state_diagrams(text)
    documented = parse_transitions(diagrams[0])
    expected = set(phase_transitions())
    assert documented == expected, (
        "the phase diagram in docs/architecture.md differs from PHASE_ORDER.\n"
        f"missing: {sorted(expected - documented)}\n"
        f"not in the table: {sorted(documented - expected)}\n"
        f"Regenerate it with: {REGEN_HINT}\nor paste:\n{phase_diagram()}"
    )


def test_the_diagram_reader_takes_transitions_and_skips_the_start_marker() -> None:
    diagram = "stateDiagram-v2\n    [*] --> Idle\n    Idle --> BuildReach:  start  [x]\n"
    assert parse_transitions(diagram) == {("Idle", "BuildReach", "start [x]")}
    assert parse_transitions(phase_diagram()) == set(phase_transitions())


def test_the_phase_table_reads_as_guarded_transitions() -> None:
    edges = set(phase_transitions())
    assert ("Idle", "BuildReach", "start_build_reach") in edges
    assert ("BuildReach", "SweepExpired", "start_sweep_expired [phase_completed]") in edges
    assert ("SweepExpired", "SweepExpired", "progress [not phase_completed]") in edges


def test_the_operations_doc_names_only_commands_and_flags_that_exist() -> None:
    lines = list(command_lines(OPERATIONS_MD.read_text()))
    assert len(lines) > 10, "docs/operations.md should show the commands it explains"
    problems = [p for line in lines for p in unknown_usages(line)]
    assert not problems, "docs/operations.md names what the CLI lacks:\n" + "\n".join(problems)


def test_the_command_check_catches_a_made_up_flag_and_command() -> None:
    assert unknown_usages("prunelog run --once --metrics-port 9477") == []
    assert unknown_usages("prunelog --data-dir /x projections rebuild audit") == []
    assert unknown_usages("prunelog run --no-such-flag")
    assert unknown_usages("prunelog frobnicate")
    assert unknown_usages("prunelog projections nuke")
