"""Pre-flight check contract: 'may I spend about this much?' and the answer per budget."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field, model_validator

from .models import Attributes, Count, Currency, ExactDecimal, Money, OptStr, Source, Strict

Decision = Literal["allow", "warn", "downgrade", "throttle", "block"]
#: how binding each decision is; the overall answer is the most binding one
SEVERITY: dict[str, int] = {"allow": 0, "warn": 1, "downgrade": 2, "throttle": 3, "block": 4}


class CheckRequest(Strict):
    """An estimated cost, or an LLM model plus estimated tokens to price, and attributes.

    ``estimated_cost`` is Money: a JSON float is refused (quote it), like every amount."""

    estimated_cost: Money | None = None
    currency: Currency = "USD"
    source: Source = "llm"
    provider: OptStr = None
    model: OptStr = None
    platform: OptStr = None
    actor_id: OptStr = None
    category: OptStr = None
    operation: OptStr = None
    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_read_tokens: Count = 0
    attributes: Attributes = Field(default_factory=Attributes)

    @model_validator(mode="after")
    def _cost_or_model(self) -> CheckRequest:
        if self.estimated_cost is None and not (
            self.source == "llm" and self.provider and self.model
        ):
            raise ValueError(
                "give estimated_cost, or provider and model (with estimated tokens) to price"
            )
        return self

    def field(self, name: str) -> str | None:
        """Same matchable fields as a usage event (see UsageEvent.field)."""
        if name == "source":
            return self.source
        if name in ("provider", "model", "platform", "actor_id", "category", "operation"):
            value: str | None = getattr(self, name)
            return value
        return self.attributes.get(name)


class BudgetVerdict(Strict):
    budget_id: str
    budget_name: str
    matched_via: str
    period_key: str
    spent: ExactDecimal
    limit: ExactDecimal
    spent_after: ExactDecimal
    percent_after: Decimal
    decision: Decision
    threshold_percent: Decimal | None = None
    approval_required: bool = False
    downgrade_to: str | None = None
    reason: str
    #: the budget's currency (spent, limit and spent_after are in it); when it differs
    #: from the call's, the cost converted at the newest reference rate and that rate
    currency: str | None = None
    cost_in_budget_currency: ExactDecimal | None = None
    rate: Decimal | None = None


class CheckResult(Strict):
    decision: Decision
    estimated_cost: ExactDecimal
    currency: Currency
    downgrade_to: str | None = None
    reason: str
    budgets: list[BudgetVerdict] = Field(default_factory=list)
