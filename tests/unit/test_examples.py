"""The shipped examples stay valid: users copy them first."""

import json
from decimal import Decimal
from pathlib import Path

from spendstream.schemas.budget import load_budgets_file
from spendstream.schemas.models import UsageEvent
from spendstream.streams.matching import BudgetRegistry
from spendstream.streams.pricing import Pricer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_example_budgets_load_with_hierarchy():
    budgets = {b.budget_id: b for b in load_budgets_file(EXAMPLES / "budgets.yaml")}
    assert budgets["acme-ml"].parent_id == "acme"
    assert budgets["acme-ml"].thresholds[1].downgrade_to == "gpt-4o-mini"


def test_example_events_validate_price_and_match():
    budgets = BudgetRegistry(load_budgets_file(EXAMPLES / "budgets.yaml"))
    pricer = Pricer()
    lines = (EXAMPLES / "usage.jsonl").read_text().splitlines()
    events = [UsageEvent.model_validate(json.loads(line)) for line in lines]
    costs = {e.event_id: pricer.price(e).total for e in events}
    # gpt-4o: 176 uncached x $2.5/M + 1024 cached x $1.25/M + 350 x $10/M
    assert costs["ex-0001"] == Decimal("0.00044") + Decimal("0.00128") + Decimal("0.0035")
    assert costs["ex-0003"] == Decimal("0.0856")  # Apify's own usageTotalUsd
    assert costs["ex-0004"] == Decimal("0.0796")  # 4 Zapier tasks x $0.0199
    ids = [m.budget.budget_id for m in budgets.match(events[0])]
    assert ids == ["acme", "acme-ml", "acme-openai-daily"]
