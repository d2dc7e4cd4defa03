"""Turn decoded Kafka records into ClickHouse rows (pure functions, one per table)."""

from __future__ import annotations

import json
from binascii import a2b_base64
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from spendstream.schemas import batches
from spendstream.schemas.avro import codec
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import (
    AlertAction,
    BudgetAlert,
    DeadLetter,
    from_micros,
)
from spendstream.schemas.money import from_nanos
from spendstream.sources.columns import payload_columns

Position = tuple[str, int, int]
ATTRS = ("org", "team", "project", "user", "department", "session", "feature")

PRICED_COLUMNS = [
    "event_id", "occurred_at", "source", "provider", "model", "operation",
    *ATTRS, "tags",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "images", "cache_write_1h_tokens", "service_tier", "batch",
    "actor_id", "run_id", "platform", "workflow_id", "execution_id", "status",
    "compute_units", "results", "tasks", "operations", "duration_ms", "category",
    "cost", "currency", "priced", "components", "price_source", "price_version",
    "origin_topic", "origin_partition", "origin_offset", "priced_at",
    "_topic", "_partition", "_offset",
]  # fmt: skip


def priced_rows(value: bytes, pos: Position) -> list[list[Any]]:
    """Rows from a usage.priced record: a ``priced/1`` batch (schemas/batches.py; each
    event kept as the Avro bytes it arrived in), or a single PricedUsage written before
    batches existed. These records come from our own workers and were validated there;
    decoding enforces their types, so the hot path reads the decoded values without a
    second pydantic validation."""
    if not batches.is_batch(value):
        return [priced_row(value, pos)]
    version, rows = batches.decode(value)
    if version in (batches.PRICED_V2, batches.PRICED_V3):
        return [priced_v2_row(r, pos) for r in rows]
    if version != batches.PRICED_V1:
        raise batches.BatchFormatError(f"a {version} record on the priced topic")
    events = codec("UsageEvent")
    P = batches.P
    out = []
    for r in rows:
        components = [{"name": n, "quantity": from_nanos(q), "unit": u, "amount": from_nanos(a)}
                      for n, q, u, a in r[P["components"]]]  # fmt: skip
        priced = {
            "cost": from_nanos(r[P["cost_nanos"]]), "currency": r[P["currency"]],
            "priced": bool(r[P["priced"]]), "components": components,
            "price_source": r[P["price_source"]], "price_version": r[P["price_version"]],
            "origin": {"topic": r[P["origin_topic"]], "partition": r[P["origin_partition"]],
                       "offset": r[P["origin_offset"]]},
            "priced_at": from_micros(r[P["priced_at_us"]]),
        }  # fmt: skip
        out.append(priced_row_of(priced, events.decode(a2b_base64(r[P["event"]])), pos))
    return out


def priced_v2_row(r: list[Any], pos: Position) -> list[Any]:
    """Row from a ``priced/2`` row: the event is flattened already (schemas/batches.py), in
    this table's column order; only money and times change type (as migration 0012 does)."""
    components = [(n, from_nanos(q), u, from_nanos(a)) for n, q, u, a in r[38]]
    return [
        r[0], from_micros(r[1]), *r[2:29], from_nanos(r[29]), *r[30:35], from_nanos(r[35]),
        r[36], int(r[37]), components, r[39], r[40], r[41], r[42], r[43], from_micros(r[44]),
        *pos,
    ]  # fmt: skip


def priced_row(value: bytes, pos: Position) -> list[Any]:
    """Row from a single PricedUsage record."""
    p = codec("PricedUsage").decode(value)
    return priced_row_of(p, p["event"], pos)


def priced_row_of(p: dict[str, Any], e: dict[str, Any], pos: Position) -> list[Any]:
    head, tail = payload_columns(e["source"], e["payload"])
    attrs = e["attributes"]
    origin = p["origin"]
    return [
        e["event_id"], e["occurred_at"], e["source"], *head,
        *[attrs[a] or "" for a in ATTRS], attrs["tags"], *tail,
        p["cost"], p["currency"], int(p["priced"]),
        [(c["name"], c["quantity"], c["unit"], c["amount"]) for c in p["components"]],
        p["price_source"], p["price_version"],
        origin["topic"], origin["partition"], origin["offset"], p["priced_at"],
        *pos,
    ]  # fmt: skip


ALLOCATION_COLUMNS = [
    "allocation_id", "event_id", "budget_id", "matched_via", "period_key", "period_start",
    "period_end", "occurred_at", "amount", "currency", "source", "provider", "model",
    "org", "team", "project", "user", "department", "feature", "tags",
    "origin_topic", "origin_partition", "origin_offset", "_topic", "_partition", "_offset",
]  # fmt: skip


def allocation_rows(value: bytes, pos: Position) -> list[list[Any]]:
    """Rows from a cost-allocations record: an ``allocations/1`` batch, or a single Avro
    allocation written before batches existed (the decoding path: the native one leaves
    this to ClickHouse; see priced_rows)."""
    if not batches.is_batch(value):
        return [allocation_row(value, pos)]
    version, rows = batches.decode(value)
    if version not in batches.ALLOCATIONS:
        raise batches.BatchFormatError(f"a {version} record on the allocations topic")
    return [
        [f"{r[0]}/{r[1]}", r[0], r[1], r[2], r[3], from_micros(r[4]), from_micros(r[5]),
         from_micros(r[6]), from_nanos(r[7]), *r[8:], *pos]
        for r in rows
    ]  # fmt: skip


def allocation_row(value: bytes, pos: Position) -> list[Any]:
    """Row from a single CostAllocation record."""
    return allocation_row_of(codec("CostAllocation").decode(value), pos)


def allocation_row_of(a: dict[str, Any], pos: Position) -> list[Any]:
    at = a["attributes"]
    origin = a["origin"]
    return [
        a["allocation_id"], a["event_id"], a["budget_id"], a["matched_via"], a["period_key"],
        a["period_start"], a["period_end"], a["occurred_at"], a["amount"], a["currency"],
        a["source"], a["provider"] or "", a["model"] or "", at["org"] or "", at["team"] or "",
        at["project"] or "", at["user"] or "", at["department"] or "", at["feature"] or "",
        at["tags"], origin["topic"], origin["partition"], origin["offset"], *pos,
    ]  # fmt: skip


ALERT_COLUMNS = [
    "alert_id", "budget_id", "budget_name", "period_key", "kind", "threshold_percent",
    "action", "downgrade_to", "severity", "spent", "limit", "currency", "message",
    "triggered_by", "triggered_at", "projected_total", "_topic", "_partition", "_offset",
]  # fmt: skip


def alert_row(value: bytes, pos: Position) -> list[Any]:
    a = BudgetAlert.from_avro(codec("BudgetAlert").decode(value))
    return [
        a.alert_id, a.budget_id, a.budget_name, a.period_key, a.kind, a.threshold_percent,
        a.action, a.downgrade_to or "", a.severity, a.spent, a.limit, a.currency, a.message,
        a.triggered_by or "", a.triggered_at, a.projected_total, *pos,
    ]  # fmt: skip


BUDGET_COLUMNS = [
    "budget_id", "name", "parent_id", "limit", "currency", "period", "timezone", "scope",
    "thresholds", "deleted", "updated_at", "custom_start", "custom_end",
    "actor", "note", "definition",
    "_topic", "_partition", "_offset",
]  # fmt: skip


def budget_row(
    value: bytes | None,
    pos: Position,
    key: bytes | None = None,
    headers: Sequence[tuple[str, bytes | None]] | None = None,
    timestamp_ms: int | None = None,
) -> list[Any]:
    """A version of a budget (migration 0011 copies every one into ``budget_history``).

    A tombstone is kept as a deleted row: its actor and note come from the record's
    headers, its time from the record's timestamp (a tombstone has no value)."""
    from spendstream.budget_history import definition_of, version_from_record

    if value is None:  # tombstone: keep history, mark deleted
        gone = version_from_record(key, None, headers, timestamp_ms)
        at = gone.at if timestamp_ms is not None else datetime.now(UTC)
        return [gone.budget_id, "", "", Decimal(0), "", "", "", "{}", "[]", 1,
                at, None, None, gone.actor or "", gone.note or "", "", *pos]  # fmt: skip
    b = BudgetDefinition.from_avro(codec("BudgetDefinition").decode(value))
    thresholds = [t.model_dump(mode="json") for t in b.thresholds]
    # a definition written before v2 has no actor: its headers may still say
    actor = b.actor or _header_text(headers, "actor")
    note = b.note or _header_text(headers, "note")
    return [
        b.budget_id, b.name, b.parent_id or "", b.limit, b.currency, b.period, b.timezone,
        json.dumps(b.scope, sort_keys=True), json.dumps(thresholds), 0, b.updated_at,
        b.custom_start, b.custom_end, actor, note,
        json.dumps(definition_of(b), sort_keys=True), *pos,
    ]  # fmt: skip


def _header_text(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> str:
    return next((v.decode(errors="replace") for k, v in headers or () if k == name and v), "")


ACTION_COLUMNS = [
    "alert_id", "budget_id", "action", "actor", "note", "at", "_topic", "_partition", "_offset",
]  # fmt: skip


def action_row(value: bytes, pos: Position) -> list[Any]:
    a = AlertAction.from_avro(codec("AlertAction").decode(value))
    return [a.alert_id, a.budget_id, a.action, a.actor, a.note or "", a.at, *pos]


DLQ_COLUMNS = [
    "origin_topic", "origin_partition", "origin_offset", "event_id", "error_code", "reason",
    "raw_value", "rejected_at", "_topic", "_partition", "_offset",
]  # fmt: skip


def dlq_row(value: bytes, pos: Position) -> list[Any]:
    d = DeadLetter.from_avro(codec("DeadLetter").decode(value))
    raw = (d.value or b"").hex()
    return [
        d.origin.topic, d.origin.partition, d.origin.offset, d.event_id or "", d.error_code,
        d.reason, raw, d.rejected_at, *pos,
    ]  # fmt: skip


DELIVERY_COLUMNS = [
    "alert_id", "budget_id", "channel", "channel_type", "attempt", "outcome", "status_code",
    "latency_ms", "error", "digest", "at", "_topic", "_partition", "_offset",
]  # fmt: skip


def delivery_row(value: bytes, pos: Position) -> list[Any]:
    """Row from an AlertDelivery record (notify's delivery log)."""
    d = codec("AlertDelivery").decode(value)
    return [
        d["alert_id"], d["budget_id"], d["channel"], d["channel_type"], d["attempt"],
        d["outcome"], d["status_code"], d["latency_ms"], d["error"] or "", d["digest"] or "",
        d["at"], *pos,
    ]  # fmt: skip


CONVERSION_COLUMNS = [
    "event_id", "budget_id", "period_key", "occurred_at", "amount", "currency",
    "budget_currency", "rate", "rate_day", "budget_amount", "converted_at",
    "_topic", "_partition", "_offset",
]  # fmt: skip


def conversion_rows(value: bytes, pos: Position) -> list[list[Any]]:
    """Rows of a ``conversions/1`` batch record (the aggregator's currency conversions)."""
    version, rows = batches.decode(value)
    if version != batches.CONVERSIONS_V1:
        raise batches.BatchFormatError(f"a {version} record on the conversions topic")
    return [
        [r[0], r[1], r[2], from_micros(r[3]), from_nanos(r[4]), r[5], r[6], Decimal(r[7]),
         date.fromisoformat(r[8]), from_nanos(r[9]), from_micros(r[10]), *pos]
        for r in rows
    ]  # fmt: skip


FX_RATE_COLUMNS = [
    "day", "base", "quote", "rate", "source", "published_at", "_topic", "_partition", "_offset",
]  # fmt: skip


def fx_rate_rows(value: bytes | None, pos: Position) -> list[list[Any]]:
    if value is None:  # a tombstone: the rate is withdrawn; the table keeps what it had
        return []
    r = codec("FxRate").decode(value)
    return [[r["day"], r["base"], r["quote"], r["rate"], r["source"], r["published_at"], *pos]]
