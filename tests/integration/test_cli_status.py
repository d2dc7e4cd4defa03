"""`spendstream status` against the real broker, worker, sink and chDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from typing import Any

import pytest

from spendstream.config import Settings
from spendstream.processes import wait_for
from spendstream.producer import UsagePublisher, publish_budgets
from spendstream.readback import read_alerts
from spendstream.schemas.budget import BudgetDefinition
from spendstream.sinks.tables import sink_inputs
from spendstream.sinks.warehouse import running_sink
from spendstream.topics import (
    ensure_topics,
    sink_group,
    topic_lags,
    worker_group,
    worker_inputs,
    worker_lags,
)
from tests.integration.test_pipeline import known_events

pytestmark = pytest.mark.integration


def status(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spendstream.cli", "status", *args],
                          env={**os.environ, **settings.to_env()}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def status_json(settings: Settings) -> dict[str, Any]:
    result = status(settings, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_status_shows_broker_lag_sink_and_last_alert(settings, services):
    events, total = known_events(20, "status-org")
    ensure_topics(settings)
    # a limit the events cross: threshold alerts fire
    limit = (total / Decimal(2)).quantize(Decimal("0.000001"))
    publish_budgets(settings, [BudgetDefinition(budget_id="status-org", name="Status",
                                                limit=limit, scope={"org": "status-org"})])  # fmt: skip
    with UsagePublisher(settings) as publisher:
        assert publisher.publish_many(events).failed == 0

    # nothing runs yet: the worker group never committed, so it lags by every event
    before = status_json(settings)
    assert before["broker"] == {"address": settings.bootstrap_servers, "reachable": True}
    assert before["worker"]["group"] == worker_group(settings)
    assert set(before["worker"]["lag"]) == set(worker_inputs(settings))
    assert before["worker"]["lag"][settings.topics.llm] == len(events)
    assert before["worker"]["http"]["answering"] is False
    assert before["sink"]["group"] == sink_group(settings)
    assert set(before["sink"]["lag"]) == set(sink_inputs(settings.topics))
    assert before["sink"]["lag"][settings.topics.budgets] == 1
    assert before["sink"]["running"] is False
    assert before["last_alert"] is None

    services.start("worker", "worker")
    services.start("sink", "sink")

    def settled() -> bool:
        lags = [*worker_lags(settings).values(),
                *topic_lags(settings, sink_group(settings), sink_inputs(settings.topics)).values()]  # fmt: skip
        return all(lag == 0 for lag in lags) and bool(read_alerts(settings)) and \
            running_sink(settings) is not None  # fmt: skip

    wait_for("the pipeline to catch up and alert", settled, 180, services, interval=1.0)
    newest = max(read_alerts(settings), key=lambda a: a.triggered_at)

    after = status_json(settings)
    assert after["worker"]["total_lag"] == 0 and after["sink"]["total_lag"] == 0
    assert all(lag == 0 for lag in after["worker"]["lag"].values())
    assert after["worker"]["http"]["answering"] is True
    sink = after["sink"]
    assert sink["running"] is True and sink["pid"] == services.procs["sink"].pid
    assert sink["health"]["ok"] is True  # what the sink's GET /health says
    assert after["last_alert"]["budget_id"] == "status-org"
    assert after["last_alert"]["alert_id"].startswith("status-org:")
    assert after["last_alert"]["triggered_at"] == newest.triggered_at.isoformat()

    table = status(settings)
    assert table.returncode == 0, table.stderr
    assert f"reachable at {settings.bootstrap_servers}" in table.stdout
    assert "healthy" in table.stdout and after["last_alert"]["alert_id"] in table.stdout
    assert settings.topics.llm in table.stdout
