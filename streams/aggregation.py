"""Spend per budget and period, idempotent under replay, and the alerts it triggers.

State per (budget, period) keeps integer nano-units plus, per origin partition of the raw
input, the highest origin offset already counted. The price stage processes each origin
partition in order, so an allocation whose origin offset is at or below that watermark
was counted before (a replay after a crash or rebalance) and is skipped: nothing counts
twice and nothing is dropped, without remembering every allocation id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import (
    BudgetAlert,
    BudgetStatus,
    CostAllocation,
    from_micros,
    to_micros,
)
from spendstream.schemas.money import from_nanos, plain, to_nanos

WARNING_PERCENT = Decimal(75)
CRITICAL_PERCENT = Decimal(90)


def state_key(budget_id: str, period_key: str) -> str:
    return f"{budget_id}|{period_key}"


@dataclass
class PeriodState:
    spent_nanos: int = 0
    count: int = 0
    watermarks: dict[str, int] = field(default_factory=dict)
    alerted: list[str] = field(default_factory=list)
    period_start_us: int = 0
    period_end_us: int = 0
    last_event_us: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> PeriodState:
        return cls(**data) if data else cls()

    def to_json(self) -> dict[str, Any]:
        return {
            "spent_nanos": self.spent_nanos,
            "count": self.count,
            "watermarks": dict(self.watermarks),
            "alerted": list(self.alerted),
            "period_start_us": self.period_start_us,
            "period_end_us": self.period_end_us,
            "last_event_us": self.last_event_us,
        }

    @property
    def spent(self) -> Decimal:
        return from_nanos(self.spent_nanos)

    def apply(self, alloc: CostAllocation) -> bool:
        """Count an allocation once; False when its origin position was already counted."""
        origin = f"{alloc.origin.topic}:{alloc.origin.partition}"
        if alloc.origin.offset <= self.watermarks.get(origin, -1):
            return False
        self.watermarks[origin] = alloc.origin.offset
        self.spent_nanos += to_nanos(alloc.amount)
        self.count += 1
        self.period_start_us = to_micros(alloc.period_start)
        self.period_end_us = to_micros(alloc.period_end)
        self.last_event_us = max(self.last_event_us, to_micros(alloc.occurred_at))
        return True


def percent_of(spent: Decimal, limit: Decimal) -> Decimal:
    return spent * 100 / limit if limit else Decimal(0)


def state_name(spent: Decimal, limit: Decimal) -> str:
    pct = percent_of(spent, limit)
    if pct >= 100:
        return "exceeded"
    if pct >= CRITICAL_PERCENT:
        return "critical"
    if pct >= WARNING_PERCENT:
        return "warning"
    return "normal"


def due_alerts(
    budget: BudgetDefinition,
    period_key: str,
    state: PeriodState,
    now: datetime,
    triggered_by: str | None,
) -> list[BudgetAlert]:
    """Alerts for tiers crossed and not yet fired this period; marks them fired in ``state``.

    The alert id is budget/period/kind/tier, so a replay that somehow re-sends one is
    recognisable downstream, and ``state.alerted`` makes sure it is not produced again.
    """
    spent = state.spent
    pct = percent_of(spent, budget.limit)
    alerts: list[BudgetAlert] = []
    for tier in budget.thresholds:
        tag = f"threshold:{plain(tier.percent)}"
        if pct < tier.percent or tag in state.alerted:
            continue
        state.alerted.append(tag)
        severity = "critical" if tier.percent >= CRITICAL_PERCENT else "warning"
        alerts.append(
            BudgetAlert(
                alert_id=f"{budget.budget_id}:{period_key}:{tag}",
                budget_id=budget.budget_id,
                budget_name=budget.name,
                period_key=period_key,
                kind="threshold",
                threshold_percent=tier.percent,
                action=tier.action,
                downgrade_to=tier.downgrade_to,
                severity=severity,
                spent=spent,
                limit=budget.limit,
                currency=budget.currency,
                message=(
                    f"{budget.name}: {pct.quantize(Decimal('0.1'))}% of {budget.limit} "
                    f"{budget.currency} spent in {period_key} (tier {plain(tier.percent)}%, "
                    f"action {tier.action})"
                ),
                triggered_by=triggered_by,
                triggered_at=now,
            )
        )
    if spent > budget.limit and "exceeded" not in state.alerted:
        state.alerted.append("exceeded")
        alerts.append(
            BudgetAlert(
                alert_id=f"{budget.budget_id}:{period_key}:exceeded",
                budget_id=budget.budget_id,
                budget_name=budget.name,
                period_key=period_key,
                kind="exceeded",
                action="notify",
                severity="critical",
                spent=spent,
                limit=budget.limit,
                currency=budget.currency,
                message=(
                    f"{budget.name}: limit {budget.limit} {budget.currency} exceeded in "
                    f"{period_key}: spent {spent} {budget.currency}"
                ),
                triggered_by=triggered_by,
                triggered_at=now,
            )
        )
    return alerts


def status_of(
    budget: BudgetDefinition, period_key: str, state: PeriodState, now: datetime
) -> BudgetStatus:
    spent = state.spent
    return BudgetStatus(
        budget_id=budget.budget_id,
        budget_name=budget.name,
        period_key=period_key,
        period_start=from_micros(state.period_start_us),
        period_end=from_micros(state.period_end_us),
        spent=spent,
        limit=budget.limit,
        currency=budget.currency,
        event_count=state.count,
        state=state_name(spent, budget.limit),
        alerted_tiers=list(state.alerted),
        updated_at=now,
    )
