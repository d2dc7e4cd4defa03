"""The shipped examples stay valid: users copy them first, on any day."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from spendstream.builders import build
from spendstream.schemas.budget import load_budgets_file
from spendstream.schemas.models import SourcePosition, UsageEvent
from spendstream.streams.matching import BudgetRegistry
from spendstream.streams.pricing import Pricer
from spendstream.streams.processor import UsageProcessor

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_example_budgets_load_with_hierarchy():
    budgets = {b.budget_id: b for b in load_budgets_file(EXAMPLES / "budgets.yaml")}
    assert budgets["acme-ml"].parent_id == "acme"
    assert budgets["acme-ml"].thresholds[1].downgrade_to == "gpt-4o-mini"


def test_example_events_validate_price_and_match():
    budgets = BudgetRegistry(load_budgets_file(EXAMPLES / "budgets.yaml"))
    pricer = Pricer()
    events = example_events(datetime.now(UTC))
    costs = {e.event_id: pricer.price(e).total for e in events}
    # gpt-4o: 176 uncached x $2.5/M + 1024 cached x $1.25/M + 350 x $10/M
    assert costs["ex-0001"] == Decimal("0.00044") + Decimal("0.00128") + Decimal("0.0035")
    assert costs["ex-0003"] == Decimal("0.0856")  # Apify's own usageTotalUsd
    assert costs["ex-0004"] == Decimal("0.0796")  # 4 Zapier tasks x $0.0199
    ids = [m.budget.budget_id for m in budgets.match(events[0])]
    assert ids == ["acme", "acme-ml", "acme-openai-daily"]


def example_events(now: datetime) -> list[UsageEvent]:
    """The example file as `spendstream publish` reads it, published at ``now``."""
    lines = (EXAMPLES / "usage.jsonl").read_text().splitlines()
    return [build(json.loads(line), now=now) for line in lines if line.strip()]


@pytest.mark.parametrize(
    "published",
    [datetime(2026, 11, 20, 12, tzinfo=UTC), datetime(2027, 3, 1, 0, 5, tzinfo=UTC),
     datetime(2027, 12, 31, 23, 30, tzinfo=UTC), datetime(2031, 6, 15, 22, 40, tzinfo=UTC),
     datetime.now(UTC) + timedelta(days=40)],
)  # fmt: skip
def test_every_example_event_counts_whenever_it_is_published(published):
    """Fixed dates made ex-0001 too late for the daily budget a few days after them; the
    events are relative to publishing, so each counts toward every budget it matches."""
    budgets = BudgetRegistry(load_budgets_file(EXAMPLES / "budgets.yaml"))
    processor = UsageProcessor(Pricer(), budgets, late_periods=1)
    for offset, event in enumerate(example_events(published)):
        assert published - timedelta(hours=1) <= event.occurred_at < published
        position = SourcePosition(topic=f"usage.{event.source}", partition=0, offset=offset)
        out = processor.process(event, position, published, arrived=published)
        assert out.dead is None and out.priced is not None, out.dead
        assert len(out.allocations) == len(budgets.match(event)) > 0


def test_relative_times_are_only_now_minus_a_duration():
    line = {"event_id": "x", "occurred_at": "now-2h", "source": "custom",
            "payload": {"kind": "custom", "amount": "1", "currency": "USD"}}  # fmt: skip
    at = datetime(2027, 1, 1, tzinfo=UTC)
    assert build(line, now=at).occurred_at == at - timedelta(hours=2)
    assert build({**line, "occurred_at": "now"}, now=at).occurred_at == at
    with pytest.raises(ValueError, match="occurred_at"):
        build({**line, "occurred_at": "now+2h"}, now=at)
