"""A budget skipped for its currency is counted and visible, on a real worker and broker.

EUR spend that matches a USD budget does not count toward it (amounts are never
converted); the worker must say so: every such event in /metrics.json
``skipped_currency_mismatch``, and one log line per budget and currency, not per event.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from spendstream.processes import wait_for, worker_metrics
from spendstream.producer import UsagePublisher, publish_budgets
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import Attributes, CustomCost, UsageEvent
from spendstream.topics import ensure_topics

pytestmark = pytest.mark.integration


def custom(event_id: str, amount: str, currency: str, when: datetime) -> UsageEvent:
    return UsageEvent(event_id=event_id, occurred_at=when, source="custom",
                      attributes=Attributes(org="acme"),
                      payload=CustomCost(amount=amount, currency=currency))  # fmt: skip


def test_currency_mismatch_is_counted_and_logged_once_per_pair(settings, services):
    ensure_topics(settings)
    publish_budgets(settings, [
        BudgetDefinition(budget_id="usd", name="USD", limit="100", scope={"org": "acme"}),
        BudgetDefinition(budget_id="gbp", name="GBP", limit="100", currency="GBP",
                         scope={"org": "acme"}),
    ])  # fmt: skip
    services.start("worker", "worker")
    now = datetime.now(UTC) - timedelta(minutes=1)
    events = [custom(f"eur-{i}", "1.5", "EUR", now) for i in range(4)]
    events.append(custom("usd-0", "2", "USD", now))
    with UsagePublisher(settings) as publisher:
        assert publisher.publish_many(events).sent == 5

    port = settings.worker_web_port
    metrics = wait_for("all five priced", lambda: (m := worker_metrics(port)) and
                       m.get("priced", 0) >= 5 and m, 120, services)  # fmt: skip
    # each EUR event skips both budgets, the USD event skips the GBP one
    assert metrics["skipped_currency_mismatch"] == 4 * 2 + 1
    assert metrics["allocations"] == 1
    log = services.log_path("worker").read_text()
    pairs = sorted(re.findall(r"budget '([^']+)' is in [A-Z]{3}: ([A-Z]{3}) spend", log))
    assert pairs == [("gbp", "EUR"), ("gbp", "USD"), ("usd", "EUR")]  # once per pair
