"""Calendar-aligned budget periods in the budget's IANA time zone.

Boundaries are local midnights (Monday for weeks, the 1st for months, Jan/Apr/Jul/Oct
for quarters), converted to UTC, so DST days last 23 or 25 hours and month ends are
right. The event's own time decides its period, never its arrival time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from spendstream.errors import UserError
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import from_micros, to_micros


class PeriodError(UserError, ValueError):
    pass


@dataclass(frozen=True, order=True)
class Period:
    """[start, end) in UTC plus a stable human key such as '2026-11' or '2026-W48'."""

    start: datetime
    end: datetime
    key: str

    def contains(self, when: datetime) -> bool:
        return self.start <= when < self.end

    @property
    def length(self) -> timedelta:
        return self.end - self.start


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + (day.month - 1) + months
    return date(index // 12, index % 12 + 1, 1)


def period_of(
    kind: str,
    when: datetime,
    zone: ZoneInfo,
    custom: tuple[datetime, datetime] | None = None,
) -> Period:
    """The period of ``kind`` containing instant ``when`` (aware) in time zone ``zone``."""
    if when.tzinfo is None:
        raise PeriodError("event time must be time-zone aware")
    local = when.astimezone(zone).date()
    if kind == "daily":
        start, end, key = local, local + timedelta(days=1), local.isoformat()
    elif kind == "weekly":
        start = local - timedelta(days=local.weekday())
        iso = start.isocalendar()
        end, key = start + timedelta(days=7), f"{iso.year}-W{iso.week:02d}"
    elif kind == "monthly":
        start = local.replace(day=1)
        end, key = _add_months(start, 1), f"{start.year}-{start.month:02d}"
    elif kind == "quarterly":
        quarter = (local.month - 1) // 3
        start = date(local.year, quarter * 3 + 1, 1)
        end, key = _add_months(start, 3), f"{start.year}-Q{quarter + 1}"
    elif kind == "annual":
        start = date(local.year, 1, 1)
        end, key = date(local.year + 1, 1, 1), f"{local.year}"
    elif kind == "custom":
        if custom is None:
            raise PeriodError("custom period needs a start and an end")
        cstart, cend = (t.astimezone(UTC) for t in custom)
        key = f"{cstart:%Y%m%dT%H%M}-{cend:%Y%m%dT%H%M}"
        return Period(cstart, cend, key)
    else:
        raise PeriodError(f"unknown period '{kind}'")
    return Period(_local_midnight(start, zone), _local_midnight(end, zone), key)


def budget_period(budget: BudgetDefinition, when: datetime) -> Period | None:
    """The budget's period holding ``when``; None when a custom budget does not cover it."""
    custom = None
    if budget.period == "custom":
        assert budget.custom_start and budget.custom_end
        custom = (budget.custom_start, budget.custom_end)
    period = period_of(budget.period, when, budget.zone, custom)
    if budget.period == "custom" and not period.contains(when.astimezone(UTC)):
        return None
    return period


def previous_period(budget: BudgetDefinition, period: Period) -> Period | None:
    """The period just before ``period`` (None for custom budgets, which have one period)."""
    if budget.period == "custom":
        return None
    return budget_period(budget, period.start - timedelta(microseconds=1))


def open_since(budget: BudgetDefinition, now: datetime, late_periods: int) -> Period | None:
    """The oldest period of ``budget`` that still accepts events at ``now``: the current
    period and ``late_periods`` before it. None for custom budgets (their one window is
    the bound) and when ``now`` lies outside a custom window."""
    if budget.period == "custom":
        return None
    period = budget_period(budget, now)
    for _ in range(late_periods):
        if period is None:
            break
        period = previous_period(budget, period)
    return period


class LateWindow:
    """Where each budget's oldest period still open to late events starts, as of an
    arrival time; remembered while the arrival stays in the same current period (both
    price paths ask it for every event and budget, so the check is two integer
    comparisons and an identity test: a changed budget is a new definition object)."""

    def __init__(self, late_periods: int | None) -> None:
        self.late_periods = late_periods
        # budget_id -> (oldest open period start, current period start, end: microseconds;
        # the definition they were computed for)
        self._open: dict[str, tuple[int, int, int, BudgetDefinition]] = {}

    def oldest_open(self, budget: BudgetDefinition, now: datetime) -> datetime | None:
        """Start of the oldest period of ``budget`` open to late events at ``now``; None
        when lateness is unbounded or the budget is custom."""
        found = self.oldest_open_us(budget, to_micros(now))
        return None if found is None else from_micros(found)

    def oldest_open_us(self, budget: BudgetDefinition, now_us: int) -> int | None:
        """``oldest_open`` in microseconds since the epoch."""
        if self.late_periods is None or budget.period == "custom":
            return None
        cached = self._open.get(budget.budget_id)
        if cached is not None and cached[3] is budget and cached[1] <= now_us < cached[2]:
            return cached[0]
        now = from_micros(now_us)
        current = budget_period(budget, now)
        oldest = open_since(budget, now, self.late_periods)
        if current is None or oldest is None:
            return None
        if len(self._open) > 100_000:
            self._open.clear()
        start = to_micros(oldest.start)
        self._open[budget.budget_id] = (
            start,
            to_micros(current.start),
            to_micros(current.end),
            budget,
        )
        return start
