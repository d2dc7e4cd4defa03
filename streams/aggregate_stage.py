"""The aggregate stage as a class a test drives without a broker: allocations in, the
changed spend states, the alerts now due and the statuses to publish out.

Allocations arrive as ``allocations/1`` rows (schemas/batches.py: the price stage's batch
records; a single Avro record written before batches existed is turned into the same
row): integer nano-units and microseconds, no pydantic and no Decimal per allocation. Per (budget, period) the
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

from spendstream.schemas.batches import A
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import BudgetAlert, to_micros
from spendstream.schemas.money import to_nanos

from .aggregation import AlertPolicy, PeriodState, tier_alerts
from .matching import BudgetRegistry

Source = TypeVar("Source")
EVENT, BUDGET, PERIOD, START, END = (A[c] for c in (
    "event_id", "budget_id", "period_key", "period_start_us", "period_end_us"))  # fmt: skip
OCCURRED, AMOUNT = A["occurred_at_us"], A["amount_nanos"]
ORIGIN_TOPIC, ORIGIN_PARTITION, ORIGIN_OFFSET = (A[c] for c in (
    "origin_topic", "origin_partition", "origin_offset"))  # fmt: skip


@dataclass
class AggregateResult(Generic[Source]):
    #: "budget|period" -> state to write, and the record whose partition it belongs to
    states: dict[str, PeriodState] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    #: "budget|period" -> the event of its last allocation counted (alerts name it)
    last_event: dict[str, str] = field(default_factory=dict)
    alerts: list[BudgetAlert] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)


class AggregateStage:
    """Spend per budget and period. ``load(key)`` gives the newest state of a key (the
    checkpoint's, or the table's); the stage never writes: the checkpoint does
    (checkpoint.py), which also runs the forecast and anomaly rules once per interval."""

    def __init__(self, registry: BudgetRegistry, policy: AlertPolicy | None = None) -> None:
        self.registry = registry
        self.policy = policy or AlertPolicy()
        #: (budget_id, updated_at) -> [(spend in nanos x 100 that fires, tier tag)]
        self._tiers: dict[tuple[str, datetime], list[tuple[Decimal, str]]] = {}

    def process(
        self,
        records: Iterable[tuple[Source, Iterable[list[Any]]]],
        load: Callable[[str], PeriodState],
        now: datetime,
    ) -> AggregateResult[Source]:
        """Apply every allocation row of ``records`` (record, its rows) in order."""
        result: AggregateResult[Source] = AggregateResult()
        states = result.states
        counters = result.counters
        touched: dict[str, str] = {}  # key -> event id of the last allocation applied
        budgets = self.registry
        for source, rows in records:
            for row in rows:
                budget_id, period_key = row[BUDGET], row[PERIOD]
                key = f"{budget_id}|{period_key}"
                state = states.get(key)
                if state is None:
                    state = states[key] = load(key)
                counted = state.apply_fields(
                    f"{row[ORIGIN_TOPIC]}:{row[ORIGIN_PARTITION]}", row[ORIGIN_OFFSET],
                    row[AMOUNT], row[OCCURRED], row[START], row[END],
                )  # fmt: skip
                if not counted:
                    counters["replayed_allocations"] += 1
                    continue
                counters["aggregated"] += 1
                result.sources[key] = source
                event_id = row[EVENT]
                touched[key] = event_id
                budget = budgets.get(budget_id)
                if budget is not None and state.spent_nanos * 100 >= self._next_tier(budget, state):
                    result.alerts += tier_alerts(budget, period_key, state, now, event_id)
        result.last_event = touched
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


def allocation_row(record: dict[str, Any]) -> list[Any]:
    """A single Avro CostAllocation (as written before batches existed) as an
    ``allocations/1`` row."""
    attrs, origin = record["attributes"], record["origin"]
    return [
        record["event_id"], record["budget_id"], record["matched_via"], record["period_key"],
        to_micros(record["period_start"]), to_micros(record["period_end"]),
        to_micros(record["occurred_at"]), to_nanos(record["amount"]), record["currency"],
        record["source"], record["provider"] or "", record["model"] or "",
        *(attrs[n] or "" for n in ("org", "team", "project", "user", "department", "feature")),
        attrs["tags"], origin["topic"], origin["partition"], origin["offset"],
    ]  # fmt: skip
