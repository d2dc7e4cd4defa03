"""Burn rate, projection band, forecast and anomaly alerts, cooldown: pure logic."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import CostAllocation, SourcePosition, to_micros
from spendstream.streams.aggregation import AlertPolicy, PeriodState, due_alerts, status_of
from spendstream.streams.forecast import US_PER_HOUR, detect_anomaly, project

START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)


def test_projection_is_spent_plus_rate_times_days_left():
    # 3 USD over the first 10 days of a 30-day month: 0.3/day, 20 days left -> 9
    daily = {d: 300_000_000 for d in range(10)}
    p = project(3_000_000_000, daily, to_micros(START), to_micros(END),
                to_micros(START + timedelta(days=10)), Decimal(10))  # fmt: skip
    assert p.burn_rate_per_day == Decimal("0.3")
    assert p.projected == Decimal("9")
    assert p.days_left == Decimal(20)
    assert p.days_to_limit == Decimal("23.3333")  # (10 - 3) / 0.3
    # perfectly even spend: no spread, the band collapses to the projection
    assert p.low == p.high == p.projected
    assert p.elapsed_fraction == Decimal(1) / 3


def test_band_widens_with_uneven_spend_and_never_drops_below_spent():
    even = {d: 100_000_000 for d in range(10)}
    bursty = {d: (1_000_000_000 if d % 10 == 0 else 0) for d in range(10)}
    now = to_micros(START + timedelta(days=10))
    a = project(1_000_000_000, even, to_micros(START), to_micros(END), now, Decimal(10))
    b = project(1_000_000_000, bursty, to_micros(START), to_micros(END), now, Decimal(10))
    assert a.projected == b.projected == Decimal(3)
    assert b.high - b.low > a.high - a.low
    assert b.low >= Decimal(1)  # at least what is already spent
    # std of [1, 0 x 9] = sqrt(0.1) = 0.316227766..; half width = 1.96 * std * sqrt(20)
    assert b.high == Decimal("5.771858582")


def test_early_in_a_period_the_band_is_wide_and_no_spend_never_reaches_the_limit():
    p = project(0, {}, to_micros(START), to_micros(END), to_micros(START), Decimal(10))
    assert p.projected == 0 and p.days_to_limit is None
    q = project(1_000_000_000, {0: 1_000_000_000}, to_micros(START), to_micros(END),
                to_micros(START + timedelta(hours=12)), Decimal(10))  # fmt: skip
    assert q.low == Decimal(1) and q.high == Decimal(1) + 2 * (q.projected - Decimal(1))


def test_exceeded_budget_has_zero_days_to_limit():
    p = project(11_000_000_000, {0: 11_000_000_000}, to_micros(START), to_micros(END),
                to_micros(START + timedelta(days=1)), Decimal(10))  # fmt: skip
    assert p.days_to_limit == 0


def test_anomaly_needs_history_and_a_spike_over_the_baseline():
    hourly = {h: 1_000_000 for h in range(100, 148)}  # 0.001 per hour for two days
    hourly[148] = 10_000_000  # 10x
    kw = {"factor": Decimal(5), "min_amount": Decimal("0.001")}
    found = detect_anomaly(hourly, 148, first_hour=100, **kw)
    assert found and found.spent == Decimal("0.01") and found.baseline == Decimal("0.001")
    assert detect_anomaly(hourly, 148, first_hour=130, **kw) is None  # 18 h of history only
    hourly[148] = 4_000_000  # 4x: normal variation
    assert detect_anomaly(hourly, 148, first_hour=100, **kw) is None
    hourly[148] = 10_000_000
    assert detect_anomaly(hourly, 148, first_hour=100, factor=Decimal(5),
                          min_amount=Decimal("0.1")) is None  # fmt: skip  # too small to matter


def alloc(offset: int, amount: str, when: datetime) -> CostAllocation:
    return CostAllocation(
        allocation_id=f"e{offset}/b", event_id=f"e{offset}", budget_id="b", matched_via="b",
        period_key="2026-11", period_start=START, period_end=END, occurred_at=when,
        amount=Decimal(amount), currency="USD", source="llm", attributes={},
        origin=SourcePosition(topic="usage.llm", partition=0, offset=offset),
    )  # fmt: skip


def steady_state(hours: int = 48) -> PeriodState:
    state = PeriodState()
    for h in range(hours):  # 0.01 USD an hour from Nov 1
        state.apply(alloc(h, "0.01", START + timedelta(hours=h)))
    return state


BUDGET = BudgetDefinition(budget_id="b", name="b", limit="100")
NOW = datetime(2026, 11, 3, tzinfo=UTC)


def kinds(alerts):
    return [a.alert_id.split(":", 2)[2] for a in alerts]


def test_anomaly_alert_fires_once_then_cooldown_holds_the_next_one():
    state = steady_state()
    policy = AlertPolicy(cooldown_us=6 * US_PER_HOUR)
    assert due_alerts(BUDGET, "2026-11", state, NOW, None, policy) == []
    state.apply(alloc(100, "2", START + timedelta(hours=48, minutes=5)))  # 200x the baseline
    spike = due_alerts(BUDGET, "2026-11", state, NOW, "e100", policy)
    assert kinds(spike) == ["anomaly:498240"]  # epoch hour of the spike
    assert spike[0].kind == "anomaly" and spike[0].triggered_by == "e100"
    assert due_alerts(BUDGET, "2026-11", state, NOW, None, policy) == []  # once per hour
    state.apply(alloc(101, "3", START + timedelta(hours=50)))  # next spike inside cooldown
    assert due_alerts(BUDGET, "2026-11", state, NOW, None, policy) == []
    state.apply(alloc(102, "9", START + timedelta(hours=55)))  # after the cooldown
    assert kinds(due_alerts(BUDGET, "2026-11", state, NOW, None, policy)) == ["anomaly:498247"]


def test_forecast_alert_waits_for_enough_of_the_period_and_fires_once():
    budget = BudgetDefinition(budget_id="b", name="b", limit="1")
    state = PeriodState()
    state.apply(alloc(1, "0.1", START + timedelta(days=1)))  # 3.3% elapsed: too early
    policy = AlertPolicy(forecast_min_elapsed=Decimal("0.1"))
    assert "forecast" not in kinds(due_alerts(budget, "2026-11", state, NOW, None, policy))
    state.apply(alloc(2, "0.1", START + timedelta(days=4)))  # 0.2 in 4 days -> 1.5 projected
    fired = [a for a in due_alerts(budget, "2026-11", state, NOW, None, policy)
             if a.kind == "forecast"]  # fmt: skip
    assert len(fired) == 1 and fired[0].severity == "warning"
    assert "1.50 USD by the end of 2026-11" in fired[0].message
    state.apply(alloc(3, "0.01", START + timedelta(days=5)))
    assert "forecast" not in kinds(due_alerts(budget, "2026-11", state, NOW, None, policy))


def test_replay_of_the_same_allocations_emits_nothing_new():
    state = steady_state()
    state.apply(alloc(100, "60", START + timedelta(hours=48)))
    first = due_alerts(BUDGET, "2026-11", state, NOW, None)
    # 2 of 30 days gone: too early for a forecast alert (forecast_min_elapsed 0.1)
    assert kinds(first) == ["threshold:50", "anomaly:498240"]
    for h in range(48):
        assert not state.apply(alloc(h, "0.01", START + timedelta(hours=h)))
    assert due_alerts(BUDGET, "2026-11", state, NOW, None) == []


def test_status_carries_burn_rate_projection_and_active_alerts():
    state = steady_state()  # 0.48 over 2 days
    state.apply(alloc(100, "60", START + timedelta(hours=48)))
    due_alerts(BUDGET, "2026-11", state, NOW, None)
    status = status_of(BUDGET, "2026-11", state, NOW, resolved=["b:2026-11:threshold:50"])
    assert status.burn_rate_per_day == Decimal("30.24")  # 60.48 over 2 days
    assert status.projected_total == Decimal("907.2")
    assert status.days_left == Decimal(28)
    assert status.projected_low is not None and status.projected_low >= status.spent
    assert status.active_alerts == ["b:2026-11:anomaly:498240"]
    assert status.alerted_tiers == ["threshold:50", "anomaly:498240"]
    assert status.days_to_limit == Decimal("1.3069")  # (100 - 60.48) / 30.24


def test_state_with_buckets_round_trips_through_json():
    state = steady_state(30)
    assert PeriodState.from_json(state.to_json()) == state


def test_a_late_stale_status_never_rolls_a_budget_back() -> None:
    """A worker that lost the partition may publish its last status after the new
    owner's: readers keep the status that counted more."""
    from decimal import Decimal

    from spendstream.readback import newer_status
    from spendstream.schemas.models import BudgetStatus

    def status(count: int, spent: str) -> BudgetStatus:
        fields = {name: None for name in BudgetStatus.model_fields}
        base = BudgetStatus.model_construct(**fields)
        return base.model_copy(update={"event_count": count, "spent": Decimal(spent)})

    newer, stale = status(120, "11.054625"), status(119, "11.053954")
    assert newer_status(None, stale)
    assert newer_status(stale, newer)
    assert not newer_status(newer, stale)


@settings(max_examples=300, deadline=None)
@given(
    days=st.dictionaries(st.integers(0, 40), st.integers(0, 10**13), max_size=41),
    elapsed_days=st.integers(2, 29),
)
def test_the_band_equals_the_textbook_sample_variance(days, elapsed_days):
    """project() sums integers for the variance (one division); the textbook way, mean
    then squared deviations in Decimal, gives the same band to the nano-unit."""
    now = to_micros(START + timedelta(days=elapsed_days, hours=6))
    spent = sum(v for d, v in days.items() if d <= elapsed_days)
    p = project(spent, days, to_micros(START), to_micros(END), now, Decimal(10))
    values = [Decimal(days.get(d, 0)) for d in range(elapsed_days)]
    mean = sum(values, Decimal(0)) / len(values)
    variance = sum(((v - mean) ** 2 for v in values), Decimal(0)) / (len(values) - 1)
    days_left = Decimal(to_micros(END) - now) / (24 * US_PER_HOUR)
    half = Decimal("1.96") * variance.sqrt() * days_left.sqrt() * Decimal("1e-9")
    assert abs(p.high - (p.projected + half)) <= Decimal("1e-9")
