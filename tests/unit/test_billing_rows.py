"""Billing mode columns of priced_usage (migration 0009): filled from priced batch records
and single PricedUsage records, old records read as standard interactive calls, and the
README's split of batch from interactive spend gives the right figures (chDB)."""

from __future__ import annotations

import io
import re
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import fastavro
import pytest

from spendstream.config import load_settings
from spendstream.schemas.avro import SINGLE_OBJECT_MAGIC, codec, fingerprint, history_versions
from spendstream.schemas.models import (
    Attributes,
    LlmUsage,
    PricedUsage,
    SourcePosition,
    UsageEvent,
)
from spendstream.sinks.rows import PRICED_COLUMNS, priced_row, priced_rows
from spendstream.sinks.warehouse import connect, migrate
from tests.unit.test_price_stage import NOW, outputs, record, stage

D = Decimal
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def call(i: int, **fields) -> UsageEvent:  # type: ignore[no-untyped-def]
    """gpt-4o-mini, 1M prompt tokens and 100k output: $0.21 standard, $0.105 batch."""
    return UsageEvent(
        event_id=f"m{i}", occurred_at=NOW - timedelta(minutes=i), source="llm",
        attributes=Attributes(org="acme", team="ml"),
        payload=LlmUsage(provider="openai", model="gpt-4o-mini", input_tokens=1_000_000,
                         output_tokens=100_000, **fields),
    )  # fmt: skip


def v2_priced(event: UsageEvent, offset: int) -> bytes:
    """A PricedUsage as a worker before LlmUsage v3 wrote it (history v2)."""
    schema = fastavro.parse_schema(history_versions("PricedUsage")[1])
    priced = PricedUsage(event=event, cost=D("0.21"), currency="USD", price_source="old",
                         price_version="old", priced_at=NOW,
                         origin=SourcePosition(topic="usage.llm", partition=1, offset=offset))  # fmt: skip
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, priced.to_avro())
    return SINGLE_OBJECT_MAGIC + fingerprint(schema) + buf.getvalue()


@pytest.fixture(scope="module")
def client(chdb_dir):
    settings = load_settings(clickhouse_dsn=f"chdb://{chdb_dir}",
                             clickhouse_database=f"bill_{uuid.uuid4().hex[:6]}")  # fmt: skip
    client = connect(settings)
    assert "0009" in " ".join(migrate(client))
    events = [call(1), call(2, batch=True), call(3, service_tier="flex"),
              call(4, service_tier="priority"),
              call(5, cache_write_tokens=300, cache_write_1h_tokens=200, batch=True)]  # fmt: skip
    batch = stage().process([record(e, 30 + i) for i, e in enumerate(events)], NOW)
    (priced,) = outputs(batch, "usage.priced")
    rows = priced_rows(priced.value, ("usage.priced", 0, 0))
    rows.append(priced_row(v2_priced(call(6), 99), ("usage.priced", 0, 1)))
    client.insert("priced_usage", rows, column_names=PRICED_COLUMNS)
    return client


def test_rows_carry_batch_tier_and_1h_writes_and_old_records_read_as_standard(client):
    got = client.query("SELECT event_id, batch, service_tier, cache_write_1h_tokens, cost "
                       "FROM priced_usage FINAL ORDER BY event_id").result_rows  # fmt: skip
    assert [r[:4] for r in got] == [
        ("m1", 0, "", 0), ("m2", 1, "", 0), ("m3", 0, "flex", 0), ("m4", 0, "priority", 0),
        ("m5", 1, "", 200), ("m6", 0, "", 0),  # m6: a v2 record, before these fields
    ]  # fmt: skip
    assert codec("PricedUsage").header != v2_priced(call(6), 99)[:10]


def test_readme_query_splits_batch_from_interactive_spend(client):
    (sql,) = [s for b in re.findall(r"```sql\n(.*?)```", README, flags=re.S)
              for s in b.split(";") if "AS mode" in s]  # fmt: skip
    rows = client.query(sql).result_rows
    by_mode = {(r[1], r[2]): (r[4], r[5], r[6]) for r in rows}
    # gpt-4o-mini: 1M x $0.15 + 100k x $0.60 = $0.21; batch and flex (batch rates) $0.105;
    # priority: 1M x $0.25 + 100k x $1.00 = $0.35 (genai-prices' priority tier).
    # m5 also writes 300 cache tokens, 200 of them for an hour: gpt-4o-mini has no cache
    # write price, they count as input at the batch rate, the same $0.105
    assert by_mode[("batch", "")] == (2, 200, D("0.21"))
    assert by_mode[("interactive", "")] == (2, 0, D("0.42"))  # m1 and the old m6
    assert by_mode[("interactive", "flex")] == (1, 0, D("0.105"))
    assert by_mode[("interactive", "priority")] == (1, 0, D("0.35"))


def test_recommendations_reprice_batch_calls_at_batch_rates(chdb_dir):
    from spendstream.sinks.recommendations import recommend
    from spendstream.sinks.warehouse import DirectWarehouse
    from spendstream.streams.pricing import Pricer

    settings = load_settings(clickhouse_dsn=f"chdb://{chdb_dir}",
                             clickhouse_database=f"recb_{uuid.uuid4().hex[:6]}")  # fmt: skip
    client = connect(settings)
    migrate(client)
    pricer = Pricer()
    rows = []
    for i in range(10):
        event = UsageEvent(event_id=f"g{i}", occurred_at=NOW - timedelta(days=2), source="llm",
                           payload=LlmUsage(provider="openai", model="gpt-4o",
                                            input_tokens=10_000, output_tokens=1_000,
                                            batch=True))  # fmt: skip
        cost = pricer.price(event)
        priced = PricedUsage(event=event, cost=cost.total, currency="USD",
                             components=cost.components, price_source=cost.source,
                             price_version=cost.version, priced_at=NOW,
                             origin=SourcePosition(topic="t", partition=0, offset=i))  # fmt: skip
        rows.append(priced_row(codec("PricedUsage").encode(priced.to_avro()), ("p", 0, i)))
    client.insert("priced_usage", rows, column_names=PRICED_COLUMNS)
    found = {(r.kind, r.subject): r.monthly_saving
             for r in recommend(DirectWarehouse(client), pricer, now=NOW)}  # fmt: skip
    # gpt-4o batch: 10 x (10k x $1.25 + 1k x $5)/M = 0.175; on gpt-4o-mini, batch too:
    # 10 x (10k x $0.075 + 1k x $0.30)/M = 0.0105 (not the standard 0.021)
    assert found[("cheaper model", "openai/gpt-4o (batch)")] == D("0.1645")
