"""Pre-flight check: walk every budget a planned call falls under (and their ancestors)
and answer allow / warn / downgrade / throttle / block, with the reason from each.

Plain Python over the budget registry and the latest status per budget and period (the
worker holds both locally, fed from the compacted topics), so an answer costs
microseconds and needs no round trip to Kafka or ClickHouse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.checks import SEVERITY, BudgetVerdict, CheckRequest, CheckResult
from spendstream.schemas.models import LlmUsage, UsageEvent
from spendstream.schemas.money import from_nanos, plain, to_nanos

from .aggregation import state_key
from .fx import FxTable
from .matching import BudgetRegistry
from .periods import budget_period
from .pricing import Pricer

ACTION_DECISION = {
    "notify": "warn",
    "throttle": "throttle",
    "require-approval": "block",
    "downgrade": "downgrade",
    "block": "block",
}

#: spent so far for a "budget_id|period_key" key (None = nothing counted yet)
SpentLookup = Callable[[str], Decimal | None]


def estimate(request: CheckRequest, pricer: Pricer, now: datetime) -> Decimal:
    """The request's cost: as given, or priced from model and tokens like a real event."""
    if request.estimated_cost is not None:
        return request.estimated_cost
    assert request.provider and request.model  # the request validated this
    event = UsageEvent(
        event_id="preflight",
        occurred_at=now,
        source="llm",
        attributes=request.attributes,
        payload=LlmUsage(
            provider=request.provider,
            model=request.model,
            input_tokens=request.input_tokens,
            output_tokens=request.output_tokens,
            cache_read_tokens=request.cache_read_tokens,
        ),
    )
    return pricer.price(event).total


def verdict(
    budget: BudgetDefinition,
    via: str,
    period_key: str,
    spent: Decimal,
    cost: Decimal,
    **extra: Any,
) -> BudgetVerdict:
    after = spent + cost
    pct = (after * 100 / budget.limit).quantize(Decimal("0.01"))
    crossed = [t for t in budget.thresholds if pct >= t.percent]
    base: dict[str, Any] = {
        "budget_id": budget.budget_id, "budget_name": budget.name, "matched_via": via,
        "period_key": period_key, "spent": spent, "limit": budget.limit,
        "spent_after": after, "percent_after": pct, "currency": budget.currency, **extra,
    }  # fmt: skip
    where = f"{budget.name} ({budget.budget_id}) {period_key}: {plain(pct)}% of {plain(budget.limit)} {budget.currency} after this call"
    if not crossed:
        if after > budget.limit:
            return BudgetVerdict(**base, decision="warn", reason=f"{where}, over the limit")
        return BudgetVerdict(**base, decision="allow", reason=where)
    tier = max(crossed, key=lambda t: (SEVERITY[ACTION_DECISION[t.action]], t.percent))
    decision = ACTION_DECISION[tier.action]
    detail = f"tier {plain(tier.percent)}% says {tier.action}"
    if tier.action == "downgrade":
        detail += f" to {tier.downgrade_to}"
    return BudgetVerdict(
        **base,
        decision=decision,
        threshold_percent=tier.percent,
        approval_required=tier.action == "require-approval",
        downgrade_to=tier.downgrade_to if tier.action == "downgrade" else None,
        reason=f"{where}; {detail}",
    )


def check(
    request: CheckRequest,
    registry: BudgetRegistry,
    spent_of: SpentLookup,
    pricer: Pricer,
    now: datetime,
    fx: FxTable | None = None,
) -> CheckResult:
    """The answer for ``request`` at ``now`` from every matching budget and ancestor. A
    budget in another currency weighs the cost converted at the newest reference rate;
    without one it cannot tell, and says so (warn)."""
    cost = estimate(request, pricer, now)
    verdicts: list[BudgetVerdict] = []
    for match in registry.match(request):
        budget = match.budget
        period = budget_period(budget, now)
        if period is None:
            continue
        spent = spent_of(state_key(budget.budget_id, period.key)) or Decimal(0)
        if budget.currency == request.currency:
            verdicts.append(verdict(budget, match.via, period.key, spent, cost))
            continue
        conversion = fx.latest(request.currency, budget.currency) if fx is not None else None
        if conversion is None:
            verdicts.append(BudgetVerdict(
                budget_id=budget.budget_id, budget_name=budget.name, matched_via=match.via,
                period_key=period.key, spent=spent, limit=budget.limit, spent_after=spent,
                percent_after=(spent * 100 / budget.limit).quantize(Decimal("0.01")),
                decision="warn", currency=budget.currency,
                reason=f"{budget.name} ({budget.budget_id}) is in {budget.currency}: no "
                       f"{request.currency}->{budget.currency} exchange rate published "
                       "(spendstream fx publish), so this call cannot be weighed against it",
            ))  # fmt: skip
            continue
        converted = from_nanos(conversion.convert(to_nanos(cost)))
        verdicts.append(verdict(budget, match.via, period.key, spent, converted,
                                cost_in_budget_currency=converted, rate=conversion.rate))  # fmt: skip
    if not verdicts:
        return CheckResult(decision="allow", estimated_cost=cost, currency=request.currency,
                           reason="no budget covers this call")  # fmt: skip
    worst = max(verdicts, key=lambda v: (SEVERITY[v.decision], v.percent_after))
    return CheckResult(
        decision=worst.decision,
        estimated_cost=cost,
        currency=request.currency,
        downgrade_to=worst.downgrade_to,
        reason=worst.reason,
        budgets=verdicts,
    )


def spent_from(statuses: Mapping[str, Any]) -> SpentLookup:
    """Lookup over a mapping of 'budget|period' -> BudgetStatus."""

    def lookup(key: str) -> Decimal | None:
        status = statuses.get(key)
        return status.spent if status is not None else None

    return lookup
