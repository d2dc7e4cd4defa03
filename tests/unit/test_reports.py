"""Reports on known data, in every format, against real ClickHouse SQL (chDB).

The data holds USD and EUR spend: no report may add them (a currency column everywhere),
and the projection must equal what the stream computes for the same allocations.
"""

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
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import (
    ApifyRun,
    Attributes,
    CostAllocation,
    CustomCost,
    LlmUsage,
    PricedUsage,
    SourcePosition,
    UsageEvent,
    to_micros,
)
from spendstream.schemas.money import to_nanos
from spendstream.sinks import reports
from spendstream.sinks.reports import Filters, ReportError
from spendstream.sinks.rows import (
    ALLOCATION_COLUMNS,
    BUDGET_COLUMNS,
    PRICED_COLUMNS,
    allocation_row,
    budget_row,
    priced_row,
)
from spendstream.sinks.warehouse import DirectWarehouse, connect, migrate
from spendstream.streams.aggregation import PeriodState
from spendstream.streams.forecast import US_PER_DAY, project
from spendstream.streams.periods import budget_period

D = Decimal
TODAY = date(2026, 11, 20)
DATA = [  # day, team, payload, cost
    (date(2026, 10, 5), "ml", LlmUsage(provider="openai", model="gpt-4o"), "10"),
    (date(2026, 10, 10), "web", LlmUsage(provider="anthropic", model="claude-sonnet-4-5"), "4"),
    (date(2026, 11, 3), "ml", LlmUsage(provider="openai", model="gpt-4o"), "6"),
    (date(2026, 11, 15), "ml", LlmUsage(provider="openai", model="gpt-4o-mini"), "1.5"),
    (date(2026, 11, 18), "web", ApifyRun(actor_id="apify/crawler", run_id="r1"), "2.25"),
    # a custom cost in EUR: never added to the USD figures
    (date(2026, 11, 19), "ml", CustomCost(amount="7", currency="EUR"), "7"),
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
        currency = payload.currency if isinstance(payload, CustomCost) else "USD"
        priced = PricedUsage(event=event, cost=D(cost), currency=currency, price_source="t",
                             price_version="t", origin=SourcePosition(topic="usage.llm",
                             partition=0, offset=i), priced_at=at)  # fmt: skip
        value = codec("PricedUsage").encode(priced.to_avro())
        rows.append(priced_row(value, ("usage.priced", 0, i)))
    client.insert("priced_usage", rows, column_names=PRICED_COLUMNS)
    return DirectWarehouse(client)


def test_summary_totals_each_currency_apart(warehouse):
    r = reports.summary(warehouse, Filters())
    assert r.columns == ["source", "provider", "currency", "events", "cost"]
    assert r.rows[-2:] == [["total", "", "EUR", 1, D(7)], ["total", "", "USD", 5, D("23.75")]]
    assert ["llm", "openai", "USD", 3, D("17.5")] in r.rows
    assert ["custom", "-", "EUR", 1, D(7)] in r.rows
    filtered = reports.summary(warehouse, Filters(since=date(2026, 11, 1), where={"team": "ml"}))
    assert filtered.rows[-2:] == [["total", "", "EUR", 1, D(7)], ["total", "", "USD", 2, D("7.5")]]


def test_trend_by_month_with_change(warehouse):
    r = reports.trend(warehouse, Filters(), "month")
    assert r.columns == ["month", "currency", "events", "cost", "change %"]
    assert r.rows == [[date(2026, 10, 1), "USD", 2, D(14), ""],
                      [date(2026, 11, 1), "EUR", 1, D(7), ""],
                      [date(2026, 11, 1), "USD", 3, D("9.75"), "-30.4"]]  # fmt: skip


def test_compare_month_to_date(warehouse):
    r = reports.compare(warehouse, Filters(), by="model", period="month", today=TODAY)
    assert r.columns[:2] == ["model", "currency"]
    table = {(row[0], row[1]): row[2:] for row in r.rows}
    assert table["gpt-4o", "USD"] == [D(10), D(6), D(-4), "-40.0"]
    assert table["claude-sonnet-4-5", "USD"][:2] == [D(4), D(0)]
    assert table["-", "USD"] == [D(0), D("2.25"), D("2.25"), "new"]
    assert table["-", "EUR"] == [D(0), D(7), D(7), "new"]
    assert table["total", "USD"] == [D(14), D("9.75"), D("-4.25"), "-30.4"]
    assert table["total", "EUR"] == [D(0), D(7), D(7), "new"]


NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)  # Friday; 21:00 in Tokyo, 07:00 in New York
WEEKLY = BudgetDefinition(budget_id="wk", name="weekly", limit="50", period="weekly",
                          timezone="America/New_York")  # fmt: skip
DAILY = BudgetDefinition(budget_id="dy", name="daily", limit="5", period="daily",
                         timezone="Asia/Tokyo")  # fmt: skip
CUSTOM = BudgetDefinition(budget_id="cu", name="custom", limit="100", period="custom",
                          currency="EUR", custom_start=datetime(2026, 11, 10, tzinfo=UTC),
                          custom_end=datetime(2026, 12, 10, tzinfo=UTC))  # fmt: skip
GONE = BudgetDefinition(budget_id="gone", name="deleted", limit="1")


def allocations() -> list[CostAllocation]:
    """Spend of the current week (New York: from Monday 16th, 05:00 UTC) varying by day,
    one event of the week before, three early in the Tokyo day of the 20th (from 19th,
    15:00 UTC) and one in the custom window."""
    spend = [(WEEKLY, datetime(2026, 11, 12, 15, tzinfo=UTC), "9")]  # the week before
    for day, amounts in enumerate([("2.5", "1.25"), ("4",), ("0.5", "3"), ("6",), ("1.75",)]):
        for hour, amount in enumerate(amounts):
            spend.append((WEEKLY, datetime(2026, 11, 16 + day, 11 + hour, tzinfo=UTC), amount))
    spend += [(DAILY, datetime(2026, 11, 19, h, tzinfo=UTC), "1") for h in (16, 18, 20)]
    spend.append((CUSTOM, datetime(2026, 11, 15, tzinfo=UTC), "12.5"))
    out = []
    for i, (budget, when, amount) in enumerate(spend):
        period = budget_period(budget, when)
        assert period is not None
        out.append(CostAllocation(
            allocation_id=f"p{i}/{budget.budget_id}", event_id=f"p{i}",
            budget_id=budget.budget_id, matched_via="org", period_key=period.key,
            period_start=period.start, period_end=period.end, occurred_at=when,
            amount=D(amount), currency=budget.currency, source="custom",
            attributes=Attributes(), origin=SourcePosition(topic="usage.custom", partition=0,
                                                           offset=i)))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def with_budgets(warehouse):
    budgets = [WEEKLY, DAILY, CUSTOM, GONE]
    rows = [budget_row(codec("BudgetDefinition").encode(b.to_avro()), ("budgets", 0, i))
            for i, b in enumerate(budgets)]  # fmt: skip
    rows.append(budget_row(None, ("budgets", 0, len(rows)), b"gone"))  # deleted
    warehouse.client.insert("budgets", rows, column_names=BUDGET_COLUMNS)
    allocs = [allocation_row(codec("CostAllocation").encode(a.to_avro()), ("alloc", 0, i))
              for i, a in enumerate(allocations())]  # fmt: skip
    warehouse.client.insert("cost_allocations", allocs, column_names=ALLOCATION_COLUMNS)
    return warehouse


def test_projection_of_each_budget_equals_the_streams(with_budgets):
    r = reports.projection(with_budgets, Filters(), now=NOW)
    rows = {row[0]: dict(zip(r.columns, row, strict=True)) for row in r.rows}
    assert "gone" not in rows  # deleted budgets are not projected
    for budget in (WEEKLY, DAILY, CUSTOM):
        period = budget_period(budget, NOW)
        assert period is not None
        # what the stream's aggregation holds for the same allocations, and projects
        state = PeriodState()
        for alloc in allocations():
            if alloc.budget_id == budget.budget_id and alloc.period_key == period.key:
                state.apply(alloc)
        stream = state.projection(budget.limit)
        row = rows[budget.budget_id]
        assert (row["period"], row["currency"], row["limit"]) == (period.key, budget.currency,
                                                                  budget.limit)  # fmt: skip
        assert row["spent"] == state.spent
        assert [row["per day"], row["projected"], row["95% low"], row["95% high"]] == [
            stream.burn_rate_per_day, stream.projected, stream.low, stream.high]  # fmt: skip
        assert row["verdict"] == ("over" if stream.projected > budget.limit else "within")
    assert rows["wk"]["spent"] == D(19) and rows["wk"]["period"] == "2026-W47"
    # three units in Tokyo's first five hours run at 14.4 a day: over a limit of 5, which
    # a monthly run rate (3 x 30 / 20 = 4.5) called "within"
    assert rows["dy"]["period"] == "2026-11-20" and rows["dy"]["verdict"] == "over"
    assert rows["dy"]["projected"] == D("14.4")
    only = reports.projection(with_budgets, Filters(budget="dy"), now=NOW)
    assert [row[0] for row in only.rows] == ["(selection)", "dy"]


def test_projection_of_the_selection_per_currency(warehouse):
    r = reports.projection(warehouse, Filters(), now=NOW)
    selection = [row for row in r.rows if row[0] == "(selection)"]
    assert [row[2] for row in selection] == ["EUR", "USD"]
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    usd = {2: D(6), 14: D("1.5"), 17: D("2.25")}  # day of the month (0-based) -> spend
    last = to_micros(datetime(2026, 11, 18, 12, tzinfo=UTC))
    want = project(to_nanos(D("9.75")), {d: to_nanos(v) for d, v in usd.items()},
                   to_micros(start), to_micros(end), last, D(0))  # fmt: skip
    assert selection[1][3:8] == [D("9.75"), want.burn_rate_per_day, want.projected, want.low,
                                 want.high]  # fmt: skip
    assert selection[0][3] == D(7)
    assert (to_micros(end) - to_micros(start)) // US_PER_DAY == 30


def test_top_drivers_per_currency(warehouse):
    r = reports.top(warehouse, Filters(), by="team", limit=5)
    assert r.rows == [["ml", "EUR", 1, D(7), "100.0"],
                      ["ml", "USD", 3, D("17.5"), "73.7"], ["web", "USD", 2, D("6.25"), "26.3"]]  # fmt: skip
    assert reports.top(warehouse, Filters(), by="team", limit=1).rows == [
        ["ml", "EUR", 1, D(7), "100.0"], ["ml", "USD", 3, D("17.5"), "73.7"]]  # fmt: skip
    with pytest.raises(ReportError, match="unknown dimension"):
        reports.top(warehouse, Filters(), by="colour")


def test_every_format_renders_exact_numbers(warehouse):
    r = reports.top(warehouse, Filters(until=date(2026, 11, 19)), by="model", limit=3)
    as_json = json.loads(r.render("json"))
    assert as_json["rows"][0] == {"model": "gpt-4o", "currency": "USD", "events": 2,
                                  "cost": "16.000000000", "share %": "67.4"}  # fmt: skip
    parsed = list(csv.reader(io.StringIO(r.render("csv"))))
    assert parsed[0] == ["model", "currency", "events", "cost", "share %"]
    assert parsed[1] == ["gpt-4o", "USD", "2", "16.000000000", "67.4"]
    md = r.render("md").splitlines()
    assert md[0] == "### top 3 cost drivers by model"
    assert md[2] == "| model | currency | events | cost | share % |"
    assert md[4] == "| gpt-4o | USD | 2 | 16.000000000 | 67.4 |"
    table = r.render("table")
    assert "top 3 cost drivers by model" in table and "16.000000000" in table
    with pytest.raises(ReportError, match="unknown format"):
        r.render("xml")


def test_daily_views_agree_with_base_tables(warehouse):
    base = warehouse.query("SELECT currency, sum(cost), count() FROM priced_usage FINAL "
                           "GROUP BY currency ORDER BY currency").rows  # fmt: skip
    daily = warehouse.query("SELECT currency, sum(cost), sum(events) FROM daily_spend "
                            "GROUP BY currency ORDER BY currency").rows  # fmt: skip
    assert daily == base == [("EUR", D(7), 1), ("USD", D("23.75"), 5)]
