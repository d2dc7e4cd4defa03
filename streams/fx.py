"""Exchange rates and conversion of spend into a budget's currency.

Costs stay in the currency the provider bills; a budget may be in another. An allocation
converts at the reference rate of its event's day (UTC), exactly: the amount in nano-units
times the ratio of two reference rates, rounded once, half-even, to a nano-unit. Nothing is
ever guessed: when the day's rate is not known the allocation is held until it is.

"The rate of a day": reference rates are published per business day (the ECB publishes
none on weekends and TARGET holidays). A day's rate is the rate dated that day; a day
without one uses the most recent earlier rate, but only once a rate dated after it has been
published for both currencies (the publisher has moved past the day, so it will not get
one of its own). Until then the allocation waits: a Saturday's spend converts when
Monday's rates arrive, at Friday's rate, and the stored rate date says Friday. So rates
are published day by day, in order (the ECB's files are): a later day's rate closes the
days before it.

Rates are "1 <base> = rate <quote>" (the ECB's are EUR-based); a pair of currencies
converts through any base both are quoted against (a base converts to its quotes
directly).
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import NamedTuple

#: decimal places of a stored (cross) rate; the conversion itself uses the exact ratio
RATE_PLACES = 18


class Conversion(NamedTuple):
    """How an amount of one day converts: ``amount * numerator / denominator``."""

    numerator: int
    denominator: int
    rate_day: date

    @property
    def rate(self) -> Decimal:
        """The rate as stored and shown (the exact ratio, rounded to 18 places)."""
        with localcontext() as ctx:
            ctx.prec = 60
            value = Decimal(self.numerator) / Decimal(self.denominator)
            return value.quantize(Decimal(1).scaleb(-RATE_PLACES))

    def convert(self, nanos: int) -> int:
        """``nanos`` in the target currency, rounded once, half-even (exact integers)."""
        return round_half_even(nanos * self.numerator, self.denominator)


def round_half_even(numerator: int, denominator: int) -> int:
    """numerator / denominator (denominator > 0) rounded half-even to an integer."""
    quotient, remainder = divmod(numerator, denominator)  # floor division: remainder >= 0
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


@dataclass(frozen=True)
class Rate:
    """One published reference rate: 1 ``base`` = ``rate`` ``quote`` on ``day``."""

    day: date
    base: str
    quote: str
    rate: Decimal

    @property
    def key(self) -> str:
        """Its key on the compacted fx-rates topic: a correction replaces the rate."""
        return f"{self.base}/{self.quote}/{self.day.isoformat()}"


class _Series:
    """One currency's rates against one base, by day."""

    __slots__ = ("days", "rates")

    def __init__(self) -> None:
        self.days: list[date] = []
        self.rates: dict[date, Fraction] = {}

    def put(self, day: date, rate: Fraction) -> None:
        if day not in self.rates:
            self.days.insert(bisect_left(self.days, day), day)
        self.rates[day] = rate


class FxTable:
    """Every reference rate known, read by the aggregator, the pre-flight check and tests.

    Thread-safe for one writer (the feed) and readers; ``version`` changes with every rate
    added, so a reader knows when held allocations may have become convertible."""

    def __init__(self, rates: list[Rate] | None = None) -> None:
        self._series: dict[str, dict[str, _Series]] = {}  # base -> quote -> series
        self._cache: dict[tuple[str, str, date], Conversion | None] = {}
        self._lock = threading.Lock()
        self.version = 0
        for rate in rates or []:
            self.add(rate)

    def add(self, rate: Rate) -> None:
        if rate.rate <= 0:
            raise ValueError(f"rate {rate.key} must be positive, got {rate.rate}")
        with self._lock:
            quotes = self._series.setdefault(rate.base, {})
            quotes.setdefault(rate.quote, _Series()).put(rate.day, Fraction(rate.rate))
            self._cache = {}
            self.version += 1

    def __len__(self) -> int:
        return sum(len(s.rates) for quotes in self._series.values() for s in quotes.values())

    def currencies(self) -> set[str]:
        found = set(self._series)
        for quotes in self._series.values():
            found.update(quotes)
        return found

    def latest_day(self) -> date | None:
        days = [s.days[-1] for q in self._series.values() for s in q.values() if s.days]
        return max(days) if days else None

    def conversion(self, source: str, target: str, day: date) -> Conversion | None:
        """How ``source`` amounts of ``day`` convert to ``target``; None while the rate
        of that day is not known (see the module doc for weekends and holidays)."""
        if source == target:
            return Conversion(1, 1, day)
        key = (source, target, day)
        cache = self._cache
        if key in cache:
            return cache[key]
        with self._lock:
            found = None
            for base in sorted(self._series):
                found = self._through(base, source, target, day)
                if found is not None:
                    break
            if len(self._cache) > 100_000:
                self._cache = {}
            self._cache[key] = found
        return found

    def latest(self, source: str, target: str) -> Conversion | None:
        """The newest rate for the pair (pre-flight estimates of calls not made yet)."""
        if source == target:
            return Conversion(1, 1, date.today())
        newest = self.latest_day()
        if newest is None:
            return None
        return self.conversion(source, target, newest) or self._newest_common(source, target)

    def _newest_common(self, source: str, target: str) -> Conversion | None:
        with self._lock:
            for base in sorted(self._series):
                legs = [self._leg(base, c) for c in (source, target)]
                if None in legs:
                    continue
                days = _common_days(legs)  # type: ignore[arg-type]
                if days:
                    return _ratio(legs, days[-1])  # type: ignore[arg-type]
        return None

    def _leg(self, base: str, currency: str) -> _Series | None:
        """The series of ``currency`` against ``base``; a base against itself is 1 on
        every day (an empty series stands for that)."""
        if currency == base:
            return _Series()
        return self._series[base].get(currency)

    def _through(self, base: str, source: str, target: str, day: date) -> Conversion | None:
        legs = [self._leg(base, source), self._leg(base, target)]
        if legs[0] is None or legs[1] is None:
            return None
        quoted = [leg for leg in legs if leg.days]  # the legs that are not the base itself
        if all(day in leg.rates for leg in quoted):
            return _ratio(legs, day)
        # no rate of its own: the latest earlier common day, once every leg moved past it
        if not all(leg.days[-1] > day for leg in quoted):
            return None
        days = _common_days(legs)
        index = bisect_right(days, day)
        if index == 0:
            return None
        return _ratio(legs, days[index - 1])


def _common_days(legs: list[_Series]) -> list[date]:
    quoted = [set(leg.rates) for leg in legs if leg.days]
    if not quoted:
        return []
    return sorted(set.intersection(*quoted))


def _ratio(legs: list[_Series], day: date) -> Conversion:
    """source -> target on ``day``: amount / rate(source) * rate(target)."""
    source, target = (leg.rates.get(day, Fraction(1)) if leg.days else Fraction(1)
                      for leg in legs)  # fmt: skip
    ratio = target / source
    return Conversion(ratio.numerator, ratio.denominator, day)
