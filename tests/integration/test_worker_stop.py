"""A worker stopped (SIGTERM) inside a checkpoint interval writes that checkpoint and
exits by itself, its input committed: faust waits for every record it took to be acked,
and the checkpoint is what acks them."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta

import pytest

from spendstream.processes import wait_for, worker_metrics
from spendstream.producer import UsagePublisher, publish_budgets
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import Attributes, CustomCost, UsageEvent
from spendstream.topics import ensure_topics, worker_lags

pytestmark = pytest.mark.integration


def test_sigterm_mid_checkpoint_writes_it_and_exits_cleanly(settings, services):
    ensure_topics(settings)
    publish_budgets(settings, [BudgetDefinition(budget_id="b", name="B", limit="100",
                                                scope={"org": "acme"})])  # fmt: skip
    # a checkpoint interval far longer than the test: the batch surely waits in it
    proc = services.start("worker", "worker", SPENDSTREAM_WORKER_COMMIT_INTERVAL_MS="60000")
    when = datetime.now(UTC) - timedelta(minutes=1)
    with UsagePublisher(settings) as publisher:
        publisher.publish_many([
            UsageEvent(event_id=f"s-{i}", occurred_at=when, source="custom",
                       attributes=Attributes(org="acme"),
                       payload=CustomCost(amount="1.5", currency="USD"))
            for i in range(5)
        ])  # fmt: skip
    port = settings.worker_web_port
    wait_for("5 aggregated", lambda: (m := worker_metrics(port)) and
             m.get("aggregated", 0) >= 5, 120, services)  # fmt: skip
    assert worker_metrics(port).get("checkpoints", 0) == 0  # still open
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(45) == 0  # by itself: before, it hung until killed
    services.procs.pop("worker")
    assert "final checkpoint written" in services.log_path("worker").read_text()
    assert all(lag == 0 for lag in worker_lags(settings).values())  # nothing to replay
