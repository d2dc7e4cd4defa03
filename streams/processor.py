"""The price stage as plain Python: decode, validate, price and allocate one raw record.

No Kafka here: the faust agent hands in bytes and the record's position and sends what
comes back. Every failure becomes a DeadLetter with a reason a person can act on.

A too-late event is real spend: it is priced (and stored) like any other, but counts
toward no budget, and a ``too_late`` dead letter says why. So an event that was priced
either counts toward every budget it falls under or toward none, and ClickHouse's
allocations always equal the stream's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from pydantic import ValidationError

from spendstream.schemas.avro import AvroDecodeError
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import (
    CostAllocation,
    DeadLetter,
    PricedUsage,
    SourcePosition,
    UsageEvent,
    explain,
)
from spendstream.sources.registry import WIRE_KINDS

from .matching import BudgetRegistry
from .periods import LateWindow, budget_period
from .pricing import Pricer, PricingError


@dataclass
class Outcome:
    """What one raw record produced. ``priced`` and ``dead`` are both set for a too-late
    event: it is priced, counts toward no budget, and the dead letter says why."""

    event: UsageEvent | None = None
    priced: PricedUsage | None = None
    allocations: list[CostAllocation] = field(default_factory=list)
    dead: DeadLetter | None = None

    @property
    def too_late(self) -> bool:
        return self.priced is not None and self.dead is not None


def dead_letter(
    code: str,
    reason: str,
    position: SourcePosition,
    *,
    key: bytes | None = None,
    value: bytes | None = None,
    event_id: str | None = None,
    now: datetime | None = None,
) -> DeadLetter:
    return DeadLetter(
        reason=reason,
        error_code=code,
        origin=position,
        event_id=event_id,
        key=key,
        value=value,
        rejected_at=now or datetime.now(UTC),
    )


class UsageProcessor:
    def __init__(
        self,
        pricer: Pricer,
        budgets: BudgetRegistry,
        *,
        max_skew: timedelta = timedelta(minutes=5),
        unknown_price: str = "dlq",
        late_periods: int | None = None,
    ) -> None:
        self.pricer = pricer
        self.budgets = budgets
        self.max_skew = max_skew
        self.unknown_price = unknown_price
        self.late_periods = late_periods
        self.late = LateWindow(late_periods)

    def oldest_open(self, budget: BudgetDefinition, now: datetime) -> datetime | None:
        """Start of the oldest period of ``budget`` still open to late events (cached until
        the current period ends); None when lateness is unbounded or the budget is custom."""
        return self.late.oldest_open(budget, now)

    def decode(
        self, key: bytes | None, value: bytes | None, position: SourcePosition, now: datetime
    ) -> UsageEvent | DeadLetter:
        if value is None:
            return dead_letter("empty", "message has no value", position, key=key, now=now)
        try:
            event = UsageEvent.decode(value)
        except AvroDecodeError as exc:
            return dead_letter("decode", str(exc), position, key=key, value=value, now=now)
        except ValidationError as exc:
            return dead_letter("invalid", explain(exc), position, key=key, value=value, now=now)
        try:
            event.check_clock(now, self.max_skew)
        except ValueError as exc:
            return dead_letter(
                "future", str(exc), position, key=key, value=value, event_id=event.event_id, now=now
            )
        expected = position.topic.rsplit("usage.", 1)[-1]
        if expected in WIRE_KINDS and expected != event.source:
            return dead_letter(
                "wrong_topic",
                f"a '{event.source}' event on topic {position.topic}; publish it to usage."
                f"{event.source}",
                position,
                key=key,
                value=value,
                event_id=event.event_id,
                now=now,
            )
        return event

    def process(
        self,
        event: UsageEvent,
        position: SourcePosition,
        now: datetime,
        raw: bytes | None = None,
        arrived: datetime | None = None,
    ) -> Outcome:
        """Price and allocate. Lateness is judged against ``arrived`` (the record's Kafka
        timestamp), not the wall clock, so replaying old input months later decides alike."""
        try:
            cost = self.pricer.price(event)
        except PricingError as exc:
            if self.unknown_price == "flag" and exc.code in ("unknown_model", "unknown_price"):
                return Outcome(event=event, priced=self._priced(event, None, position, now))
            return Outcome(
                event=event,
                dead=dead_letter(
                    exc.code, str(exc), position, value=raw, event_id=event.event_id, now=now
                ),
            )
        priced = PricedUsage(
            event=event,
            cost=cost.total,
            currency=cost.currency,
            priced=True,
            components=cost.components,
            price_source=cost.source,
            price_version=cost.version,
            origin=position,
            priced_at=now,
        )
        outcome = Outcome(event=event, priced=priced)
        for match in self.budgets.match(event):
            budget = match.budget
            period = budget_period(budget, event.occurred_at)
            if period is None:
                continue
            oldest = self.oldest_open(budget, arrived or now)
            if outcome.dead is None and oldest is not None and period.start < oldest:
                # All or nothing: an event counts toward every budget it falls under or
                # toward none, so ClickHouse and the budgets never disagree about it. It
                # is still priced (real spend, stored in priced_usage); the dead letter
                # records why it counts nowhere.
                outcome.allocations.clear()
                outcome.dead = dead_letter(
                    "too_late",
                    f"event of {event.occurred_at:%Y-%m-%d %H:%M} UTC falls in period "
                    f"{period.key} of budget '{budget.budget_id}', which closed to late "
                    f"events (SPENDSTREAM_LATE_PERIODS={self.late_periods} past periods "
                    "count); it is priced but counts toward none of its budgets",
                    position,
                    value=raw,
                    event_id=event.event_id,
                    now=now,
                )
            if outcome.dead is not None:
                continue
            outcome.allocations.append(
                CostAllocation(
                    allocation_id=f"{event.event_id}/{budget.budget_id}",
                    event_id=event.event_id,
                    budget_id=budget.budget_id,
                    matched_via=match.via,
                    period_key=period.key,
                    period_start=period.start,
                    period_end=period.end,
                    occurred_at=event.occurred_at,
                    amount=cost.total,
                    currency=cost.currency,
                    source=event.source,
                    provider=event.provider,
                    model=event.model,
                    attributes=event.attributes,
                    origin=position,
                )
            )
        return outcome

    def _priced(
        self, event: UsageEvent, cost: Decimal | None, position: SourcePosition, now: datetime
    ) -> PricedUsage:
        return PricedUsage(
            event=event,
            cost=cost or Decimal(0),
            currency="USD",
            priced=False,
            components=[],
            price_source="unpriced",
            price_version="-",
            origin=position,
            priced_at=now,
        )
