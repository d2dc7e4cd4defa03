from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import to_micros
from spendstream.streams.periods import (
    LateWindow,
    PeriodError,
    budget_period,
    open_since,
    period_of,
    previous_period,
)

BERLIN = ZoneInfo("Europe/Berlin")
NY = ZoneInfo("America/New_York")


def test_monthly_utc_boundaries_and_key():
    p = period_of("monthly", datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC), ZoneInfo("UTC"))
    assert p.key == "2026-02"
    assert p.start == datetime(2026, 2, 1, tzinfo=UTC)
    assert p.end == datetime(2026, 3, 1, tzinfo=UTC)


def test_leap_year_february_has_29_days():
    p = period_of("monthly", datetime(2028, 2, 29, 12, tzinfo=UTC), ZoneInfo("UTC"))
    assert p.length == timedelta(days=29)


def test_month_is_taken_in_the_budget_time_zone():
    # 23:30 UTC on Jan 31 is already Feb 1 in Berlin
    when = datetime(2026, 1, 31, 23, 30, tzinfo=UTC)
    assert period_of("monthly", when, ZoneInfo("UTC")).key == "2026-01"
    p = period_of("monthly", when, BERLIN)
    assert p.key == "2026-02"
    assert p.start == datetime(2026, 1, 31, 23, 0, tzinfo=UTC)


def test_dst_spring_forward_day_has_23_hours():
    p = period_of("daily", datetime(2026, 3, 29, 12, tzinfo=UTC), BERLIN)
    assert p.length == timedelta(hours=23)
    autumn = period_of("daily", datetime(2026, 10, 25, 12, tzinfo=UTC), BERLIN)
    assert autumn.length == timedelta(hours=25)


def test_week_starts_monday_local_and_has_iso_key():
    # Sunday 2026-11-29 22:00 in New York is Monday 03:00 UTC
    when = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
    p = period_of("weekly", when, NY)
    assert p.start.astimezone(NY) == datetime(2026, 11, 23, tzinfo=NY)
    assert p.key == "2026-W48"
    assert period_of("weekly", when, ZoneInfo("UTC")).key == "2026-W49"


def test_quarter_and_annual():
    q = period_of("quarterly", datetime(2026, 8, 15, tzinfo=UTC), ZoneInfo("UTC"))
    assert (q.key, q.start.month, q.end.month) == ("2026-Q3", 7, 10)
    q4 = period_of("quarterly", datetime(2026, 12, 31, tzinfo=UTC), ZoneInfo("UTC"))
    assert q4.end == datetime(2027, 1, 1, tzinfo=UTC)
    y = period_of("annual", datetime(2026, 12, 31, 23, 59, tzinfo=UTC), ZoneInfo("UTC"))
    assert (y.key, y.end) == ("2026", datetime(2027, 1, 1, tzinfo=UTC))


def test_custom_period_only_covers_its_range():
    b = BudgetDefinition(
        budget_id="launch",
        name="launch",
        limit="100",
        period="custom",
        custom_start=datetime(2026, 11, 10, tzinfo=UTC),
        custom_end=datetime(2026, 11, 20, tzinfo=UTC),
    )
    assert budget_period(b, datetime(2026, 11, 15, tzinfo=UTC)) is not None
    assert budget_period(b, datetime(2026, 11, 20, tzinfo=UTC)) is None
    assert previous_period(b, budget_period(b, datetime(2026, 11, 15, tzinfo=UTC))) is None


def test_previous_period_crosses_year_end():
    b = BudgetDefinition(budget_id="b", name="b", limit="1", period="monthly")
    jan = budget_period(b, datetime(2027, 1, 5, tzinfo=UTC))
    assert previous_period(b, jan).key == "2026-12"


def test_naive_time_and_unknown_kind_are_rejected():
    with pytest.raises(PeriodError):
        period_of("monthly", datetime(2026, 1, 1), ZoneInfo("UTC"))
    with pytest.raises(PeriodError):
        period_of("fortnightly", datetime(2026, 1, 1, tzinfo=UTC), ZoneInfo("UTC"))


def test_late_window_equals_open_since_across_periods_and_definition_changes():
    """The cached answer is the uncached one at every arrival: arrivals walking forward
    and back across month ends in Berlin, and after the budget's definition changes
    (daily from monthly: same id, a new definition object)."""
    monthly = BudgetDefinition(budget_id="b", name="b", limit=1, period="monthly",
                               timezone="Europe/Berlin")  # fmt: skip
    daily = monthly.model_copy(update={"period": "daily"})
    window = LateWindow(late_periods=1)
    start = datetime(2026, 1, 30, tzinfo=UTC)
    hours = [*range(0, 24 * 5, 7), *range(24 * 5, 0, -11)]
    for budget in (monthly, daily, monthly):
        for h in hours:
            now = start + timedelta(hours=h)
            want = open_since(budget, now, 1)
            assert want is not None
            assert window.oldest_open(budget, now) == want.start
            assert window.oldest_open_us(budget, to_micros(now)) == to_micros(want.start)
    assert LateWindow(None).oldest_open(monthly, start) is None
