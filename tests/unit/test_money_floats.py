"""No float on a money path: every place money enters refuses a float and says to quote
it, while Decimal (what fastavro decodes), int and decimal strings keep working."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from spendstream.builders import build
from spendstream.config import Settings
from spendstream.schemas.budget import BudgetDefinition, BudgetError, load_budgets_file
from spendstream.schemas.checks import CheckRequest
from spendstream.schemas.models import (
    ApifyRun,
    CostAllocation,
    CustomCost,
    PricedUsage,
    SourcePosition,
    Threshold,
    UsageEvent,
    explain,
)
from spendstream.schemas.money import MoneyError, money
from spendstream.streams.api import BudgetApi
from spendstream.streams.budget_feed import BudgetFeed
from spendstream.streams.pricing import Pricer

TOKEN = "s3cret"
AUTH = f"Bearer {TOKEN}"
WHEN = datetime(2026, 11, 20, 9, tzinfo=UTC)


def custom_line(amount: str) -> str:
    """A JSON line as `spendstream publish` reads it, with the amount spelled verbatim."""
    return (
        '{"event_id": "c-1", "occurred_at": "2026-11-20T09:00:00Z", "source": "custom", '
        '"payload": {"kind": "custom", "amount": ' + amount + ', "currency": "USD"}}'
    )


@pytest.fixture
def api() -> BudgetApi:
    feed = BudgetFeed(Settings())
    written: list[object] = []
    return BudgetApi(feed, Pricer(), TOKEN, lambda b, i, *who: written.append(b), lambda a: None)


# --- HTTP API (JSON) ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("literal", "shown"),
    [("10.5", '10.5 is a float (inexact); quote it: "10.5"'),
     ("12345678901.123456789", "digits may already be lost")],
)  # fmt: skip
def test_api_refuses_a_float_limit_and_says_to_quote_it(api, literal, shown):
    body = ('{"budget_id": "b", "name": "B", "limit": ' + literal + "}").encode()
    status, reply = api.put_budget(None, body, AUTH)
    assert status == 422
    assert reply["error"].startswith("limit: ") and shown in reply["error"]


def test_api_keeps_every_digit_of_a_quoted_limit_and_accepts_an_int(api):
    body = json.dumps({"budget_id": "b", "name": "B", "limit": "12345678901.123456789"})
    status, created = api.put_budget(None, body.encode(), AUTH)
    assert status == 201 and created["limit"] == "12345678901.123456789"
    status, created = api.put_budget("c", json.dumps({"name": "C", "limit": 10}).encode(), AUTH)
    assert status == 201 and Decimal(created["limit"]) == 10


def test_api_check_refuses_a_float_estimated_cost(api):
    status, reply = api.check(b'{"estimated_cost": 0.4, "attributes": {"team": "ml"}}')
    assert (
        status == 422
        and 'estimated_cost: 0.4 is a float (inexact); quote it: "0.4"' in (reply["error"])
    )
    assert api.check(b'{"estimated_cost": "0.4"}')[0] == 200


# --- YAML / JSON budget files ---------------------------------------------------------------
def test_yaml_float_limit_is_refused_with_the_field_and_how_to_quote(tmp_path: Path):
    path = tmp_path / "budgets.yaml"
    path.write_text("budgets:\n  - {budget_id: b, name: B, limit: 10.1}\n")
    with pytest.raises(BudgetError) as info:
        load_budgets_file(path)
    assert 'limit: 10.1 is a float (inexact); quote it: "10.1"' in str(info.value)
    path.write_text(
        "budgets:\n  - budget_id: b\n    name: B\n    limit: '100'\n"
        "    allocations: {openai: 60.5}\n"
    )
    with pytest.raises(BudgetError, match=r"allocations\.openai: 60\.5 is a float"):
        load_budgets_file(path)


def test_yaml_quoted_and_integer_limits_and_float_percents_load(tmp_path: Path):
    path = tmp_path / "budgets.yaml"
    path.write_text(
        "budgets:\n"
        "  - {budget_id: a, name: A, limit: '10.1', thresholds: [{percent: 33.3}]}\n"
        "  - {budget_id: b, name: B, limit: 25}\n"
    )
    a, b = load_budgets_file(path)
    assert a.limit == Decimal("10.1") and b.limit == 25
    # a percent is a share, not money: an unquoted 33.3 is read as exactly 33.3
    assert a.thresholds[0].percent == Decimal("33.3")
    assert Threshold(percent=80.5).percent == Decimal("80.5")


# --- JSON-lines publish and the SDK ---------------------------------------------------------
def test_published_json_float_amount_is_refused_quoted_one_is_exact():
    with pytest.raises(ValidationError) as info:
        build(json.loads(custom_line("1.1")))
    assert 'payload.custom.amount: 1.1 is a float (inexact); quote it: "1.1"' in explain(info.value)
    event = build(json.loads(custom_line('"1.1"')))
    assert isinstance(event.payload, CustomCost) and event.payload.amount == Decimal("1.1")
    assert build(json.loads(custom_line("2"))).payload.amount == 2  # type: ignore[union-attr]


def test_sdk_models_refuse_float_money():
    with pytest.raises(ValidationError, match="float"):
        CustomCost(amount=1.1, currency="USD")
    with pytest.raises(ValidationError, match="float"):
        ApifyRun(actor_id="a", run_id="r", usage_total_usd=0.5)
    with pytest.raises(ValidationError, match="float"):
        ApifyRun(actor_id="a", run_id="r", usage_usd={"proxy": 0.25})
    with pytest.raises(ValidationError, match="float"):
        CheckRequest(estimated_cost=0.4)
    with pytest.raises(ValidationError, match="float"):
        BudgetDefinition(budget_id="b", name="B", limit=10.5)
    with pytest.raises(MoneyError, match='quote it: "0.1"'):
        money(0.1)  # type: ignore[arg-type]


def test_records_our_stages_build_refuse_float_money_too():
    event = UsageEvent(event_id="c-1", occurred_at=WHEN, source="custom",
                       payload=CustomCost(amount="3", currency="USD"))  # fmt: skip
    origin = SourcePosition(topic="usage.custom", partition=0, offset=1)
    with pytest.raises(ValidationError, match="float"):
        PricedUsage(event=event, cost=3.0, currency="USD", price_source="x", price_version="1",
                    origin=origin, priced_at=WHEN)  # fmt: skip
    with pytest.raises(ValidationError, match="float"):
        CostAllocation(allocation_id="c-1/b", event_id="c-1", budget_id="b", matched_via="org",
                       period_key="2026-11", period_start=WHEN, period_end=WHEN,
                       occurred_at=WHEN, amount=3.0, currency="USD", source="custom",
                       attributes=event.attributes, origin=origin)  # fmt: skip


def test_avro_decoded_decimals_and_ints_still_validate():
    """fastavro hands Decimal for decimal logical types: the Avro path keeps working."""
    event = UsageEvent(event_id="c-1", occurred_at=WHEN, source="custom",
                       payload=CustomCost(amount="49.000000001", currency="EUR"))  # fmt: skip
    assert UsageEvent.decode(event.encode()) == event
    run = UsageEvent(event_id="a-1", occurred_at=WHEN, source="apify",
                     payload=ApifyRun(actor_id="a", run_id="r", compute_units=1,
                                      usage_total_usd="0.0856", usage_usd={"proxy": 2}))  # fmt: skip
    assert UsageEvent.decode(run.encode()) == run
    priced = PricedUsage(event=event, cost=Decimal("49.000000001"), currency="EUR",
                         price_source="x", price_version="1",
                         origin=SourcePosition(topic="usage.custom", partition=0, offset=1),
                         priced_at=WHEN)  # fmt: skip
    from spendstream.schemas.avro import codec

    assert PricedUsage.from_avro(codec("PricedUsage").decode(
        codec("PricedUsage").encode(priced.to_avro()))) == priced  # fmt: skip


def test_apify_api_payload_floats_are_read_through_their_text():
    """Apify's own API sends usageTotalUsd as a JSON number we cannot ask it to quote: the
    builder turns the number's text into a Decimal (no float arithmetic), as documented."""
    run = {"data": {"id": "r1", "actId": "apify/crawler", "usageTotalUsd": 0.0856,
                    "startedAt": "2026-11-20T09:00:00Z"}}  # fmt: skip
    payload = build(run).payload
    assert isinstance(payload, ApifyRun) and payload.usage_total_usd == Decimal("0.0856")
