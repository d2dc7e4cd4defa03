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
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, TypeVar

from spendstream.schemas.batches import A
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import BudgetAlert, to_micros
from spendstream.schemas.money import to_nanos

from .aggregation import AlertPolicy, PeriodState, tier_alerts
from .forecast import US_PER_DAY
from .fx import Conversion, FxTable
from .matching import BudgetRegistry

Source = TypeVar("Source")
EVENT, BUDGET, PERIOD, START, END = (A[c] for c in (
    "event_id", "budget_id", "period_key", "period_start_us", "period_end_us"))  # fmt: skip
OCCURRED, AMOUNT, CURRENCY = A["occurred_at_us"], A["amount_nanos"], A["currency"]
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
    #: ``conversions/1`` rows (schemas/batches.py) of allocations converted to their
    #: budget's currency, for ClickHouse
    conversions: list[list[Any]] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)


class AggregateStage:
    """Spend per budget and period. ``load(key)`` gives the newest state of a key (the
    checkpoint's, or the table's); the stage never writes: the checkpoint does
    (checkpoint.py), which also runs the forecast and anomaly rules once per interval."""

    def __init__(
        self,
        registry: BudgetRegistry,
        policy: AlertPolicy | None = None,
        fx: FxTable | None = None,
    ) -> None:
        self.registry = registry
        self.policy = policy or AlertPolicy()
        self.fx = fx if fx is not None else FxTable()
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
        origins: dict[tuple[str, int], str] = {}  # "topic:partition", built once per origin
        for source, rows in records:
            partition = self.partition_of(source)
            for row in rows:
                origin = origins.get((row[ORIGIN_TOPIC], row[ORIGIN_PARTITION]))
                if origin is None:
                    origin = origins[(row[ORIGIN_TOPIC], row[ORIGIN_PARTITION])] = (
                        f"{row[ORIGIN_TOPIC]}:{row[ORIGIN_PARTITION]}"
                    )
                budget_id, period_key = row[BUDGET], row[PERIOD]
                key = f"{budget_id}|{period_key}"
                state = states.get(key)
                if state is None:
                    state = states[key] = load(key)
                budget = budgets.get(budget_id)
                if budget is not None and budget.currency != row[CURRENCY]:
                    # in another currency: converted at its day's rate, or held until then
                    if not state.admit(origin, row[ORIGIN_OFFSET]):
                        counters["replayed_allocations"] += 1
                        continue
                    state.partition = partition
                    result.sources[key] = source
                    conversion = self.fx.conversion(row[CURRENCY], budget.currency,
                                                    day_of(row[OCCURRED]))  # fmt: skip
                    if conversion is None:
                        state.hold(row[EVENT], row[AMOUNT], row[CURRENCY], row[OCCURRED],
                                   row[START], row[END])  # fmt: skip
                        counters["fx_held"] += 1
                        continue
                    nanos = conversion.convert(row[AMOUNT])
                    state.add(nanos, row[OCCURRED], row[START], row[END])
                    result.conversions.append(conversion_row(
                        row[EVENT], budget_id, period_key, row[OCCURRED], row[AMOUNT],
                        row[CURRENCY], budget.currency, conversion, nanos, now))  # fmt: skip
                    counters["fx_converted"] += 1
                else:
                    counted = state.apply_fields(origin, row[ORIGIN_OFFSET], row[AMOUNT],
                                                 row[OCCURRED], row[START], row[END])  # fmt: skip
                    if not counted:
                        counters["replayed_allocations"] += 1
                        continue
                    state.partition = partition
                    result.sources[key] = source
                counters["aggregated"] += 1
                event_id = row[EVENT]
                touched[key] = event_id
                if budget is not None and state.spent_nanos * 100 >= self._next_tier(budget, state):
                    result.alerts += tier_alerts(budget, period_key, state, now, event_id)
        result.last_event = touched
        # states that only saw replays are unchanged: nothing to write or publish
        for key in [k for k in states if k not in result.sources]:
            del states[key]
        return result

    def release(
        self,
        held: Iterable[tuple[str, PeriodState, Source]],
        now: datetime,
    ) -> AggregateResult[Source]:
        """Count the held allocations of ``held`` ("budget|period", its state, where it
        lives) whose exchange rate has become known, in the order they arrived; the
        tiers they cross fire as if they had been counted on arrival."""
        result: AggregateResult[Source] = AggregateResult()
        for key, state, source in held:
            budget_id, period_key = key.split("|", 1)
            budget = self.registry.get(budget_id)
            if budget is None or not state.held:
                continue
            waiting = []
            for entry in state.held:
                event_id, amount, currency, occurred = entry
                conversion = self.fx.conversion(currency, budget.currency, day_of(occurred))
                if conversion is None:
                    waiting.append(entry)
                    continue
                nanos = conversion.convert(amount)
                state.add(nanos, occurred, state.period_start_us, state.period_end_us)
                result.conversions.append(conversion_row(
                    event_id, budget_id, period_key, occurred, amount, currency,
                    budget.currency, conversion, nanos, now))  # fmt: skip
                result.counters["fx_released"] += 1
                result.last_event[key] = event_id
                if state.spent_nanos * 100 >= self._next_tier(budget, state):
                    result.alerts += tier_alerts(budget, period_key, state, now, event_id)
            if len(waiting) != len(state.held):
                state.held = waiting
                result.states[key] = state
                result.sources[key] = source
        return result

    @staticmethod
    def partition_of(source: Any) -> int:
        """The partition of an input record (a faust event, or a test's stand-in)."""
        message = getattr(source, "message", None)
        return int(getattr(message, "partition", -1))

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
        # remembered on the state until a tier fires (``alerted`` only grows) or the
        # budget changes: asked at every allocation, it changes a few times a period
        known = state.next_tier
        if known is not None and known[0] is tiers and known[1] == len(state.alerted):
            return known[2]
        pending = [need for need, tag in tiers if tag not in state.alerted]
        found = min(pending) if pending else Decimal("Infinity")
        state.next_tier = (tiers, len(state.alerted), found)
        return found


EPOCH_DAY = date(1970, 1, 1)


def day_of(micros: int) -> date:
    """The UTC day of an event time (whose reference rate applies)."""
    return EPOCH_DAY + timedelta(days=micros // US_PER_DAY)


def conversion_row(
    event_id: str,
    budget_id: str,
    period_key: str,
    occurred_us: int,
    amount_nanos: int,
    currency: str,
    budget_currency: str,
    conversion: Conversion,
    budget_nanos: int,
    now: datetime,
) -> list[Any]:
    """A ``conversions/1`` row (schemas/batches.py)."""
    return [event_id, budget_id, period_key, occurred_us, amount_nanos, currency,
            budget_currency, str(conversion.rate), conversion.rate_day.isoformat(),
            budget_nanos, to_micros(now)]  # fmt: skip


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
