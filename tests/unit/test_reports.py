"""Reports on known data, in every format, against real ClickHouse SQL (chDB)."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from spendstream.config import load_settings
from spendstream.schemas.avro import codec
from spendstream.schemas.models import (
    ApifyRun,
    Attributes,
    LlmUsage,
    PricedUsage,
    SourcePosition,
    UsageEvent,
)
from spendstream.sinks import reports
from spendstream.sinks.reports import Filters, ReportError
from spendstream.sinks.rows import PRICED_COLUMNS, priced_row
from spendstream.sinks.warehouse import DirectWarehouse, connect, migrate

D = Decimal
TODAY = date(2026, 11, 20)
DATA = [  # day, team, payload, cost
    (date(2026, 10, 5), "ml", LlmUsage(provider="openai", model="gpt-4o"), "10"),
    (date(2026, 10, 10), "web", LlmUsage(provider="anthropic", model="claude-sonnet-4-5"), "4"),
    (date(2026, 11, 3), "ml", LlmUsage(provider="openai", model="gpt-4o"), "6"),
    (date(2026, 11, 15), "ml", LlmUsage(provider="openai", model="gpt-4o-mini"), "1.5"),
    (date(2026, 11, 18), "web", ApifyRun(actor_id="apify/crawler", run_id="r1"), "2.25"),
]


@pytest.fixture(scope="module")
def warehouse(chdb_dir):
    settings = load_settings(clickhouse_dsn=f"chdb://{chdb_dir}",
                             clickhouse_database=f"rep_{uuid.uuid4().hex[:6]}")  # fmt: skip
    client = connect(settings)
    migrate(client)
    rows = []
    for i, (day, team, payload, cost) in enumerate(DATA):
        at = datetime.combine(day, datetime.min.time(), UTC).replace(hour=12)
        event = UsageEvent(event_id=f"r{i}", occurred_at=at, source=payload.kind,
                           attributes=Attributes(org="acme", team=team), payload=payload)  # fmt: skip
        priced = PricedUsage(event=event, cost=D(cost), currency="USD", price_source="t",
                             price_version="t", origin=SourcePosition(topic="usage.llm",
                             partition=0, offset=i), priced_at=at)  # fmt: skip
        value = codec("PricedUsage").encode(priced.to_avro())
        rows.append(priced_row(value, ("usage.priced", 0, i)))
    client.insert("priced_usage", rows, column_names=PRICED_COLUMNS)
    return DirectWarehouse(client)


def test_summary(warehouse):
    r = reports.summary(warehouse, Filters())
    assert r.rows[-1] == ["total", "", 5, D("23.75")]
    assert ["llm", "openai", 3, D("17.5")] in r.rows
    filtered = reports.summary(warehouse, Filters(since=date(2026, 11, 1), where={"team": "ml"}))
    assert filtered.rows[-1] == ["total", "", 2, D("7.5")]


def test_trend_by_month_with_change(warehouse):
    r = reports.trend(warehouse, Filters(), "month")
    assert [row[:3] for row in r.rows] == [[date(2026, 10, 1), 2, D(14)],
                                           [date(2026, 11, 1), 3, D("9.75")]]  # fmt: skip
    assert r.rows[1][3] == "-30.4"


def test_compare_month_to_date(warehouse):
    r = reports.compare(warehouse, Filters(), by="model", period="month", today=TODAY)
    table = {row[0]: row[1:] for row in r.rows}
    assert table["gpt-4o"] == [D(10), D(6), D(-4), "-40.0"]
    assert table["claude-sonnet-4-5"][:2] == [D(4), D(0)]
    assert table["-"] == [D(0), D("2.25"), D("2.25"), "new"]
    assert table["total"] == [D(14), D("9.75"), D("-4.25"), "-30.4"]


def test_projection(warehouse):
    r = reports.projection(warehouse, Filters(), today=TODAY)
    assert r.rows[0] == ["(selection)", D("9.75"), D("0.4875"), D("14.625"), "", ""]
    assert "day 20 of 30" in r.title


def test_top_drivers(warehouse):
    r = reports.top(warehouse, Filters(), by="team", limit=5)
    assert r.rows == [["ml", 3, D("17.5"), "73.7"], ["web", 2, D("6.25"), "26.3"]]
    with pytest.raises(ReportError, match="unknown dimension"):
        reports.top(warehouse, Filters(), by="colour")


def test_every_format_renders_exact_numbers(warehouse):
    r = reports.top(warehouse, Filters(), by="model", limit=3)
    as_json = json.loads(r.render("json"))
    assert as_json["rows"][0] == {"model": "gpt-4o", "events": 2, "cost": "16.000000000",
                                  "share %": "67.4"}  # fmt: skip
    parsed = list(csv.reader(io.StringIO(r.render("csv"))))
    assert parsed[0] == ["model", "events", "cost", "share %"]
    assert parsed[1] == ["gpt-4o", "2", "16.000000000", "67.4"]
    md = r.render("md").splitlines()
    assert md[0] == "### top 3 cost drivers by model"
    assert md[2] == "| model | events | cost | share % |"
    assert md[4] == "| gpt-4o | 2 | 16.000000000 | 67.4 |"
    table = r.render("table")
    assert "top 3 cost drivers by model" in table and "16.000000000" in table
    with pytest.raises(ReportError, match="unknown format"):
        r.render("xml")


def test_daily_views_agree_with_base_tables(warehouse):
    base = warehouse.query("SELECT sum(cost) FROM priced_usage FINAL").scalar()
    daily = warehouse.query("SELECT sum(cost), sum(events) FROM daily_spend").rows[0]
    assert daily == (base, 5)
