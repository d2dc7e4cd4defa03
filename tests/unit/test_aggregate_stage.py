"""The aggregate stage in one process, without a broker or faust: allocation dicts in,
changed states, alerts and statuses out; replays counted once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from spendstream.schemas.avro import codec
from spendstream.schemas.budget import BudgetDefinition
from spendstream.streams.aggregate_stage import AggregateStage
from spendstream.streams.aggregation import PeriodState, due_alerts
from spendstream.streams.matching import BudgetRegistry

START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
BUDGET = BudgetDefinition(budget_id="b", name="B", limit="10")


def alloc(offset: int, amount: str, *, budget: str = "b", partition: int = 0) -> dict:
    """An allocation as fastavro decodes it from a CostAllocationBatch record."""
    record = {
        "allocation_id": f"e{offset}/{budget}", "event_id": f"e{offset}", "budget_id": budget,
        "matched_via": budget, "period_key": "2026-11", "period_start": START, "period_end": END,
        "occurred_at": NOW - timedelta(hours=1) + timedelta(seconds=offset),
        "amount": Decimal(amount), "currency": "USD", "source": "llm", "provider": "openai",
        "model": "m", "attributes": {n: None for n in ("org", "team", "project", "user",
                                                        "department", "session", "feature")}
        | {"tags": {}},
        "origin": {"topic": "usage.llm", "partition": partition, "offset": offset},
    }  # fmt: skip
    batch = codec("CostAllocationBatch")
    return batch.decode(batch.encode({"allocations": [record]}))["allocations"][0]


def stage() -> AggregateStage:
    return AggregateStage(BudgetRegistry([BUDGET]))


def test_a_batch_counts_each_allocation_and_alerts_name_the_crossing_event():
    table: dict[str, str] = {}
    result = stage().process([("rec-1", [alloc(1, "4"), alloc(2, "2")]),
                              ("rec-2", [alloc(3, "3.5"), alloc(4, "1")])],
                             table.get, NOW)  # fmt: skip
    state = result.states["b|2026-11"]
    assert state.spent == Decimal("10.5") and state.count == 4
    assert result.sources["b|2026-11"] == "rec-2"  # written in the last record's partition
    tiers = {a.alert_id.split(":", 2)[2]: a for a in result.alerts}
    # 50 % crossed by e2 (6 of 10), 75 % and 90 % by e3 (9.5), 100 % and exceeded by e4
    assert tiers["threshold:50"].triggered_by == "e2" and tiers["threshold:50"].spent == 6
    assert tiers["threshold:90"].triggered_by == "e3"
    assert tiers["threshold:100"].triggered_by == "e4" and tiers["exceeded"].triggered_by == "e4"
    assert result.counters["aggregated"] == 4
    statuses = result.statuses(BudgetRegistry([BUDGET]), NOW)
    assert statuses["b|2026-11"].spent == Decimal("10.5")


def test_replayed_allocations_count_once_and_fire_nothing_again():
    table: dict[str, str] = {}
    first = stage().process([("r", [alloc(1, "6"), alloc(2, "1")])], table.get, NOW)
    table["b|2026-11"] = first.states["b|2026-11"].dumps()
    # a replay re-batched differently: offsets 1-2 again, then 3 new
    again = stage().process([("r2", [alloc(1, "6")]), ("r3", [alloc(2, "1"), alloc(3, "1")])],
                            table.get, NOW)  # fmt: skip
    assert again.counters["replayed_allocations"] == 2 and again.counters["aggregated"] == 1
    assert again.states["b|2026-11"].spent == Decimal(8)
    assert [a.alert_id for a in again.alerts] == ["b:2026-11:threshold:75"]
    only_replays = stage().process([("r4", [alloc(3, "1")])],
                                   lambda k: again.states[k].dumps(), NOW)  # fmt: skip
    assert only_replays.states == {} and only_replays.alerts == []


def test_per_allocation_tiers_equal_the_reference_rule():
    """The integer tier trigger fires exactly where due_alerts would, allocation by
    allocation (the fault oracle's rule)."""
    amounts = ["0.7", "2.1", "0.05", "1.9", "0.25", "3", "1.999999999", "0.000000001", "4"]
    ref = PeriodState()
    want = []
    for i, amount in enumerate(amounts):
        a = alloc(i, amount)
        ref.apply_fields("usage.llm:0", i, int(Decimal(amount) * 10**9),
                         int(a["occurred_at"].timestamp() * 10**6), 0, 0)  # fmt: skip
        want += [x.alert_id for x in due_alerts(BUDGET, "2026-11", ref, NOW, f"e{i}")
                 if x.kind in ("threshold", "exceeded")]  # fmt: skip
    got = stage().process([("r", [alloc(i, a) for i, a in enumerate(amounts)])], {}.get, NOW)
    assert [a.alert_id for a in got.alerts if a.kind in ("threshold", "exceeded")] == want
