"""Budgets in any currency: reference rates, exact conversion, hold and release.

Conversion rounds once, half-even, per allocation; an allocation whose day has no rate
yet is held in the state (counted toward nothing, visible in the status) and released
when the rate arrives; status spend equals the sum of the converted allocations."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from fractions import Fraction
from types import SimpleNamespace

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendstream.fx_files import FxFileError, parse_rates
from spendstream.schemas import batches
from spendstream.schemas.avro import SINGLE_OBJECT_MAGIC, fingerprint, history_versions
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.checks import CheckRequest
from spendstream.schemas.models import BudgetStatus, to_micros
from spendstream.schemas.money import from_nanos, to_nanos
from spendstream.streams.aggregate_stage import AggregateStage, day_of
from spendstream.streams.aggregation import AlertPolicy, PeriodState, status_of
from spendstream.streams.checkpoint import Checkpoint
from spendstream.streams.fx import Conversion, FxTable, Rate, round_half_even
from spendstream.streams.matching import BudgetRegistry
from spendstream.streams.preflight import check
from spendstream.streams.pricing import Pricer

FRI, SAT, SUN, MON = (date(2026, 11, d) for d in (20, 21, 22, 23))
START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 25, tzinfo=UTC)
EUR_BUDGET = BudgetDefinition(budget_id="eu", name="EU", limit="100", currency="EUR")


def ecb(day: date, **rates: str) -> list[Rate]:
    return [Rate(day, "EUR", quote, Decimal(value)) for quote, value in rates.items()]


# --- rounding and rates ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("num", "den", "want"),
    [(5, 2, 2), (7, 2, 4), (-5, 2, -2), (-7, 2, -4), (1, 3, 0), (2, 3, 1), (-2, 3, -1), (6, 3, 2)],
)
def test_round_half_even(num, den, want):
    assert round_half_even(num, den) == want


@given(st.integers(-(10**20), 10**20), st.integers(1, 10**12))
def test_round_half_even_matches_decimal(num, den):
    with localcontext() as ctx:
        ctx.prec = 80
        exact = Decimal(num) / Decimal(den)
        assert round_half_even(num, den) == int(exact.to_integral_value("ROUND_HALF_EVEN"))


def test_a_day_with_its_own_rate_converts_at_it_exactly():
    fx = FxTable(ecb(FRI, USD="1.0540", GBP="0.8300"))
    usd_to_eur = fx.conversion("USD", "EUR", FRI)
    assert usd_to_eur == Conversion(500, 527, FRI)  # 1 / 1.054
    # 10 USD = 10 / 1.054 EUR = 9.487666034155597... -> 9.487666034 (half-even at 9 places)
    assert from_nanos(usd_to_eur.convert(to_nanos(Decimal(10)))) == Decimal("9.487666034")
    # a cross rate through the base: USD -> GBP = 0.83 / 1.054
    usd_to_gbp = fx.conversion("USD", "GBP", FRI)
    assert Fraction(usd_to_gbp.numerator, usd_to_gbp.denominator) == Fraction("0.83") / Fraction(
        "1.054"
    )
    assert fx.conversion("EUR", "GBP", FRI).rate == Decimal("0.830000000000000000")
    assert fx.conversion("EUR", "EUR", FRI) == Conversion(1, 1, FRI)


def test_a_weekend_waits_for_the_next_rate_then_takes_the_last_one_before_it():
    fx = FxTable(ecb(FRI, USD="1.05"))
    assert fx.conversion("USD", "EUR", SAT) is None  # Monday's rate is not out: no guess
    fx.add(Rate(MON, "EUR", "USD", Decimal("1.06")))
    sat = fx.conversion("USD", "EUR", SAT)
    assert sat is not None and sat.rate_day == FRI and sat.rate == Decimal("0.952380952380952381")
    assert fx.conversion("USD", "EUR", MON).rate_day == MON
    assert fx.conversion("USD", "EUR", MON + timedelta(days=1)) is None
    assert fx.conversion("USD", "EUR", FRI - timedelta(days=30)) is None  # nothing before


def test_a_cross_rate_needs_both_legs_past_the_day():
    fx = FxTable([*ecb(FRI, USD="1.05", GBP="0.83"), *ecb(MON, USD="1.06")])
    assert fx.conversion("USD", "GBP", SAT) is None  # GBP has not moved past Saturday
    fx.add(Rate(MON, "EUR", "GBP", Decimal("0.84")))
    assert fx.conversion("USD", "GBP", SAT).rate_day == FRI


def test_unknown_currencies_and_corrections():
    fx = FxTable(ecb(FRI, USD="1.05"))
    assert fx.conversion("USD", "XYZ", FRI) is None
    version = fx.version
    fx.add(Rate(FRI, "EUR", "USD", Decimal("1.04")))  # a correction replaces the rate
    assert fx.version > version and fx.conversion("EUR", "USD", FRI).rate == Decimal("1.04")
    assert len(fx) == 1
    with pytest.raises(ValueError, match="positive"):
        fx.add(Rate(FRI, "EUR", "USD", Decimal(0)))


def test_latest_uses_the_newest_day_both_currencies_have():
    fx = FxTable([*ecb(FRI, USD="1.05", GBP="0.83"), *ecb(MON, USD="1.06")])
    latest = fx.latest("USD", "GBP")
    assert latest is not None and latest.rate_day == FRI
    assert fx.latest("USD", "EUR").rate_day == MON
    assert FxTable().latest("USD", "EUR") is None


def test_day_of_is_the_utc_day():
    assert day_of(to_micros(datetime(2026, 11, 21, 23, 59, 59, tzinfo=UTC))) == SAT
    assert day_of(to_micros(datetime(1969, 12, 31, 12, tzinfo=UTC))) == date(1969, 12, 31)


# --- files ----------------------------------------------------------------------------------
def test_the_ecb_daily_file():
    text = "Date, USD, JPY, BGN, \n20 November 2026, 1.0540, 161.50, 1.9558, \n"
    rates = parse_rates(text, source="eurofxref.csv")
    assert [(r.day, r.base, r.quote, r.rate) for r in rates] == [
        (FRI, "EUR", "USD", Decimal("1.054")),
        (FRI, "EUR", "JPY", Decimal("161.5")),
        (FRI, "EUR", "BGN", Decimal("1.9558")),
    ]
    assert rates[0].source == "eurofxref.csv" and rates[0].key == "EUR/USD/2026-11-20"


def test_the_ecb_history_file_skips_na():
    text = "Date,USD,CYP,\n2026-11-23,1.06,N/A,\n2026-11-20,1.054,N/A,\n"
    rates = parse_rates(text)
    assert sorted((r.day, r.quote) for r in rates) == [(FRI, "USD"), (MON, "USD")]


def test_a_simple_file_with_another_base():
    rates = parse_rates("date,currency,rate\n2026-11-20,EUR,0.95\n", base="usd")
    assert (rates[0].base, rates[0].quote, rates[0].rate) == ("USD", "EUR", Decimal("0.95"))


def test_every_problem_is_listed_with_its_line_and_nothing_is_kept():
    text = ("date,currency,rate\n2026-11-20,USD,1.05\nyesterday,USD,1\n2026-11-20,US,1\n"
            "2026-11-20,USD,0\n2026-11-20,USD,abc\n2026-11-20,USD\n"
            "2026-11-20,USD,1.0000000000001\n")  # fmt: skip
    with pytest.raises(FxFileError) as err:
        parse_rates(text, source="r.csv")
    message = str(err.value)
    assert "6 problem(s), nothing published" in message
    for line in (3, 4, 5, 6, 7, 8):
        assert f"line {line}:" in message
    assert "12 decimal places" in message and "line 2:" not in message
    with pytest.raises(FxFileError, match="unknown format"):
        parse_rates("a,b\n1,2\n")
    with pytest.raises(FxFileError, match="no rates"):
        parse_rates("\n\n")


# --- the aggregate stage: convert, hold, release ---------------------------------------------
def row(offset: int, amount: str, currency: str, when: datetime, budget: str = "eu") -> list:
    r = [f"e{offset}", budget, budget, "2026-11", to_micros(START), to_micros(END),
         to_micros(when), to_nanos(Decimal(amount)), currency, "llm", "openai", "m",
         "", "", "", "", "", "", {}, "usage.llm", 0, offset]  # fmt: skip
    return batches.decode(batches.encode(batches.ALLOCATIONS_V1, [r]))[1][0]


def source(partition: int) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(partition=partition))


SAT_NOON = datetime(2026, 11, 21, 12, tzinfo=UTC)
FRI_NOON = datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_held_until_the_rate_then_released_with_the_tier_alerts_it_crosses():
    fx = FxTable(ecb(FRI, USD="1.25"))
    stage = AggregateStage(BudgetRegistry([EUR_BUDGET]), fx=fx)
    table: dict[str, str] = {}
    rows = [row(1, "50", "USD", FRI_NOON), row(2, "75", "USD", SAT_NOON),
            row(3, "10", "EUR", SAT_NOON)]  # fmt: skip
    first = stage.process([(source(3), rows)], lambda k: PeriodState.loads(table.get(k)), NOW)
    state = first.states["eu|2026-11"]
    # Friday: 50 / 1.25 = 40 EUR; Saturday's USD waits; the EUR amount counts as billed
    assert state.spent == Decimal(50) and state.count == 2 and state.partition == 3
    assert state.held == [["e2", to_nanos(Decimal(75)), "USD", to_micros(SAT_NOON)]]
    assert first.counters["fx_held"] == 1 and first.counters["fx_converted"] == 1
    (conv,) = first.conversions
    C = batches.C
    assert conv[C["budget_amount_nanos"]] == to_nanos(Decimal(40)) and conv[C["rate_day"]] == (
        "2026-11-20"
    )
    status = status_of(EUR_BUDGET, "2026-11", state, NOW)
    assert status.held_allocations == 1 and status.held_amounts == {"USD": Decimal(75)}
    assert [a.alert_id.rsplit(":", 1)[1] for a in first.alerts] == ["50"]
    table["eu|2026-11"] = state.dumps()

    # a replay of the held allocation does not hold it twice
    again = stage.process([(source(3), rows[1:2])], lambda k: PeriodState.loads(table[k]), NOW)
    assert again.states == {} and again.counters["replayed_allocations"] == 1

    # nothing to release until Monday's rate is out; then Friday's rate applies
    stored = PeriodState.loads(table["eu|2026-11"])
    assert stage.release([("eu|2026-11", stored, "here")], NOW).states == {}
    fx.add(Rate(MON, "EUR", "USD", Decimal("1.30")))
    released = stage.release([("eu|2026-11", stored, "here")], NOW)
    assert released.states["eu|2026-11"] is stored and released.sources["eu|2026-11"] == "here"
    assert stored.held == [] and stored.spent == Decimal(110) and stored.count == 3  # +60
    assert released.counters["fx_released"] == 1 and released.last_event == {"eu|2026-11": "e2"}
    tiers = sorted(a.alert_id.rsplit(":", 1)[1] for a in released.alerts)
    assert tiers == ["100", "75", "90", "exceeded"]
    assert all(a.triggered_by == "e2" for a in released.alerts)
    (conv,) = released.conversions
    assert conv[C["rate_day"]] == "2026-11-20" and conv[C["rate"]] == "0.800000000000000000"
    assert PeriodState.loads(stored.dumps()) == stored  # held and partition survive JSON


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**13), st.sampled_from(["USD", "GBP", "EUR"]), st.integers(0, 9)
        ),  # fmt: skip
        min_size=1,
        max_size=30,
    ),
    st.integers(0, 11),
    st.lists(st.integers(0, 3), min_size=8, max_size=8),
)
def test_status_equals_the_sum_of_converted_allocations_whatever_the_order(
    allocations, published_first, published_per_batch
):
    """However rates (published day by day, as the ECB does) and allocations interleave,
    every allocation counts exactly once, at its own day's rate rounded once; the state's
    spend is the sum of the conversions."""
    days = [date(2026, 11, 2) + timedelta(days=d) for d in range(11)]
    rates = {d: (Decimal(f"1.{1000 + i * 37}"), Decimal(f"0.8{500 + i * 11}"))
             for i, d in enumerate(days)}  # fmt: skip
    pending = list(days)

    def publish(fx: FxTable, n: int) -> None:
        for _ in range(min(n, len(pending))):
            day = pending.pop(0)
            usd, gbp = rates[day]
            fx.add(Rate(day, "EUR", "USD", usd))
            fx.add(Rate(day, "EUR", "GBP", gbp))

    fx = FxTable()
    publish(fx, published_first)
    stage = AggregateStage(BudgetRegistry([EUR_BUDGET]), fx=fx)
    state = PeriodState()
    conversions: list[list] = []
    rows = [row(i, str(from_nanos(n)), c, datetime.combine(days[d], datetime.min.time(), UTC))
            for i, (n, c, d) in enumerate(allocations)]  # fmt: skip
    for step, i in enumerate(range(0, len(rows), 4)):
        result = stage.process([(source(0), rows[i : i + 4])], lambda k: state, NOW)
        conversions += result.conversions
        publish(fx, published_per_batch[step % 8])
        conversions += stage.release([("eu|2026-11", state, "p")], NOW).conversions
    publish(fx, len(pending))
    conversions += stage.release([("eu|2026-11", state, "p")], NOW).conversions
    assert state.held == []  # every day's rate is out now: everything converted
    C = batches.C
    eur = sum(n for n, c, _ in allocations if c == "EUR")
    assert state.spent_nanos == eur + sum(c[C["budget_amount_nanos"]] for c in conversions)
    assert sorted(c[C["event_id"]] for c in conversions) == sorted(
        f"e{i}" for i, (_, c, _) in enumerate(allocations) if c != "EUR"
    )
    for conv in conversions:
        n, currency, d = allocations[int(conv[C["event_id"]][1:])]
        usd, gbp = rates[days[d]]
        exact = Fraction(n) / Fraction(usd if currency == "USD" else gbp)
        assert abs(conv[C["budget_amount_nanos"]] - exact) <= Fraction(1, 2)  # rounded once
        assert conv[C["rate_day"]] == days[d].isoformat()


def test_a_checkpoint_writes_a_release_without_input_records():
    sent: list = []
    written: dict = {}
    clock = [0.0]

    async def drain() -> None:
        sent.append("drain")

    cp = Checkpoint(BudgetRegistry([EUR_BUDGET]), AlertPolicy(),
                    write_state=lambda k, s, src: written.__setitem__(k, src),
                    send_alert=sent.append, send_status=lambda k, s: sent.append(s),
                    drain=drain, finish=lambda records: sent.append(("finish", records)),
                    send_conversions=lambda rows: sent.append(("conv", len(rows))),
                    interval_s=1.0, clock=lambda: clock[0])  # fmt: skip
    fx = FxTable(ecb(FRI, USD="1.25"))
    stage = AggregateStage(BudgetRegistry([EUR_BUDGET]), fx=fx)
    state = PeriodState()
    stage.process([(source(1), [row(1, "5", "USD", SAT_NOON)])], lambda k: state, NOW)
    fx.add(Rate(MON, "EUR", "USD", Decimal(2)))
    import asyncio

    asyncio.run(cp.batch(stage.release([("eu|2026-11", state, "ref")], NOW), []))
    assert ("conv", 1) in sent and not cp.due()
    clock[0] = 1.5
    assert cp.due()  # dirty states without records are due too
    asyncio.run(cp.commit(NOW))
    assert written == {"eu|2026-11": "ref"} and ("finish", []) in sent


# --- status contract and pre-flight ----------------------------------------------------------
def test_a_status_written_before_v3_still_decodes():
    (v1, v2) = history_versions("BudgetStatus")
    status = status_of(BudgetDefinition(budget_id="b", name="B", limit="10"), "2026-11",
                       PeriodState(period_start_us=to_micros(START),
                                   period_end_us=to_micros(END)), NOW)  # fmt: skip
    record = status.to_avro()
    for field in ("held_allocations", "held_amounts"):
        record.pop(field)
    parsed = fastavro.parse_schema(v2)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    data = SINGLE_OBJECT_MAGIC + fingerprint(parsed) + buf.getvalue()
    from spendstream.schemas.avro import codec

    back = BudgetStatus.from_avro(codec("BudgetStatus").decode(data))
    assert back.held_allocations == 0 and back.held_amounts == {} and back.spent == 0


def test_preflight_weighs_a_call_in_the_budget_currency_or_says_it_cannot():
    budget = BudgetDefinition(budget_id="eu", name="EU", limit="100", currency="EUR",
                              scope={"org": "acme"})  # fmt: skip
    request = CheckRequest.model_validate(
        {"estimated_cost": "10", "currency": "USD", "attributes": {"org": "acme"}}
    )
    spent = {"eu|2026-11": Decimal(70)}.get
    blind = check(request, BudgetRegistry([budget]), spent, Pricer(), NOW, FxTable())
    (v,) = blind.budgets
    assert v.decision == "warn" and "no USD->EUR exchange rate" in v.reason
    known = check(request, BudgetRegistry([budget]), spent, Pricer(), NOW,
                  FxTable(ecb(FRI, USD="1.25")))  # fmt: skip
    (v,) = known.budgets
    assert v.cost_in_budget_currency == Decimal(8) and v.spent_after == Decimal(78)
    assert v.currency == "EUR" and v.rate == Decimal("0.8")
