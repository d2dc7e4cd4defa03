"""Priced usage on the native paths (priced/2 rows read by ClickHouse, migration 0012;
priced/3 columnar records as one Native block) stores exactly what the decoding path
stores, and what priced/1 records stored, for every payload kind and every column, to the
nano-unit (chDB)."""

from __future__ import annotations

import uuid
from base64 import b64encode
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from spendstream.config import load_settings
from spendstream.schemas import batches
from spendstream.schemas.models import (
    ApifyRun,
    Attributes,
    CustomCost,
    LlmUsage,
    UsageEvent,
    WorkflowRun,
)
from spendstream.sinks.native_ingest import NativeBatch, json_position, position_prefix
from spendstream.sinks.rows import PRICED_COLUMNS, priced_rows
from spendstream.sinks.tables import TABLES, SinkRecord
from spendstream.sinks.warehouse import connect, migrate
from spendstream.sinks.writer import ClickHouseWriter, WriteBatch
from tests.unit.test_price_stage import NOW, outputs, record, stage

ATTRS = Attributes(org="acme", team="ml", project="p", user="u", department="d", session="s",
                   feature="f", tags={"env": "prod", "k": "],["})  # fmt: skip


def events() -> list[UsageEvent]:
    at = NOW - timedelta(minutes=5)
    llm = LlmUsage(provider="anthropic", model="claude-sonnet-4-5", input_tokens=120_000,
                   output_tokens=7_001, cache_read_tokens=50_000, cache_write_tokens=3_000,
                   cache_write_1h_tokens=1_000, reasoning_tokens=11, service_tier="priority")  # fmt: skip
    return [
        UsageEvent(event_id="e-llm", occurred_at=at, source="llm", attributes=ATTRS,
                   payload=llm),
        UsageEvent(event_id="e-batch", occurred_at=at, source="llm",
                   payload=LlmUsage(provider="openai", model="gpt-4o-mini", input_tokens=999,
                                    output_tokens=1, batch=True)),
        UsageEvent(event_id="e-apify", occurred_at=at, source="apify", attributes=ATTRS,
                   payload=ApifyRun(actor_id="apify/web", run_id="r1", status="SUCCEEDED",
                                    compute_units=Decimal("1.234567891"), results=42)),
        UsageEvent(event_id="e-wf", occurred_at=at, source="workflow",
                   payload=WorkflowRun(platform="n8n", workflow_id="w", execution_id="x",
                                       tasks=7, operations=9, duration_ms=1234)),
        UsageEvent(event_id="e-custom", occurred_at=at, source="custom",
                   payload=CustomCost(amount=Decimal("3.141592653"), currency="USD",
                                      category="gpu")),
    ]  # fmt: skip


def priced_v2_record() -> bytes:
    s = stage()
    topics = {"llm": "usage.llm", "apify": "usage.apify", "workflow": "usage.workflow",
              "custom": "usage.custom"}  # fmt: skip
    batch = s.process([record(e, i, topic=topics[e.source]) for i, e in enumerate(events())],
                      NOW)  # fmt: skip
    assert batch.counters["dlq"] == 0, batch.outputs
    rows = [r for out in outputs(batch, "usage.priced") for r in batches.decode(out.value)[1]]
    assert sorted(r[0] for r in rows) == sorted(e.event_id for e in events())
    return batches.encode(batches.PRICED_V2, rows)


def as_priced_v1(value: bytes) -> bytes:
    """The same facts as priced/1 rows (the event as Avro inside JSON), as older workers
    wrote them."""
    by_id = {e.event_id: e for e in events()}
    P2 = batches.P2
    rows = []
    for r in batches.decode(value)[1]:
        event = by_id[r[P2["event_id"]]]
        rows.append([b64encode(event.encode()).decode(), r[P2["cost_nanos"]],
                     r[P2["currency"]], bool(r[P2["priced"]]), r[P2["components"]],
                     r[P2["price_source"]], r[P2["price_version"]], r[P2["origin_topic"]],
                     r[P2["origin_partition"]], r[P2["origin_offset"]], r[P2["priced_at_us"]]])  # fmt: skip
    return batches.encode(batches.PRICED_V1, rows)


@pytest.fixture(scope="module")
def dbs(chdb_dir) -> dict[str, Any]:
    out = {}
    for name in ("native", "decoded", "v1", "columnar"):
        settings = load_settings(clickhouse_dsn=f"chdb://{chdb_dir}",
                                 clickhouse_database=f"pn_{name}_{uuid.uuid4().hex[:6]}")  # fmt: skip
        client = connect(settings)
        migrate(client)
        out[name] = client
    return out


def stored(client: Any) -> list[tuple[Any, ...]]:
    columns = ", ".join(f"`{c}`" for c in PRICED_COLUMNS)
    return [tuple(r) for r in client.query(
        f"SELECT {columns} FROM priced_usage ORDER BY event_id").result_rows]  # fmt: skip


def test_priced_native_path_stores_what_decoding_stores_for_every_kind_and_column(dbs) -> None:
    value = priced_v2_record()
    pos = ("usage.priced", 2, 17)
    table = TABLES["priced_usage"]

    # native: the record's JSON text goes to ClickHouse as it is
    native = NativeBatch(None, position_prefix("usage.priced", 2),
                         json_position("usage.priced", 2), dict(table.native.batch_staging))  # type: ignore[union-attr]  # fmt: skip
    native.add_rows(batches.PRICED_V2, batches.rows_text(value, batches.PRICED_V2), 17, 0)
    batch = WriteBatch(table, [SinkRecord(*pos, None, value)], native=native)
    assert ClickHouseWriter(dbs["native"]).write(batch, "t-native") == []

    # decoded in Python: priced/2, and the same facts as priced/1 records
    decoded = priced_rows(value, pos)
    dbs["decoded"].insert("priced_usage", decoded, column_names=PRICED_COLUMNS)
    v1 = priced_rows(as_priced_v1(value), pos)
    dbs["v1"].insert("priced_usage", v1, column_names=PRICED_COLUMNS)
    assert decoded == v1  # row for row, in Python already

    # columnar: the same rows as priced/3, in two records of one partition (so the block
    # joins records: the cost lines' offsets of the second follow the first's)
    rows = batches.decode(value)[1]
    parts = [
        batches.encode(batches.PRICED_V3, rows[:2]),
        batches.encode(batches.PRICED_V3, rows[2:]),
    ]
    assert [r for part in parts for r in batches.decode(part)[1]] == rows
    columnar = NativeBatch(None, b"", columnar={
        batches.PRICED_V3: ("priced_usage", table.native.columnar[batches.PRICED_V3])},  # type: ignore[union-attr]
        topic="usage.priced", partition=2)  # fmt: skip
    assert [columnar.add_columnar(batches.PRICED_V3, part, 17, i)
            for i, part in enumerate(parts)] == [2, len(rows) - 2]  # fmt: skip
    ((_, target, fmt, _),) = columnar.payloads()
    assert (target, fmt) == ("priced_usage", "Native")
    batch = WriteBatch(table, [SinkRecord(*pos, None, part) for part in parts], native=columnar)
    assert ClickHouseWriter(dbs["columnar"]).write(batch, "t-columnar") == []
    assert priced_rows(parts[0], pos) + priced_rows(parts[1], pos) == decoded

    got = {name: stored(c) for name, c in dbs.items()}
    assert len(got["native"]) == len(events())
    for a, b in zip(got["native"], got["decoded"], strict=True):
        for column, x, y in zip(PRICED_COLUMNS, a, b, strict=True):
            assert x == y, (a[0], column, x, y)
    assert got["decoded"] == got["v1"]
    assert len(got["columnar"]) == len(events())
    for a, b in zip(got["columnar"], got["decoded"], strict=True):
        for column, x, y in zip(PRICED_COLUMNS, a, b, strict=True):
            assert x == y, ("columnar", a[0], column, x, y)
    by_id = {r[0]: dict(zip(PRICED_COLUMNS, r, strict=True)) for r in got["native"]}
    # each payload kind's own columns arrived, money to the nano-unit
    assert by_id["e-apify"]["compute_units"] == Decimal("1.234567891")
    assert by_id["e-apify"]["results"] == 42 and by_id["e-apify"]["actor_id"] == "apify/web"
    assert (by_id["e-wf"]["platform"], by_id["e-wf"]["tasks"]) == ("n8n", 7)
    assert by_id["e-custom"]["category"] == "gpu"
    assert by_id["e-custom"]["cost"] == Decimal("3.141592653")
    assert by_id["e-llm"]["service_tier"] == "priority"
    assert by_id["e-llm"]["cache_write_1h_tokens"] == 1_000
    assert by_id["e-llm"]["tags"] == {"env": "prod", "k": "],["}
    assert by_id["e-batch"]["batch"] == 1
    assert all(r["cost"] == sum(c["amount"] for c in r["components"]) or not r["components"]
               for r in by_id.values())  # fmt: skip
