"""The worker's HTTP API against a real worker, sink, broker and chDB: recent usage from
ClickHouse through the sink's query port, and JSON errors for bodies aiohttp refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any

import pytest

from spendstream.config import Settings
from spendstream.processes import wait_for, worker_metrics
from spendstream.producer import UsagePublisher, publish_budgets
from spendstream.schemas.budget import BudgetDefinition
from spendstream.sinks.warehouse import sink_warehouse
from spendstream.topics import ensure_topics
from tests.integration.test_pipeline import known_events

pytestmark = pytest.mark.integration
TOKEN = "usage-test-token"


def call(settings: Settings, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    """(status, JSON body) of a request to the worker; a non-JSON body fails the test."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{settings.worker_web_port}{path}", data=body, method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_budget_usage_answers_200_with_exact_rows_in_embedded_mode(settings, services):
    events, total = known_events(6, "usage-org")
    ensure_topics(settings)
    publish_budgets(settings, [BudgetDefinition(budget_id="usage-org", name="Usage", limit="1000",
                                                scope={"org": "usage-org"})])  # fmt: skip
    services.start("worker", "worker", SPENDSTREAM_API_TOKEN=TOKEN)
    services.start("sink", "sink")
    with UsagePublisher(settings) as publisher:
        assert publisher.publish_many(events).failed == 0

    def stored() -> bool:
        warehouse = sink_warehouse(settings)
        if warehouse is None:
            return False
        n = warehouse.query("SELECT count() FROM cost_allocations FINAL").scalar()
        b = warehouse.query("SELECT count() FROM budgets WHERE budget_id = 'usage-org'").scalar()
        return n == len(events) and b > 0

    wait_for("allocations in ClickHouse", stored, 180, services)
    wait_for(
        "the worker's HTTP API", lambda: worker_metrics(settings.worker_web_port), 60, services
    )

    status, reply = call(settings, "GET", "/budgets/usage-org/usage?limit=50")
    assert status == 200, reply
    rows = reply["usage"]
    assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in events)
    assert all(isinstance(r["amount"], str) for r in rows)  # money: decimal strings
    assert sum(Decimal(r["amount"]) for r in rows) == total  # exact to the last unit
    assert [r["occurred_at"] for r in rows] == sorted(
        (r["occurred_at"] for r in rows), reverse=True
    )  # newest first; fmt: skip
    status, reply = call(settings, "GET", "/budgets/usage-org/usage?limit=2")
    assert status == 200 and len(reply["usage"]) == 2

    # an alert that never fired cannot be resolved in advance
    status, reply = call(settings, "POST", "/alerts/usage-org:2026-11:threshold:90/resolve", b"{}")
    assert status == 404 and "error" in reply

    # bodies aiohttp or the JSON parser refuse are JSON 4xx errors, not 500 or plain text
    status, reply = call(settings, "POST", "/check", b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "nested too deeply" in reply["error"]
    status, reply = call(settings, "POST", "/check", b" " * (2 * 1024 * 1024))
    assert status == 413 and "larger than" in reply["error"]
    status, reply = call(settings, "PUT", "/budgets/x", b"{" + b" " * (2 * 1024 * 1024) + b"}")
    assert status == 413 and "error" in reply

    # a report names a budget ClickHouse knows (through the sink's query port) or fails
    env = {**os.environ, **settings.to_env()}
    cli = [sys.executable, "-m", "spendstream.cli", "report", "summary", "--format", "json"]
    known = subprocess.run([*cli, "--budget", "usage-org"], env=env, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert known.returncode == 0, known.stderr
    summary = json.loads(known.stdout)
    assert Decimal(summary["rows"][-1]["cost"]) == total
    unknown = subprocess.run([*cli, "--budget", "nope"], env=env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert unknown.returncode == 1 and "no budget 'nope'" in unknown.stderr
