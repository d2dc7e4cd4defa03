"""Who changed a budget, when, why and what: ``spendstream budgets history ID``.

Every version of a budget carries its actor (the API token's name, or the CLI's
``--actor``, default the OS user) and an optional note. A definition carries them in its
value (BudgetDefinition v2); a deletion is a tombstone, which has no value, so its actor
and note travel as the record's ``actor`` and ``note`` headers (spendstream/producer.py).

Where versions come from: the budgets topic is compacted, so Kafka keeps only the newest
record of each budget for good; older versions, and a tombstone once
``delete.retention.ms`` (a day by default) has passed, may be gone from it. The sink
stores every version it reads in ClickHouse's ``budget_history`` (migration 0011), which
keeps them. The history merges both by topic position (partition, offset) and diffs each
version against the one before, field by field. Everything but the two readers at the
end is pure and tested without Kafka or ClickHouse.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from spendstream.producer import ACTOR_HEADER, NOTE_HEADER
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.money import plain

if TYPE_CHECKING:
    from spendstream.config import Settings

#: the fields a version's definition shows and diffs, in this order (not budget_id, which
#: never changes, nor updated_at, actor and note, which every version has anew)
FIELDS = (
    "name", "parent_id", "limit", "currency", "period", "timezone", "custom_start",
    "custom_end", "scope", "thresholds", "allocations", "owner",
)  # fmt: skip
#: fields whose value is a map: a change shows per key (``scope.team``)
MAP_FIELDS = ("scope", "allocations")
COMPACTION_NOTE = (
    "the budgets topic is compacted: Kafka keeps each budget's newest record, so older "
    "versions (and deletions older than the topic's delete.retention.ms) may be gone from "
    "it; ClickHouse's budget_history keeps every version the sink stored"
)


def default_actor() -> str:
    """The OS user running the CLI; ``uid-N`` (or ``unknown``) when it has no name, as in
    a container run with a bare uid and no USER or LOGNAME."""
    try:
        name = getpass.getuser()
    except Exception:  # KeyError (no passwd entry) or OSError, depending on the platform
        name = ""
    if name:
        return name
    getuid = getattr(os, "getuid", None)
    return f"uid-{getuid()}" if getuid is not None else "unknown"


def _plain(value: Any) -> Any:
    """A definition value as stable JSON types: exact decimal strings (``100``, never
    ``100.000000000``), ISO times in UTC; the same whether it came from Avro or ClickHouse."""
    if isinstance(value, Decimal):
        return plain(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def definition_of(budget: BudgetDefinition) -> dict[str, Any]:
    """What a version defines, as JSON-ready values (the sink stores the same dict)."""
    data = budget.model_dump(mode="python")
    return {name: _plain(data[name]) for name in FIELDS}


@dataclass(frozen=True)
class BudgetVersion:
    """One record of a budget: a definition, or a deletion (``definition`` None)."""

    budget_id: str
    at: datetime
    actor: str | None
    note: str | None
    definition: dict[str, Any] | None
    partition: int | None = None
    offset: int | None = None
    #: where it was found: "topic", "clickhouse" or both
    sources: tuple[str, ...] = ()

    @property
    def deleted(self) -> bool:
        return self.definition is None


def _header(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> str | None:
    for key, raw in headers or ():
        if key == name and raw:
            return raw.decode("utf-8", errors="replace")
    return None


def version_from_record(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    timestamp_ms: int | None,
    partition: int | None = None,
    offset: int | None = None,
) -> BudgetVersion:
    """A version from a budgets-topic record. A definition's actor and note are in its
    value (the headers fill in for a value written before v2); a tombstone's are only in
    its headers, and its time is the record's timestamp."""
    budget_id = key.decode("utf-8", errors="replace") if key else ""
    if value is None:
        at = datetime.fromtimestamp((timestamp_ms or 0) / 1000, UTC)
        return BudgetVersion(budget_id, at, _header(headers, ACTOR_HEADER),
                             _header(headers, NOTE_HEADER), None, partition, offset,
                             ("topic",))  # fmt: skip
    budget = BudgetDefinition.decode(value)
    return BudgetVersion(
        budget.budget_id,
        budget.updated_at.astimezone(UTC),
        budget.actor or _header(headers, ACTOR_HEADER),
        budget.note or _header(headers, NOTE_HEADER),
        definition_of(budget),
        partition,
        offset,
        ("topic",),
    )


def _legacy_definition(row: dict[str, Any]) -> dict[str, Any]:
    """What a ClickHouse row stored before migration 0011 (no ``definition`` column) tells
    of a version: every field but allocations and owner."""
    thresholds = json.loads(row.get("thresholds") or "[]")
    for tier in thresholds:
        tier["percent"] = plain(Decimal(str(tier["percent"])))
    return {
        "name": row["name"],
        "parent_id": row["parent_id"] or None,
        "limit": _plain(Decimal(str(row["limit"]))),
        "currency": row["currency"],
        "period": row["period"],
        "timezone": row["timezone"],
        "custom_start": _plain(row.get("custom_start")),
        "custom_end": _plain(row.get("custom_end")),
        "scope": json.loads(row.get("scope") or "{}"),
        "thresholds": thresholds,
    }


def version_from_row(row: dict[str, Any]) -> BudgetVersion:
    """A version from a row of ClickHouse's ``budget_history``."""
    at = row["updated_at"]
    if isinstance(at, datetime) and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    definition: dict[str, Any] | None = None
    if not row["deleted"]:
        text = row.get("definition") or ""
        definition = json.loads(text) if text else _legacy_definition(row)
    return BudgetVersion(row["budget_id"], at, row.get("actor") or None,
                         row.get("note") or None, definition, int(row["_partition"]),
                         int(row["_offset"]), ("clickhouse",))  # fmt: skip


def merge_versions(*sources: Iterable[BudgetVersion]) -> list[BudgetVersion]:
    """One list of versions, oldest first, each once: the same topic position found in
    several sources is one version (the first source's record, the others' names added,
    a missing actor or note filled in). Versions of one budget share a partition (the key
    decides it), so the offset orders them; across partitions (the topic was given more
    partitions) their time does."""
    merged: dict[tuple[int | None, int | None] | int, BudgetVersion] = {}
    for index, source in enumerate(sources):
        for n, version in enumerate(source):
            where: tuple[int | None, int | None] | int = (version.partition, version.offset)
            if version.offset is None:
                where = hash((index, n))  # no position: cannot be matched, keep it
            known = merged.get(where)
            if known is None:
                merged[where] = version
                continue
            merged[where] = BudgetVersion(
                known.budget_id, known.at, known.actor or version.actor,
                known.note or version.note, known.definition, known.partition, known.offset,
                tuple(dict.fromkeys(known.sources + version.sources)),
            )  # fmt: skip
    versions = list(merged.values())
    if len({v.partition for v in versions}) <= 1 and all(v.offset is not None for v in versions):
        return sorted(versions, key=lambda v: v.offset or 0)
    return sorted(versions, key=lambda v: (v.at, v.offset or 0))


@dataclass(frozen=True)
class Change:
    """One field that differs between two versions (``None``: not set)."""

    field: str
    old: Any
    new: Any


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Field-level changes from ``old`` to ``new``; maps (scope, allocations) per key. A
    field one of them does not know (a version stored before it was recorded) is left out:
    it cannot be told whether it changed."""
    changes: list[Change] = []
    names = [f for f in FIELDS if f in old or f in new]
    names += sorted((set(old) | set(new)) - set(FIELDS))
    for name in names:
        if name not in old or name not in new or old[name] == new[name]:
            continue
        before, after = old[name], new[name]
        if name in MAP_FIELDS and isinstance(before, dict) and isinstance(after, dict):
            for key in sorted(set(before) | set(after)):
                if before.get(key) != after.get(key):
                    changes.append(Change(f"{name}.{key}", before.get(key), after.get(key)))
            continue
        changes.append(Change(name, before, after))
    return changes


def show(name: str, value: Any) -> str:
    """A value as a person reads it: ``50% notify, 90% throttle``, ``ml, research``."""
    if value is None or value == [] or value == {}:
        return "(none)"
    if name == "thresholds" and isinstance(value, list):
        return ", ".join(
            f"{t.get('percent')}% {t.get('action', 'notify')}"
            + (f" -> {t['downgrade_to']}" if t.get("downgrade_to") else "")
            for t in value
        )
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={show(k, v)}" for k, v in value.items())
    return str(value)


def describe(change: Change) -> str:
    base = change.field.split(".", 1)[0]
    return f"{change.field} {show(base, change.old)} -> {show(base, change.new)}"


def summary(definition: dict[str, Any]) -> list[str]:
    """The lines that say what a first version defines."""
    lines = [f"{definition.get('name')}: limit {definition.get('limit')} "
             f"{definition.get('currency')} {definition.get('period')}"]  # fmt: skip
    for name in ("parent_id", "scope", "thresholds", "allocations", "owner"):
        if definition.get(name):
            lines.append(f"{name} {show(name, definition[name])}")
    return lines


@dataclass(frozen=True)
class HistoryEntry:
    number: int
    version: BudgetVersion
    #: first (the oldest version known), changed, unchanged (applied again as it was),
    #: deleted, recreated (after a deletion; the changes are against the last definition)
    kind: str
    changes: list[Change] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What changed, one line each."""
        definition = self.version.definition
        if self.kind == "deleted":
            return ["deleted"]
        if self.kind == "first" and definition is not None:
            return summary(definition)
        if self.kind == "unchanged":
            return ["applied again, no field changed"]
        head = ["recreated after its deletion"] if self.kind == "recreated" else []
        return head + [describe(c) for c in self.changes]


def history(versions: Sequence[BudgetVersion]) -> list[HistoryEntry]:
    """Each version with what it changed against the definition before it."""
    entries: list[HistoryEntry] = []
    last: dict[str, Any] | None = None
    deleted_since = False
    for number, version in enumerate(versions, start=1):
        new = version.definition
        if new is None:
            entries.append(HistoryEntry(number, version, "deleted"))
            deleted_since = True
            continue
        if last is None:
            entries.append(HistoryEntry(number, version, "first"))
        else:
            changes = diff(last, new)
            kind = "recreated" if deleted_since else ("changed" if changes else "unchanged")
            entries.append(HistoryEntry(number, version, kind, changes))
        last, deleted_since = new, False
    return entries


def history_json(budget_id: str, entries: Sequence[HistoryEntry], notes: Sequence[str]) -> Any:
    """``budgets history --json``: every version, oldest first; values as JSON strings."""
    return {
        "budget_id": budget_id,
        "versions": [
            {
                "version": e.number,
                "at": e.version.at.astimezone(UTC).isoformat(),
                "actor": e.version.actor,
                "note": e.version.note,
                "kind": e.kind,
                "changes": [{"field": c.field, "old": c.old, "new": c.new} for c in e.changes],
                "definition": e.version.definition,
                "partition": e.version.partition,
                "offset": e.version.offset,
                "from": list(e.version.sources),
            }
            for e in entries
        ],
        "notes": list(notes),
    }


def history_table(budget_id: str, entries: Sequence[HistoryEntry]) -> Any:
    """The rich table ``budgets history`` prints: one row per version."""
    from rich.table import Table

    table = Table("#", "time (UTC)", "actor", "what changed", "note",
                  title=f"history of {budget_id}", show_lines=True)  # fmt: skip
    for e in entries:
        table.add_row(str(e.number), e.version.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                      e.version.actor or "(unknown)", "\n".join(e.lines()),
                      e.version.note or "")  # fmt: skip
    return table


# --- readers (Kafka, ClickHouse) -------------------------------------------------------------
def topic_versions(settings: Settings, budget_id: str) -> tuple[list[BudgetVersion], list[str]]:
    """The versions of ``budget_id`` still on the budgets topic, and what could not be read."""
    from spendstream.readback import read_records

    versions: list[BudgetVersion] = []
    problems: list[str] = []
    key = budget_id.encode()
    for record in read_records(settings, settings.topics.budgets, key=key):
        try:
            versions.append(version_from_record(record.key, record.value, record.headers,
                                                record.timestamp_ms, record.partition,
                                                record.offset))  # fmt: skip
        except Exception as exc:  # a foreign or corrupt record: say so, show the rest
            problems.append(f"record at {record.partition}:{record.offset} of "
                            f"{settings.topics.budgets} not readable: {exc}")  # fmt: skip
    return versions, problems


HISTORY_SQL = (
    "SELECT budget_id, deleted, updated_at, actor, note, definition, name, parent_id, "
    "`limit`, currency, period, timezone, scope, thresholds, custom_start, custom_end, "
    "_partition, _offset FROM budget_history FINAL WHERE budget_id = {b:String} "
    "ORDER BY _partition, _offset"
)


def warehouse_versions(
    settings: Settings, budget_id: str
) -> tuple[list[BudgetVersion], str | None]:
    """The versions ClickHouse's ``budget_history`` holds, or why none could be read (no
    ClickHouse data yet, a server that does not answer): the history then says so and
    shows the topic's versions."""
    from spendstream.sinks.warehouse import open_warehouse

    try:
        warehouse = open_warehouse(settings)
        try:
            rows = warehouse.query(HISTORY_SQL, parameters={"b": budget_id}).as_dicts()
        finally:
            warehouse.close()
    except Exception as exc:  # any failure here only narrows the history: report it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [], first[:300]
    return [version_from_row(row) for row in rows], None
