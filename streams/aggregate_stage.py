"""The aggregate stage as a class a test drives without a broker: allocations in, the
changed spend states, the alerts now due and the statuses to publish out.

Allocations arrive as fastavro dicts (batch records of the price stage, or single records
written before batches existed); no pydantic per allocation. Per (budget, period) the
state counts each origin position once (aggregation.py), the threshold and exceeded tiers
are checked per allocation with integer comparisons (so an alert names the event that
crossed the tier and the spend at that moment), and the forecast and anomaly rules run
once per (budget, period) per batch on event time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import BudgetAlert, BudgetStatus, to_micros
from spendstream.schemas.money import to_nanos

from .aggregation import AlertPolicy, PeriodState, state_key, status_of, tier_alerts, trend_alerts
from .matching import BudgetRegistry

Source = TypeVar("Source")


@dataclass
class AggregateResult(Generic[Source]):
    #: "budget|period" -> state to write, and the record whose partition it belongs to
    states: dict[str, PeriodState] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    alerts: list[BudgetAlert] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)

    def statuses(
        self, registry: BudgetRegistry, now: datetime, resolved: Iterable[str] = ()
    ) -> dict[str, BudgetStatus]:
        """The status of every changed (budget, period) whose budget still exists."""
        done = set(resolved)
        out = {}
        for key, state in self.states.items():
            budget_id, period_key = key.split("|", 1)
            budget = registry.get(budget_id)
            if budget is not None:
                out[key] = status_of(budget, period_key, state, now, done)
        return out


class AggregateStage:
    """Spend per budget and period. ``load(key)`` reads a state from the table (str or
    None); the stage never writes: the caller does, after delivering the alerts."""

    def __init__(self, registry: BudgetRegistry, policy: AlertPolicy | None = None) -> None:
        self.registry = registry
        self.policy = policy or AlertPolicy()
        #: (budget_id, updated_at) -> [(spend in nanos x 100 that fires, tier tag)]
        self._tiers: dict[tuple[str, datetime], list[tuple[Decimal, str]]] = {}

    def process(
        self,
        records: Iterable[tuple[Source, Iterable[dict[str, Any]]]],
        load: Callable[[str], str | None],
        now: datetime,
    ) -> AggregateResult[Source]:
        """Apply every allocation of ``records`` (record, its allocation dicts) in order."""
        result: AggregateResult[Source] = AggregateResult()
        states = result.states
        touched: dict[str, str] = {}  # key -> event id of the last allocation applied
        for source, allocations in records:
            for alloc in allocations:
                key = state_key(alloc["budget_id"], alloc["period_key"])
                state = states.get(key)
                if state is None:
                    state = states[key] = PeriodState.loads(load(key))
                origin = alloc["origin"]
                counted = state.apply_fields(
                    f"{origin['topic']}:{origin['partition']}",
                    origin["offset"],
                    to_nanos(alloc["amount"]),
                    to_micros(alloc["occurred_at"]),
                    to_micros(alloc["period_start"]),
                    to_micros(alloc["period_end"]),
                )
                if not counted:
                    result.counters["replayed_allocations"] += 1
                    continue
                result.counters["aggregated"] += 1
                result.sources[key] = source
                touched[key] = alloc["event_id"]
                budget = self.registry.get(alloc["budget_id"])
                if budget is not None and state.spent_nanos * 100 >= self._next_tier(budget, state):
                    result.alerts += tier_alerts(
                        budget, alloc["period_key"], state, now, alloc["event_id"]
                    )
        for key, event_id in touched.items():
            budget_id, period_key = key.split("|", 1)
            budget = self.registry.get(budget_id)
            if budget is not None:
                result.alerts += trend_alerts(
                    budget, period_key, states[key], now, event_id, self.policy
                )
        # states that only saw replays are unchanged: nothing to write or publish
        for key in [k for k in states if k not in result.sources]:
            del states[key]
        return result

    def _next_tier(self, budget: BudgetDefinition, state: PeriodState) -> Decimal:
        """Smallest spend (nanos x 100) at which a tier or 'exceeded' not yet fired fires."""
        tiers = self._tiers.get((budget.budget_id, budget.updated_at))
        if tiers is None:
            if len(self._tiers) > 100_000:
                self._tiers.clear()
            limit = to_nanos(budget.limit)
            tiers = [(t.percent * limit, f"threshold:{_tag(t.percent)}") for t in budget.thresholds]
            # exceeded: spent > limit, i.e. spent x 100 >= limit x 100 + 100 (whole nanos)
            tiers.append((Decimal(limit * 100 + 100), "exceeded"))
            self._tiers[(budget.budget_id, budget.updated_at)] = tiers
        pending = [need for need, tag in tiers if tag not in state.alerted]
        return min(pending) if pending else Decimal("Infinity")


def _tag(percent: Decimal) -> str:
    from spendstream.schemas.money import plain

    return plain(percent)
