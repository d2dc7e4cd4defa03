"""Property tests: every contract round-trips through Avro; breakdowns add up exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendstream.schemas.avro import codec
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import (
    ApifyRun,
    Attributes,
    BudgetAlert,
    BudgetStatus,
    CostAllocation,
    CustomCost,
    DeadLetter,
    LlmUsage,
    PricedUsage,
    SourcePosition,
    UsageEvent,
    WorkflowRun,
)
from spendstream.schemas.money import NANO
from spendstream.streams.pricing import Catalog, Pricer

text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() == s and s)
opt_text = st.none() | text
money = st.decimals(min_value=0, max_value=Decimal("1e12"), places=9, allow_nan=False)
count = st.integers(min_value=0, max_value=10**9)
when = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                    timezones=st.just(UTC))  # fmt: skip
attributes = st.builds(
    Attributes, org=opt_text, team=opt_text, project=opt_text, user=opt_text,
    department=opt_text, session=opt_text, feature=opt_text,
    tags=st.dictionaries(text, st.text(max_size=30), max_size=5),
)  # fmt: skip


@st.composite
def llm(draw):
    inp = draw(count)
    cached = draw(st.integers(0, inp))
    written = draw(st.integers(0, inp - cached))
    out = draw(count)
    return LlmUsage(provider=draw(text), model=draw(text), input_tokens=inp,
                    cache_read_tokens=cached, cache_write_tokens=written, output_tokens=out,
                    reasoning_tokens=draw(st.integers(0, out)), images=draw(count),
                    request_id=draw(opt_text))  # fmt: skip


apify = st.builds(ApifyRun, actor_id=text, run_id=text, status=text, compute_units=money,
                  usage_total_usd=st.none() | money,
                  usage_usd=st.dictionaries(text, money, max_size=3), results=count,
                  charged_event_counts=st.dictionaries(text, count, max_size=3))  # fmt: skip
workflow = st.builds(WorkflowRun, platform=st.sampled_from(["n8n", "zapier", "make",
                     "power_automate"]), workflow_id=text, execution_id=text, tasks=count,
                     operations=count, duration_ms=count)  # fmt: skip
custom = st.builds(CustomCost, amount=money, currency=st.sampled_from(["USD", "EUR", "GBP"]),
                   category=text, description=opt_text)  # fmt: skip


@st.composite
def usage_events(draw):
    payload = draw(st.one_of(llm(), apify, workflow, custom))
    return UsageEvent(event_id=draw(text), occurred_at=draw(when), source=payload.kind,
                      attributes=draw(attributes), payload=payload, producer=draw(opt_text))  # fmt: skip


position = st.builds(SourcePosition, topic=text, partition=st.integers(0, 1000),
                     offset=st.integers(0, 2**62))  # fmt: skip
fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(usage_events())
def test_usage_event_round_trip(event):
    assert UsageEvent.decode(event.encode()) == event


@fast
@given(usage_events(), money, position, when)
def test_priced_usage_round_trip(event, cost, pos, at):
    priced = PricedUsage(event=event, cost=cost, currency="USD", price_source="s",
                         price_version="v", origin=pos, priced_at=at)  # fmt: skip
    c = codec("PricedUsage")
    assert PricedUsage.from_avro(c.decode(c.encode(priced.to_avro()))) == priced


@fast
@given(text, text, money, when, when, attributes, position)
def test_allocation_alert_status_dead_letter_round_trip(a, b, amount, t1, t2, attrs, pos):
    alloc = CostAllocation(allocation_id=f"{a}/{b}", event_id=a, budget_id=b, matched_via=b,
                           period_key="2026-11", period_start=t1, period_end=t2, occurred_at=t1,
                           amount=amount, currency="USD", source="llm", provider=None,
                           model="m", attributes=attrs, origin=pos)  # fmt: skip
    alert = BudgetAlert(alert_id=a, budget_id=b, budget_name=a, period_key="2026-11",
                        kind="threshold", threshold_percent=Decimal("75"), spent=amount,
                        limit=amount + 1, currency="USD", message=a, triggered_at=t2)  # fmt: skip
    status = BudgetStatus(budget_id=b, budget_name=a, period_key="p", period_start=t1,
                          period_end=t2, spent=amount, limit=amount + 1, currency="EUR",
                          event_count=3, state="normal", alerted_tiers=["threshold:50"],
                          updated_at=t1)  # fmt: skip
    dead = DeadLetter(reason=a, error_code=b, origin=pos, key=a.encode(), value=b"\x00\x01",
                      rejected_at=t1)  # fmt: skip
    for name, model in [("CostAllocation", alloc), ("BudgetAlert", alert),
                        ("BudgetStatus", status), ("DeadLetter", dead)]:  # fmt: skip
        c = codec(name)
        assert type(model).from_avro(c.decode(c.encode(model.to_avro()))) == model


@fast
@given(st.sampled_from(["daily", "weekly", "monthly", "quarterly", "annual"]),
       st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
       money.filter(lambda m: m > 0), attributes)  # fmt: skip
def test_budget_definition_round_trip(period, tz, limit, attrs):
    budget = BudgetDefinition(budget_id="b-1", name="n", limit=limit, period=period,
                              timezone=tz, scope={"team": ["ml", "web"]})  # fmt: skip
    assert BudgetDefinition.decode(budget.encode()) == budget


PRICER = Pricer(Catalog._parse({
    "version": "prop",
    "llm": [{"provider": "p", "model": "m", "input_mtok": "3.3333", "cache_read_mtok": "0.0375",
             "cache_write_mtok": "4.17", "output_mtok": "15.01", "per_image": "0.0421",
             "per_request": "0.0000007"}],
    "apify": {"plans": {"default": {"compute_unit": "0.4"}},
              "actors": {"a": {"per_result": "0.0023", "events": {"page": "0.00011"}}}},
    "workflow": {"make": {"default": {"per_operation": "0.00083", "per_execution": "0.0001"}}},
}))  # fmt: skip


@fast
@given(st.integers(0, 10**8), st.integers(0, 10**8), st.integers(0, 10**8), st.integers(0, 10**7),
       st.integers(0, 50))  # fmt: skip
def test_llm_breakdown_sums_exactly_to_total(inp, cached, written, out, images):
    cached, written = min(cached, inp), min(written, max(inp - min(cached, inp), 0))
    usage = LlmUsage(provider="p", model="m", input_tokens=inp, cache_read_tokens=cached,
                     cache_write_tokens=written, output_tokens=out, images=images)  # fmt: skip
    cost = PRICER.price_llm(usage)
    assert sum(c.amount for c in cost.components) == cost.total
    assert all(c.amount == c.amount.quantize(NANO) for c in cost.components)
    exact = (Decimal(inp - cached - written) * Decimal("3.3333") + cached * Decimal("0.0375")
             + written * Decimal("4.17") + out * Decimal("15.01")) / 10**6 + images * Decimal(
        "0.0421") + Decimal("0.0000007")  # fmt: skip
    assert abs(cost.total - exact) <= NANO * len(cost.components)  # rounding per line only


@fast
@given(money, count, st.dictionaries(st.just("page"), count, max_size=1), count)
def test_apify_and_workflow_breakdowns_sum_exactly(cu, results, events, ops):
    run = ApifyRun(actor_id="a", run_id="r", compute_units=cu, results=results,
                   charged_event_counts=events)  # fmt: skip
    cost = PRICER.price_apify(run)
    assert sum(c.amount for c in cost.components) == cost.total
    wf = PRICER.price_workflow(WorkflowRun(platform="make", workflow_id="w", execution_id="x",
                                           operations=ops))  # fmt: skip
    assert sum(c.amount for c in wf.components) == wf.total
    assert wf.total == (Decimal("0.0001") + ops * Decimal("0.00083")).quantize(NANO)


def test_timestamps_keep_microseconds():
    t = datetime(2026, 3, 29, 1, 59, 59, 999999, tzinfo=UTC) + timedelta(microseconds=1)
    event = UsageEvent(event_id="x", occurred_at=t, source="custom",
                       payload=CustomCost(amount=Decimal(1), currency="USD"))  # fmt: skip
    assert UsageEvent.decode(event.encode()).occurred_at == t


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.just(UTC)))  # fmt: skip
def test_micros_round_trip_exactly(when: datetime) -> None:
    """to_micros and from_micros (the times of every priced row and allocation go through
    them) are exact inverses, and to_micros is the plain arithmetic of days, seconds and
    microseconds since 1970."""
    from spendstream.schemas.models import EPOCH, from_micros, to_micros

    micros = to_micros(when)
    delta = when - EPOCH
    assert micros == (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    assert from_micros(micros) == when and from_micros(micros).tzinfo is not None


GENAI_MODELS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("openai", "o3"),
                ("anthropic", "claude-sonnet-4-5"), ("anthropic", "claude-3-5-haiku"),
                ("google", "gemini-2.5-pro"), ("google", "gemini-2.5-flash"),
                ("mistral", "mistral-large-latest"), ("groq", "llama-3.3-70b-versatile")]  # fmt: skip


@fast
@given(st.sampled_from(GENAI_MODELS), st.integers(0, 2 * 10**6), st.integers(0, 10**6),
       st.integers(0, 10**6), st.integers(0, 10**5),
       st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2026, 12, 31),
                    timezones=st.just(UTC)))  # fmt: skip
def test_genai_breakdown_equals_the_librarys_own_price(model, inp, cached, out, written, when):
    """Our per-unit lines (one decomposition) add up to what genai-prices' public
    calc_price bills for the same usage at the same time, tiered prices included."""
    from genai_prices import Usage, calc_price

    cached = min(cached, inp)
    written = min(written, inp - cached)
    usage = LlmUsage(provider=model[0], model=model[1], input_tokens=inp, output_tokens=out,
                     cache_read_tokens=cached, cache_write_tokens=written)  # fmt: skip
    expected = calc_price(
        Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=cached or None,
              cache_write_tokens=written or None),
        model_ref=model[1], provider_id=model[0], genai_request_timestamp=when,
    ).total_price  # fmt: skip
    cost = PRICER.price_llm(usage, when)
    assert sum(c.amount for c in cost.components) == cost.total
    assert abs(cost.total - expected) <= NANO * len(cost.components)  # rounding per line only
