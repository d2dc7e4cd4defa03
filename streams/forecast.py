"""Burn rate, end-of-period projection with a confidence band, and spend anomalies.

Pure functions over integer nano-units and microsecond instants, so the stream, the
HTTP API and the tests compute the same figures. The clock is passed in: the stream uses
event time (a replay computes what the live run computed), the API uses the wall clock.

Projection: spend so far plus the average daily rate times the days left. The band is
that projection plus or minus 1.96 standard deviations of a sum of the remaining days'
spend, estimated from the complete days seen so far (a random walk: the spread grows with
the square root of the days left). With fewer than two complete days there is no spread
to estimate yet; the band is then [spent, spent + 2 x rate x days left].

Anomaly: the spend of the latest hour against the budget's own hourly baseline over the
preceding week (hours with no spend count as zero), once at least a day of history exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from spendstream.schemas.money import from_nanos

US_PER_HOUR = 3_600_000_000
US_PER_DAY = 24 * US_PER_HOUR
Z_95 = Decimal("1.96")
NANO = Decimal("0.000000001")


@dataclass(frozen=True)
class Projection:
    burn_rate_per_day: Decimal
    projected: Decimal
    low: Decimal
    high: Decimal
    days_left: Decimal
    #: days until the limit is reached at the current burn rate; None when it never is
    days_to_limit: Decimal | None
    elapsed_fraction: Decimal


def project(
    spent_nanos: int,
    daily_nanos: Mapping[int, int],
    period_start_us: int,
    period_end_us: int,
    now_us: int,
    limit: Decimal,
) -> Projection:
    """Projection of the period's total at ``now_us``; ``daily_nanos`` maps day index
    (whole days since the period start) to spend on that day."""
    length = max(period_end_us - period_start_us, 1)
    now_us = min(max(now_us, period_start_us), period_end_us)
    elapsed = max(now_us - period_start_us, US_PER_HOUR // 60)  # at least a minute
    left_us = period_end_us - now_us
    spent = from_nanos(spent_nanos)
    rate = spent * US_PER_DAY / elapsed
    days_left = Decimal(left_us) / US_PER_DAY
    projected = spent + rate * days_left
    complete_days = (now_us - period_start_us) // US_PER_DAY
    if complete_days >= 2:
        # the sample variance from integer sums, exact until its one division: asked once
        # per alert and per changed budget and checkpoint, the Decimal arithmetic per day
        # (mean, squared deviations) cost ~30 us for a month, ten times that for a year
        n, total, squares = complete_days, 0, 0
        for day, nanos in daily_nanos.items():
            if 0 <= day < n:
                total += nanos
                squares += nanos * nanos
        variance = Decimal(n * squares - total * total) / Decimal(n * (n - 1))
        half = Z_95 * variance.sqrt() * days_left.sqrt() * NANO  # std in nanos -> money
        low, high = max(spent, projected - half), projected + half
    else:
        low, high = spent, spent + 2 * rate * days_left
    remaining = limit - spent
    if remaining <= 0:
        to_limit: Decimal | None = Decimal(0)
    elif rate > 0:
        to_limit = remaining / rate
    else:
        to_limit = None
    return Projection(
        burn_rate_per_day=rate.quantize(NANO),
        projected=projected.quantize(NANO),
        low=low.quantize(NANO),
        high=high.quantize(NANO),
        days_left=days_left.quantize(Decimal("0.0001")),
        days_to_limit=to_limit.quantize(Decimal("0.0001")) if to_limit is not None else None,
        elapsed_fraction=Decimal(now_us - period_start_us) / length,
    )


@dataclass(frozen=True)
class Anomaly:
    hour: int
    spent: Decimal
    baseline: Decimal  # mean hourly spend over the baseline window


def detect_anomaly(
    hourly_nanos: Mapping[int, int],
    hour: int,
    *,
    first_hour: int,
    factor: Decimal,
    min_amount: Decimal,
    min_history_hours: int = 24,
    window_hours: int = 168,
) -> Anomaly | None:
    """An anomaly when hour ``hour`` spent more than ``factor`` times the mean hourly spend
    of the preceding window and at least ``min_amount``; None otherwise or with too little
    history (hours since ``first_hour`` below ``min_history_hours``)."""
    history = min(window_hours, hour - first_hour)
    if history < min_history_hours:
        return None
    current = from_nanos(hourly_nanos.get(hour, 0))
    if current < min_amount or current <= 0:
        return None
    prior = sum(hourly_nanos.get(h, 0) for h in range(hour - history, hour))
    baseline = from_nanos(prior) / history
    if current <= factor * baseline:
        return None
    return Anomaly(hour=hour, spent=current, baseline=baseline.quantize(NANO))
