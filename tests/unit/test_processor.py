"""The price stage turns every bad input into a dead letter with an actionable reason;
a too-late event is still priced (real spend) but counts toward no budget."""

from datetime import UTC, datetime, timedelta

import pytest

from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import DeadLetter, SourcePosition, UsageEvent
from spendstream.streams.matching import BudgetRegistry
from spendstream.streams.pricing import Pricer
from spendstream.streams.processor import UsageProcessor
from tests.conftest import llm_event

NOW = datetime(2026, 11, 15, 13, 0, tzinfo=UTC)
POS = SourcePosition(topic="usage.llm", partition=2, offset=41)


@pytest.fixture(scope="module")
def processor() -> UsageProcessor:
    registry = BudgetRegistry([
        BudgetDefinition(budget_id="org", name="org", limit="100", scope={"org": "acme"}),
        BudgetDefinition(budget_id="eur", name="eur", limit="100", currency="EUR",
                         scope={"org": "acme"}),
    ])  # fmt: skip
    return UsageProcessor(Pricer(), registry)


def test_good_event_is_priced_and_allocated(processor):
    event = processor.decode(b"k", llm_event(org="acme").encode(), POS, NOW)
    assert isinstance(event, UsageEvent)
    out = processor.process(event, POS, NOW)
    assert out.dead is None and out.priced is not None
    # the EUR budget gets the USD amount as billed: the aggregator converts it (fx.py)
    by_budget = {a.budget_id: a for a in out.allocations}
    assert sorted(by_budget) == ["eur", "org"] and by_budget["eur"].currency == "USD"
    alloc = by_budget["org"]
    assert alloc.amount == out.priced.cost and alloc.period_key == "2026-11"
    assert alloc.origin == POS and alloc.allocation_id == "e-1/org"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, "empty"),
        (b"\x00garbage", "decode"),
        (b"\xc3\x01" + b"\x01" * 8, "decode"),
    ],
)
def test_undecodable_input_goes_to_dlq(processor, value, code):
    dead = processor.decode(b"k", value, POS, NOW)
    assert isinstance(dead, DeadLetter)
    assert dead.error_code == code and dead.origin == POS and dead.reason


def test_future_event_and_wrong_topic_are_rejected(processor):
    future = llm_event(when=NOW + timedelta(hours=1)).encode()
    dead = processor.decode(None, future, POS, NOW)
    assert isinstance(dead, DeadLetter) and dead.error_code == "future"
    wrong = processor.decode(None, llm_event().encode(),
                             SourcePosition(topic="usage.apify", partition=0, offset=0), NOW)  # fmt: skip
    assert isinstance(wrong, DeadLetter) and wrong.error_code == "wrong_topic"


def test_unknown_model_goes_to_dlq_or_is_flagged():
    event = llm_event(model="made-up-model")
    dlq = UsageProcessor(Pricer(), BudgetRegistry()).process(event, POS, NOW)
    assert dlq.dead is not None and dlq.dead.error_code == "unknown_model"
    flagged = UsageProcessor(Pricer(), BudgetRegistry(), unknown_price="flag").process(
        event, POS, NOW
    )
    assert flagged.dead is None and flagged.priced is not None
    assert flagged.priced.priced is False and flagged.allocations == []


def late_processor(late_periods: int) -> UsageProcessor:
    registry = BudgetRegistry([
        BudgetDefinition(budget_id="month", name="m", limit="100", scope={"org": "acme"}),
        BudgetDefinition(budget_id="day", name="d", limit="100", period="daily",
                         timezone="America/New_York", scope={"team": "ml"}),
    ])  # fmt: skip
    return UsageProcessor(Pricer(), registry, late_periods=late_periods)


def test_late_event_counts_toward_its_own_period_within_the_allowed_past_periods():
    out = late_processor(1).process(llm_event(org="acme", when=datetime(2026, 10, 31, 23,
                                                                          tzinfo=UTC)), POS, NOW)  # fmt: skip
    assert out.dead is None
    assert [a.period_key for a in out.allocations] == ["2026-10"]  # its own period, not now's


def test_event_older_than_the_allowed_periods_is_priced_but_counts_nowhere():
    event = llm_event(org="acme", when=datetime(2026, 9, 30, 23, tzinfo=UTC))
    out = late_processor(1).process(event, POS, NOW)
    assert out.dead is not None and out.dead.error_code == "too_late"
    assert "2026-09" in out.dead.reason and "month" in out.dead.reason
    assert out.dead.event_id == "e-1" and out.dead.origin == POS
    # real spend: priced like any event (stored in priced_usage), but no budget counts it
    assert out.priced is not None and out.priced.cost == Pricer().price(event).total > 0
    assert out.allocations == [] and out.too_late
    assert late_processor(2).process(event, POS, NOW).dead is None  # two past months allowed


def test_lateness_uses_the_budget_time_zone_and_all_budgets_or_none():
    # 2026-11-14 03:30 UTC is 2026-11-13 22:30 in New York: two days before the 15th (local)
    event = llm_event(org="acme", team="ml", when=datetime(2026, 11, 14, 3, 30, tzinfo=UTC))
    out = late_processor(1).process(event, POS, NOW)
    assert out.dead is not None and "'day'" in out.dead.reason and "2026-11-13" in out.dead.reason
    # the monthly budget would have accepted it, but it is not half-counted
    assert out.allocations == [] and out.priced is not None
    assert late_processor(2).process(event, POS, NOW).dead is None


def test_lateness_is_judged_against_arrival_so_a_replay_decides_alike():
    event = llm_event(org="acme", when=datetime(2026, 10, 20, tzinfo=UTC))
    months_later = datetime(2027, 3, 1, tzinfo=UTC)
    replay = late_processor(1).process(event, POS, months_later, arrived=NOW)
    assert replay.dead is None and replay.allocations[0].period_key == "2026-10"


def test_a_too_late_event_counts_toward_no_budget_in_any_currency():
    registry = BudgetRegistry([
        BudgetDefinition(budget_id="day", name="d", limit="100", period="daily",
                         scope={"org": "acme"}),
        BudgetDefinition(budget_id="eur", name="e", limit="100", currency="EUR",
                         scope={"org": "acme"}),
    ])  # fmt: skip
    old = llm_event(org="acme", when=datetime(2026, 11, 10, tzinfo=UTC))
    out = UsageProcessor(Pricer(), registry, late_periods=1).process(old, POS, NOW)
    assert out.too_late and out.allocations == []
