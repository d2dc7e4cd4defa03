"""The aggregate stage in one process, without a broker or faust: allocation dicts in,
changed states, alerts and statuses out; replays counted once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from spendstream.schemas import batches
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import to_micros
from spendstream.schemas.money import to_nanos
from spendstream.streams.aggregate_stage import AggregateStage
from spendstream.streams.aggregation import PeriodState, due_alerts
from spendstream.streams.matching import BudgetRegistry

START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
BUDGET = BudgetDefinition(budget_id="b", name="B", limit="10")


def alloc(offset: int, amount: str, *, budget: str = "b", partition: int = 0) -> list:
    """An allocation row as the aggregator reads it from an ``allocations/1`` record."""
    when = NOW - timedelta(hours=1) + timedelta(seconds=offset)
    row = [f"e{offset}", budget, budget, "2026-11", to_micros(START), to_micros(END),
           to_micros(when), to_nanos(Decimal(amount)), "USD", "llm", "openai", "m",
           "", "", "", "", "", "", {}, "usage.llm", partition, offset]  # fmt: skip
    return batches.decode(batches.encode(batches.ALLOCATIONS_V1, [row]))[1][0]


def stage() -> AggregateStage:
    return AggregateStage(BudgetRegistry([BUDGET]))


def test_a_batch_counts_each_allocation_and_alerts_name_the_crossing_event():
    result = stage().process([("rec-1", [alloc(1, "4"), alloc(2, "2")]),
                              ("rec-2", [alloc(3, "3.5"), alloc(4, "1")])],
                             lambda k: PeriodState(), NOW)  # fmt: skip
    state = result.states["b|2026-11"]
    assert state.spent == Decimal("10.5") and state.count == 4
    assert result.sources["b|2026-11"] == "rec-2"  # written in the last record's partition
    tiers = {a.alert_id.split(":", 2)[2]: a for a in result.alerts}
    # 50 % crossed by e2 (6 of 10), 75 % and 90 % by e3 (9.5), 100 % and exceeded by e4
    assert tiers["threshold:50"].triggered_by == "e2" and tiers["threshold:50"].spent == 6
    assert tiers["threshold:90"].triggered_by == "e3"
    assert tiers["threshold:100"].triggered_by == "e4" and tiers["exceeded"].triggered_by == "e4"
    assert result.counters["aggregated"] == 4
    assert result.last_event == {"b|2026-11": "e4"}


def test_replayed_allocations_count_once_and_fire_nothing_again():
    table: dict[str, str] = {}

    def load(key: str) -> PeriodState:
        return PeriodState.loads(table.get(key))

    first = stage().process([("r", [alloc(1, "6"), alloc(2, "1")])], load, NOW)
    table["b|2026-11"] = first.states["b|2026-11"].dumps()
    # a replay re-batched differently: offsets 1-2 again, then 3 new
    again = stage().process([("r2", [alloc(1, "6")]), ("r3", [alloc(2, "1"), alloc(3, "1")])],
                            load, NOW)  # fmt: skip
    assert again.counters["replayed_allocations"] == 2 and again.counters["aggregated"] == 1
    assert again.states["b|2026-11"].spent == Decimal(8)
    assert [a.alert_id for a in again.alerts] == ["b:2026-11:threshold:75"]
    only_replays = stage().process([("r4", [alloc(3, "1")])],
                                   lambda k: again.states[k], NOW)  # fmt: skip
    assert only_replays.states == {} and only_replays.alerts == []


def test_a_single_avro_allocation_becomes_the_same_row():
    from spendstream.schemas.avro import codec
    from spendstream.schemas.models import Attributes, CostAllocation, SourcePosition
    from spendstream.streams.aggregate_stage import allocation_row

    single = CostAllocation(
        allocation_id="e7/b", event_id="e7", budget_id="b", matched_via="b",
        period_key="2026-11", period_start=START, period_end=END,
        occurred_at=NOW - timedelta(hours=1) + timedelta(seconds=7), amount=Decimal("1.5"),
        currency="USD", source="llm", provider="openai", model="m", attributes=Attributes(),
        origin=SourcePosition(topic="usage.llm", partition=0, offset=7),
    )  # fmt: skip
    decoded = codec("CostAllocation").decode(codec("CostAllocation").encode(single.to_avro()))
    assert allocation_row(decoded) == alloc(7, "1.5")


def test_per_allocation_tiers_equal_the_reference_rule():
    """The integer tier trigger fires exactly where due_alerts would, allocation by
    allocation (the fault oracle's rule)."""
    amounts = ["0.7", "2.1", "0.05", "1.9", "0.25", "3", "1.999999999", "0.000000001", "4"]
    ref = PeriodState()
    want = []
    for i, amount in enumerate(amounts):
        a = alloc(i, amount)
        ref.apply_fields("usage.llm:0", i, to_nanos(Decimal(amount)),
                         a[batches.A["occurred_at_us"]], 0, 0)  # fmt: skip
        want += [x.alert_id for x in due_alerts(BUDGET, "2026-11", ref, NOW, f"e{i}")
                 if x.kind in ("threshold", "exceeded")]  # fmt: skip
    got = stage().process([("r", [alloc(i, a) for i, a in enumerate(amounts)])],
                          lambda k: PeriodState(), NOW)  # fmt: skip
    assert [a.alert_id for a in got.alerts if a.kind in ("threshold", "exceeded")] == want


def test_the_remembered_next_tier_moves_on_when_a_tier_fires_or_the_budget_changes():
    """One state object across batches (as the checkpoint keeps it): each crossing fires
    once, in its own batch, and a changed limit is used from the next allocation on."""
    registry = BudgetRegistry([BUDGET])
    agg = AggregateStage(registry)
    state = PeriodState()
    fired = []
    for offset, amount in [(1, "4"), (2, "0.5"), (3, "1"), (4, "0.1"), (5, "2")]:
        result = agg.process([("r", [alloc(offset, amount)])], lambda k: state, NOW)
        fired.append([a.alert_id.split(":", 2)[2] for a in result.alerts])
    assert fired == [[], [], ["threshold:50"], [], ["threshold:75"]]  # 4, 4.5, 5.5, 5.6, 7.6
    registry.put(BUDGET.model_copy(update={"limit": Decimal(8), "updated_at": NOW}))
    result = agg.process([("r", [alloc(6, "0.1")])], lambda k: state, NOW)  # 7.7 of 8
    assert [a.alert_id.split(":", 2)[2] for a in result.alerts] == ["threshold:90"]


def test_alerts_built_without_validation_are_valid_alerts():
    """Alerts are built with ``model_construct`` (their fields come from a validated budget
    and our own state): each must be exactly what validation would have made of it."""
    from spendstream.schemas.avro import codec
    from spendstream.schemas.models import BudgetAlert

    result = stage().process([("rec-1", [alloc(1, "4"), alloc(2, "7")])],
                             lambda k: PeriodState(), NOW)  # fmt: skip
    assert len(result.alerts) >= 2
    alert_codec = codec("BudgetAlert")
    for alert in result.alerts:
        assert BudgetAlert.model_validate(alert.model_dump()) == alert
        assert (
            BudgetAlert.from_avro(alert_codec.decode(alert_codec.encode(alert.to_avro()))) == alert
        )
