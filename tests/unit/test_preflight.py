"""Pre-flight check: every matching budget and ancestor answers; the most binding wins."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.checks import CheckRequest
from spendstream.streams.matching import BudgetRegistry
from spendstream.streams.preflight import check
from spendstream.streams.pricing import Pricer

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
PRICER = Pricer()


def registry() -> BudgetRegistry:
    return BudgetRegistry([
        BudgetDefinition(budget_id="org", name="Acme", limit="100", scope={"org": "acme"},
                         thresholds=[{"percent": 80, "action": "notify"},
                                     {"percent": 100, "action": "block"}]),
        BudgetDefinition(budget_id="ml", name="ML", parent_id="org", limit="50",
                         scope={"team": "ml"},
                         thresholds=[{"percent": 50, "action": "notify"},
                                     {"percent": 90, "action": "downgrade",
                                      "downgrade_to": "gpt-4o-mini"},
                                     {"percent": 100, "action": "throttle"}]),
        BudgetDefinition(budget_id="daily", name="daily", limit="5", period="daily",
                         timezone="Asia/Tokyo", scope={"team": "ml"},
                         thresholds=[{"percent": 100, "action": "require-approval"}]),
    ])  # fmt: skip


def spent(values):
    return lambda key: values.get(key)


def req(**kw):
    return CheckRequest(**{"attributes": {"org": "acme", "team": "ml"}, **kw})


def test_allow_when_every_budget_has_room():
    result = check(req(estimated_cost="1"), registry(), spent({}), PRICER, NOW)
    assert result.decision == "allow" and result.estimated_cost == Decimal(1)
    assert sorted(v.budget_id for v in result.budgets) == ["daily", "ml", "org"]
    assert {v.period_key for v in result.budgets} == {"2026-11", "2026-11-24"}


def test_child_downgrade_tier_answers_with_the_cheaper_model():
    result = check(req(estimated_cost="2"), registry(), spent({"ml|2026-11": Decimal("44")}),
                   PRICER, NOW)  # fmt: skip
    assert result.decision == "downgrade" and result.downgrade_to == "gpt-4o-mini"
    ml = next(v for v in result.budgets if v.budget_id == "ml")
    assert ml.spent == 44 and ml.spent_after == 46 and ml.percent_after == Decimal("92.00")
    assert "tier 90% says downgrade to gpt-4o-mini" in result.reason


def test_ancestor_block_wins_over_child_warning():
    values = {"org|2026-11": Decimal("99.5"), "ml|2026-11": Decimal("26")}
    result = check(req(estimated_cost="1"), registry(), spent(values), PRICER, NOW)
    assert result.decision == "block" and "Acme (org)" in result.reason
    decisions = {v.budget_id: v.decision for v in result.budgets}
    assert decisions == {"org": "block", "ml": "warn", "daily": "allow"}


def test_require_approval_blocks_with_the_flag_set_in_the_budget_time_zone():
    # 12:00 UTC is 21:00 in Tokyo on the 24th
    result = check(req(estimated_cost="1"), registry(), spent({"daily|2026-11-24": Decimal(4.5)}),
                   PRICER, NOW)  # fmt: skip
    daily = next(v for v in result.budgets if v.budget_id == "daily")
    assert daily.decision == "block" and daily.approval_required
    assert result.decision == "block"


def test_model_and_tokens_are_priced_like_a_real_event():
    result = check(req(provider="openai", model="gpt-4o", input_tokens=1_000_000,
                       output_tokens=100_000), registry(), spent({}), PRICER, NOW)  # fmt: skip
    assert result.estimated_cost == Decimal("3.5")  # 2.50 + 0.1 x 10.00


def test_unmatched_call_is_allowed_and_bad_requests_are_refused():
    result = check(CheckRequest(estimated_cost="1", attributes={"org": "other"}), registry(),
                   spent({}), PRICER, NOW)  # fmt: skip
    assert result.decision == "allow" and result.budgets == [] and "no budget" in result.reason
    with pytest.raises(ValidationError, match="estimated_cost, or provider and model"):
        CheckRequest(source="llm", provider="openai")
    with pytest.raises(ValidationError):
        CheckRequest(estimated_cost="-1")
