"""Recommendations on known data: each finding with its exact estimated saving."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from spendstream.config import load_settings
from spendstream.schemas.avro import codec
from spendstream.schemas.models import (
    ApifyRun,
    LlmUsage,
    PricedUsage,
    SourcePosition,
    UsageEvent,
    WorkflowRun,
)
from spendstream.schemas.money import money
from spendstream.sinks.recommendations import recommend, recommendations_report
from spendstream.sinks.rows import PRICED_COLUMNS, priced_row
from spendstream.sinks.warehouse import DirectWarehouse, connect, migrate
from spendstream.streams.pricing import Pricer

D = Decimal
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def warehouse(chdb_dir):
    settings = load_settings(clickhouse_dsn=f"chdb://{chdb_dir}",
                             clickhouse_database=f"rec_{uuid.uuid4().hex[:6]}")  # fmt: skip
    client = connect(settings)
    migrate(client)
    pricer = Pricer()
    payloads = [LlmUsage(provider="openai", model="gpt-4o", input_tokens=10_000,
                         output_tokens=1_000) for _ in range(10)]  # fmt: skip
    payloads += [WorkflowRun(platform="zapier", workflow_id="z1", execution_id=f"x{i}",
                             status="failed", tasks=1) for i in range(2)]  # fmt: skip
    payloads += [ApifyRun(actor_id="apify/crawler", run_id=f"r{i}", compute_units=D(1),
                          results=40) for i in range(3)]  # fmt: skip
    rows = []
    for i, payload in enumerate(payloads):
        at = NOW - timedelta(days=2, minutes=i)
        event = UsageEvent(event_id=f"e{i}", occurred_at=at, source=payload.kind,
                           payload=payload)  # fmt: skip
        cost = pricer.price(event)
        priced = PricedUsage(event=event, cost=cost.total, currency="USD",
                             components=cost.components, price_source=cost.source,
                             price_version=cost.version,
                             origin=SourcePosition(topic="t", partition=0, offset=i),
                             priced_at=at)  # fmt: skip
        rows.append(priced_row(codec("PricedUsage").encode(priced.to_avro()), ("p", 0, i)))
    client.insert("priced_usage", rows, column_names=PRICED_COLUMNS)
    return DirectWarehouse(client)


def test_each_kind_of_finding_with_exact_saving(warehouse):
    found = {(r.kind, r.subject): r.monthly_saving for r in recommend(warehouse, Pricer(),
                                                                      now=NOW)}  # fmt: skip
    # gpt-4o: 10 x (10k x $2.5/M + 1k x $10/M) = 0.35; gpt-4o-mini: 10 x 0.0021 = 0.021
    assert found[("cheaper model", "openai/gpt-4o")] == D("0.329")
    # caching half the 100k uncached prompt tokens: 50k x ($2.50 - $1.25)/M
    assert found[("prompt caching", "openai/gpt-4o")] == D("0.0625")
    # two failed Zapier executions of one task each at $0.0199
    assert found[("failed runs", "zapier:z1")] == D("0.0398")
    # three identical crawler runs (1 CU x $0.40 each): two are repeats
    assert found[("repeated runs", "apify/crawler")] == D("0.8")
    assert len(found) == 4


def test_savings_scale_to_a_month_and_report_renders(warehouse):
    weekly = {r.subject: r.monthly_saving for r in recommend(warehouse, Pricer(), days=7, now=NOW)}
    assert weekly["apify/crawler"] == money(D("0.8") * (D(30) / D(7)))  # a week scaled up
    report = recommendations_report(warehouse, Pricer())
    assert report.columns[2] == "saving / month"
    assert "optimization recommendations" in report.render("md")
