from datetime import UTC, datetime
from decimal import Decimal

from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import CostAllocation, SourcePosition
from spendstream.streams.aggregation import PeriodState, due_alerts, state_name, status_of
from spendstream.streams.matching import BudgetRegistry
from tests.conftest import llm_event

NOW = datetime(2026, 11, 15, tzinfo=UTC)


def budgets() -> BudgetRegistry:
    return BudgetRegistry([
        BudgetDefinition(budget_id="org", name="org", limit="100", scope={"org": "acme"}),
        BudgetDefinition(budget_id="ml", name="ml", parent_id="org", limit="50",
                         scope={"org": "acme", "team": "ml"}),
        BudgetDefinition(budget_id="ml-gpt", name="ml gpt", parent_id="ml", limit="10",
                         scope={"team": "ml", "model": "GPT-*"}),
        BudgetDefinition(budget_id="openai", name="openai", limit="30",
                         scope={"provider": "openai"}),
    ])  # fmt: skip


def test_child_match_counts_toward_every_ancestor_once():
    matches = budgets().match(llm_event(org="acme", team="ml"))
    assert [m.budget.budget_id for m in matches] == ["ml", "ml-gpt", "openai", "org"]
    via = {m.budget.budget_id: m.via for m in matches}
    assert via["org"] == "org" and via["ml-gpt"] == "ml-gpt"


def test_ancestor_counted_even_when_its_own_scope_does_not_match():
    registry = budgets()
    matches = registry.match(llm_event(org="other", team="ml"))
    ids = {m.budget.budget_id: m.via for m in matches}
    assert ids == {"ml-gpt": "ml-gpt", "ml": "ml-gpt", "org": "ml-gpt", "openai": "openai"}


def test_missing_attribute_does_not_match_and_delete_stops_matching():
    registry = budgets()
    assert [m.budget.budget_id for m in registry.match(llm_event(provider="anthropic",
            model="claude-sonnet-4-5"))] == []  # fmt: skip
    registry.delete("openai")
    assert "openai" not in [m.budget.budget_id for m in registry.match(llm_event())]


def alloc(offset: int, amount: str, partition: int = 0) -> CostAllocation:
    return CostAllocation(
        allocation_id=f"e{offset}/b", event_id=f"e{offset}", budget_id="b", matched_via="b",
        period_key="2026-11", period_start=datetime(2026, 11, 1, tzinfo=UTC),
        period_end=datetime(2026, 12, 1, tzinfo=UTC), occurred_at=NOW,
        amount=Decimal(amount), currency="USD", source="llm", attributes={},
        origin=SourcePosition(topic="usage.llm", partition=partition, offset=offset),
    )  # fmt: skip


def test_replayed_allocations_are_not_counted_twice():
    state = PeriodState()
    assert state.apply(alloc(1, "0.000000001"))
    assert state.apply(alloc(2, "1.5"))
    assert not state.apply(alloc(1, "0.000000001"))  # replay after a crash
    assert not state.apply(alloc(2, "1.5"))
    assert state.apply(alloc(1, "2", partition=1))  # other origin partition: new
    assert state.spent == Decimal("3.500000001") and state.count == 3


def test_state_round_trips_through_json():
    state = PeriodState()
    state.apply(alloc(5, "0.123456789"))
    assert PeriodState.from_json(state.to_json()) == state


def test_each_tier_fires_once_per_period_and_exceeded_once():
    budget = BudgetDefinition(budget_id="b", name="b", limit="10")
    state = PeriodState()
    state.apply(alloc(1, "5"))
    first = due_alerts(budget, "2026-11", state, NOW, "e1")
    # half the limit spent in half the month: the forecast (about 10.33) is over the limit too
    assert [a.alert_id for a in first] == ["b:2026-11:threshold:50", "b:2026-11:forecast"]
    assert due_alerts(budget, "2026-11", state, NOW, "e1") == []
    state.apply(alloc(2, "6"))
    second = due_alerts(budget, "2026-11", state, NOW, "e2")
    assert [a.alert_id.split(":", 2)[2] for a in second] == [
        "threshold:75", "threshold:90", "threshold:100", "exceeded"]  # fmt: skip
    assert second[-1].severity == "critical"
    assert due_alerts(budget, "2026-11", state, NOW, "e3") == []


def test_status_states():
    assert state_name(Decimal("7"), Decimal("10")) == "normal"
    assert state_name(Decimal("7.5"), Decimal("10")) == "warning"
    assert state_name(Decimal("9"), Decimal("10")) == "critical"
    assert state_name(Decimal("10"), Decimal("10")) == "exceeded"
    budget = BudgetDefinition(budget_id="b", name="b", limit="10")
    state = PeriodState()
    state.apply(alloc(1, "2.5"))
    status = status_of(budget, "2026-11", state, NOW)
    assert (status.remaining, status.percent, status.state) == (Decimal("7.5"), Decimal("25.00"),
                                                                 "normal")  # fmt: skip
    assert status.period_start == datetime(2026, 11, 1, tzinfo=UTC)


def test_indexed_matching_equals_testing_every_scope():
    import random

    from spendstream.streams.matching import scope_matches

    rng = random.Random(7)
    teams, models = ["ml", "web", "ops"], ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5"]
    fields = {"team": teams, "model": models + ["GPT-*", "claude*"], "provider": ["OpenAI"]}
    budgets = []
    for i in range(300):
        scope = {f: rng.sample(vals, rng.randint(1, min(2, len(vals))))
                 for f, vals in fields.items() if rng.random() < 0.4}  # fmt: skip
        budgets.append(BudgetDefinition(budget_id=f"b{i}", name="b", limit="1", scope=scope))
    registry = BudgetRegistry(budgets)
    for team in teams:
        for model in models:
            event = llm_event(team=team, model=model)
            brute = sorted(b.budget_id for b in budgets if scope_matches(b.scope, event))
            assert [m.budget.budget_id for m in registry.match(event)] == brute
