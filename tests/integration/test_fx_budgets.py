"""A budget in EUR receives USD spend, on the real broker, a real worker and chDB.

With the day's rate missing the allocations wait (status and /metrics show them held,
nothing is guessed); publishing the rate releases them; the status in EUR, ClickHouse's
converted amounts and the input agree to the nano-unit.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spendstream.cli import app
from spendstream.processes import wait_for, worker_metrics
from spendstream.producer import UsagePublisher, publish_budgets, publish_rates
from spendstream.readback import read_statuses
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.fx import FxRate
from spendstream.schemas.models import Attributes, CustomCost, UsageEvent
from spendstream.schemas.money import from_nanos, to_nanos
from spendstream.sinks.clickhouse_sink import ClickHouseSink
from spendstream.sinks.reports import Filters, projection, summary
from spendstream.sinks.warehouse import DirectWarehouse, connect
from spendstream.streams.fx import round_half_even
from spendstream.topics import ensure_topics

pytestmark = pytest.mark.integration


def custom(event_id: str, amount: str, currency: str, when: datetime) -> UsageEvent:
    return UsageEvent(event_id=event_id, occurred_at=when, source="custom",
                      attributes=Attributes(org="acme"),
                      payload=CustomCost(amount=amount, currency=currency))  # fmt: skip


def eur_status(settings):
    found = [s for s in read_statuses(settings) if s.budget_id == "eu"]
    return found[0] if found else None


def test_eur_budget_holds_usd_spend_until_the_rate_then_everything_agrees(
    settings, services, tmp_path: Path, monkeypatch, chdb_dir
):
    ensure_topics(settings)
    publish_budgets(settings, [
        BudgetDefinition(budget_id="eu", name="EU", limit="100", currency="EUR",
                         scope={"org": "acme"}),
        BudgetDefinition(budget_id="us", name="US", limit="100", scope={"org": "acme"}),
    ])  # fmt: skip
    services.start("worker", "worker")
    when = datetime.now(UTC) - timedelta(minutes=1)
    amounts = ["1.5", "2.25", "0.333333333", "7"]
    events = [custom(f"usd-{i}", a, "USD", when) for i, a in enumerate(amounts)]
    events.append(custom("eur-0", "3", "EUR", when))
    with UsagePublisher(settings) as publisher:
        assert publisher.publish_many(events).sent == 5

    port = settings.worker_web_port
    wait_for("5 allocations held", lambda: (m := worker_metrics(port)) and
             m.get("fx_held", 0) >= 5, 120, services)  # fmt: skip
    held = wait_for("the held status", lambda: (s := eur_status(settings)) and
                    s.held_allocations == 4 and s, 60, services)  # fmt: skip
    assert held.spent == Decimal(3)  # only the EUR event counts yet: nothing guessed
    assert held.held_amounts == {"USD": sum(Decimal(a) for a in amounts)}

    # the rate of the events' day, as the ECB's daily file has it (1 EUR = 1.0987 USD)
    rates = tmp_path / "eurofxref.csv"
    rates.write_text(f"Date, USD, GBP, \n{when:%d %B %Y}, 1.0987, 0.8712, \n")
    monkeypatch.setenv("SPENDSTREAM_TOPIC_PREFIX", settings.topic_prefix)
    monkeypatch.setenv("SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS", settings.bootstrap_servers)
    monkeypatch.setenv("SPENDSTREAM_DATA_DIR", str(settings.data_dir))
    result = CliRunner().invoke(app, ["fx", "publish", str(rates)])
    assert result.exit_code == 0, result.output
    assert "published 2 rates" in result.output

    # exact: each USD amount / 1.0987, rounded once, half-even, to a nano-unit
    converted = [round_half_even(to_nanos(Decimal(a)) * 10_000, 10_987) for a in amounts]
    want = Decimal(3) + from_nanos(sum(converted))
    done = wait_for("released", lambda: (s := eur_status(settings)) and
                    s.held_allocations == 0 and s, 90, services)  # fmt: skip
    assert done.spent == want and done.event_count == 5 and done.held_amounts == {}
    metrics = worker_metrics(port)
    # the USD budget held the EUR event the same way: 4 + 1 released, none on arrival
    assert metrics["fx_released"] == 5 and metrics.get("fx_converted", 0) == 0
    us = [s for s in read_statuses(settings) if s.budget_id == "us"][0]
    assert us.spent == sum(Decimal(a) for a in amounts) + Decimal("3") * Decimal("1.0987")

    # chDB admits one directory per process: the session's (tests/conftest.py)
    sink_settings = settings.model_copy(update={
        "clickhouse_dsn": f"chdb://{chdb_dir}",
        "clickhouse_database": f"fx_{uuid.uuid4().hex[:8]}"})  # fmt: skip
    db = connect(sink_settings)
    ClickHouseSink.from_settings(sink_settings, db).run(idle_exit_s=3)
    rows = db.query("SELECT event_id, amount, currency, budget_amount, rate, rate_day FROM "
                    "allocation_conversions FINAL WHERE budget_id = 'eu' ORDER BY event_id"
                    ).result_rows  # fmt: skip
    assert [r[0] for r in rows] == [f"usd-{i}" for i in range(4)]
    assert [r[3] for r in rows] == [from_nanos(n) for n in converted]
    assert {r[5] for r in rows} == {when.date()}
    assert rows[0][4] == (Decimal(1) / Decimal("1.0987")).quantize(Decimal("1e-18"))
    total, held_rows = db.query(
        "SELECT sum(amount), countIf(held) FROM allocations_in_budget_currency "
        "WHERE budget_id = 'eu'").result_rows[0]  # fmt: skip
    assert total == want and held_rows == 0  # ClickHouse == status, to the nano-unit
    # the input: the USD budget counts the USD as billed; ClickHouse keeps both amounts
    usd_in = db.query("SELECT sum(amount) FROM cost_allocations FINAL WHERE budget_id = 'eu' "
                      "AND currency = 'USD'").result_rows[0][0]  # fmt: skip
    assert usd_in == sum(Decimal(a) for a in amounts)
    assert db.query("SELECT count() FROM fx_rates").result_rows[0][0] == 2
    us_total = db.query("SELECT sum(amount) FROM allocations_in_budget_currency "
                        "WHERE budget_id = 'us'").result_rows[0][0]  # fmt: skip
    assert us_total == us.spent
    # reports about a budget work in its currency
    report = summary(DirectWarehouse(db), Filters(budget="eu"))
    (total,) = [r for r in report.rows if r[0] == "total"]
    assert total[2] == "EUR" and total[4] == want
    (row,) = [r for r in projection(DirectWarehouse(db), Filters(budget="eu")).rows
              if r[0] == "eu"]  # fmt: skip
    assert row[2] == "EUR" and row[3] == want


def test_held_allocations_survive_kill_9_and_release_once(settings, services):
    """Held allocations live in the aggregator's state: a worker killed while they wait
    restores them from the changelog, and the rate releases each exactly once."""
    ensure_topics(settings)
    publish_budgets(settings, [BudgetDefinition(budget_id="eu", name="EU", limit="1000",
                                                currency="EUR", scope={"org": "acme"})])  # fmt: skip
    services.start("worker", "worker")
    when = datetime.now(UTC) - timedelta(minutes=1)
    amounts = [f"{i}.123456789" for i in range(1, 21)]
    with UsagePublisher(settings) as publisher:
        sent = publisher.publish_many(
            [custom(f"k-{i}", a, "USD", when) for i, a in enumerate(amounts)]
        ).sent
        assert sent == 20
    wait_for("20 held in the status", lambda: (s := eur_status(settings)) and
             s.held_allocations == 20, 120, services)  # fmt: skip
    services.kill("worker")  # kill -9: the states with held allocations are in the changelog
    services.start("worker", "worker")
    wait_for("the restarted worker", lambda: worker_metrics(settings.worker_web_port), 120,
             services)  # fmt: skip
    publish_rates(settings, [FxRate(day=when.date(), base="EUR", quote="USD", rate="1.25")])
    want = from_nanos(sum(round_half_even(to_nanos(Decimal(a)) * 4, 5) for a in amounts))
    done = wait_for("released after the restart", lambda: (s := eur_status(settings)) and
                    s.held_allocations == 0 and s, 120, services)  # fmt: skip
    assert done.spent == want and done.event_count == 20  # each once: none lost, none twice
    assert worker_metrics(settings.worker_web_port)["fx_released"] == 20
