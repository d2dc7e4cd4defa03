"""Recommendations on known data: each finding with its exact estimated saving, and
savings on one spend that never add up past it."""

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
    # the same failing run three times: failed runs, not also repeated runs
    payloads += [ApifyRun(actor_id="apify/flaky", run_id=f"f{i}", status="FAILED",
                          compute_units=D(1), results=0) for i in range(3)]  # fmt: skip
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
    items = recommend(warehouse, Pricer(), now=NOW)
    found = {(r.kind, r.subject): r.monthly_saving for r in items}
    assert {r.currency for r in items} == {"USD"}
    # gpt-4o: 10 x (10k x $2.5/M + 1k x $10/M) = 0.35; gpt-4o-mini: 10 x 0.0021 = 0.021
    assert found[("cheaper model", "openai/gpt-4o")] == D("0.329")
    # caching half the 100k uncached prompt tokens, after the switch (on gpt-4o-mini's
    # prices): 50k x ($0.15 - $0.075)/M. On gpt-4o's it would be 0.0625, and 0.329 + 0.0625
    # is more than the 0.35 spent: the same tokens counted twice.
    assert found[("prompt caching", "openai/gpt-4o")] == D("0.00375")
    # two failed Zapier executions of one task each at $0.0199
    assert found[("failed runs", "zapier:z1")] == D("0.0398")
    # three identical crawler runs (1 CU x $0.40 each): two are repeats
    assert found[("repeated runs", "apify/crawler")] == D("0.8")
    # three failed identical runs: their cost once, as failed runs, not again as repeats
    assert found[("failed runs", "apify/flaky")] == D("1.2")
    assert ("repeated runs", "apify/flaky") not in found
    assert len(found) == 5


def test_savings_on_one_spend_never_add_up_past_it(warehouse):
    """Per subject (a model's calls, an actor's runs) the savings together are at most
    what that subject cost in the window."""
    spend = dict(warehouse.query(
        "SELECT if(source = 'llm', concat(provider, '/', model), if(source = 'apify', "
        "actor_id, concat(platform, ':', workflow_id))), sum(cost) FROM priced_usage FINAL "
        "GROUP BY 1").rows)  # fmt: skip
    saved: dict[str, D] = {}
    for r in recommend(warehouse, Pricer(), now=NOW):
        saved[r.subject] = saved.get(r.subject, D(0)) + r.monthly_saving
    assert saved and all(saved[s] <= spend[s] for s in saved), (saved, spend)
    # cheaper model and caching together: what running on gpt-4o-mini with half of the
    # uncached prompt cached costs less than what was spent, exactly
    mini = Pricer().price_llm(LlmUsage(provider="openai", model="gpt-4o-mini",
                                       input_tokens=100_000, cache_read_tokens=50_000,
                                       output_tokens=10_000)).total  # fmt: skip
    assert saved["openai/gpt-4o"] == spend["openai/gpt-4o"] - mini


def test_savings_scale_to_a_month_and_report_renders(warehouse):
    weekly = {r.subject: r.monthly_saving for r in recommend(warehouse, Pricer(), days=7, now=NOW)}
    assert weekly["apify/crawler"] == money(D("0.8") * (D(30) / D(7)))  # a week scaled up
    report = recommendations_report(warehouse, Pricer())
    assert report.columns[2:4] == ["currency", "saving / month"]
    assert all(row[2] == "USD" for row in report.rows)
    assert "USD per month" in report.notes[0]
    assert "optimization recommendations" in report.render("md")
