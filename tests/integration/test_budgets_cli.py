"""`spendstream budgets apply|list|show|status|delete`, `check` and `alerts` on the real broker.

The worker's outputs (a status and an alert) are written to their topics directly here,
so the CLI is tested on its own; the worker producing them is tested in the oracle test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from confluent_kafka import Producer

from spendstream.processes import ProcessGroup
from spendstream.readback import read_topic
from spendstream.schemas.avro import codec
from spendstream.schemas.models import AlertAction, BudgetAlert, BudgetStatus
from spendstream.topics import ensure_topics

pytestmark = pytest.mark.integration

BUDGETS = """
budgets:
  - budget_id: acme
    name: Acme
    limit: "100"
    scope: {org: acme}
    thresholds:
      - {percent: 50}
      - {percent: 90, action: throttle}
      - {percent: 100, action: block}
"""
CHILD = """
- budget_id: acme-ml
  name: Acme ML
  parent_id: acme
  limit: "30"
  scope: {team: ml}
"""


def cli(settings, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spendstream.cli", *args],
                          env=ProcessGroup(settings).env, capture_output=True, text=True,
                          input=stdin, timeout=120)  # fmt: skip


def test_budget_lifecycle_check_and_alert_actions(settings, tmp_path):
    ensure_topics(settings)
    (tmp_path / "b.yaml").write_text(BUDGETS)
    (tmp_path / "child.yaml").write_text(CHILD)
    (tmp_path / "bad.yaml").write_text(CHILD.replace('"30"', '"300"'))
    assert cli(settings, "budgets", "apply", str(tmp_path / "b.yaml")).returncode == 0
    # a child in its own file: validated against the live parent
    bad = cli(settings, "budgets", "apply", str(tmp_path / "bad.yaml"))
    assert bad.returncode == 1
    assert "limit 300 exceeds its parent 'acme' limit 100" in " ".join(bad.stderr.split())
    assert "Traceback" not in bad.stderr
    assert cli(settings, "budgets", "apply", str(tmp_path / "child.yaml")).returncode == 0
    listed = cli(settings, "budgets", "list")
    assert "acme-ml" in listed.stdout and "acme" in listed.stdout

    # what a worker would have published: a status near the limit and an alert
    month = datetime.now(UTC).strftime("%Y-%m")
    alert_id = f"acme:{month}:threshold:90"
    status = BudgetStatus(
        budget_id="acme", budget_name="Acme", period_key=month,
        period_start=datetime.now(UTC) - timedelta(days=3), period_end=datetime.now(UTC)
        + timedelta(days=20), spent=Decimal("95"), limit=Decimal(100), currency="USD",
        event_count=9, state="critical", updated_at=datetime.now(UTC),
        burn_rate_per_day=Decimal("31.666666666"), projected_total=Decimal("728.33"),
        projected_low=Decimal(95), projected_high=Decimal(1500), days_left=Decimal(20),
        days_to_limit=Decimal("0.1579"), active_alerts=[f"acme:{month}:threshold:50", alert_id],
    )  # fmt: skip
    alert = BudgetAlert(
        alert_id=alert_id, budget_id="acme", budget_name="Acme", period_key=month,
        kind="threshold", threshold_percent=Decimal(90), action="throttle", severity="critical",
        spent=Decimal(95), limit=Decimal(100), currency="USD", message="Acme: 95% spent",
        triggered_at=datetime.now(UTC),
    )  # fmt: skip
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    producer.produce(settings.topics.status, key=f"acme|{month}".encode(),
                     value=codec("BudgetStatus").encode(status.to_avro()))  # fmt: skip
    producer.produce(settings.topics.alerts, key=b"acme",
                     value=codec("BudgetAlert").encode(alert.to_avro()))  # fmt: skip
    assert producer.flush(30) == 0
    del producer

    shown = cli(settings, "budgets", "show", "acme", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["children"] == ["acme-ml"] and data["status"][0]["spent"] == "95"
    detail = cli(settings, "budgets", "status", "acme")
    assert "31.6667" in detail.stdout and "threshold:90" in detail.stdout

    # pre-flight: 95 + 3 crosses 90% (throttle); + 6 crosses 100% (block)
    small = cli(settings, "check", "--cost", "3", "--attr", "org=acme", "--json")
    assert small.returncode == 11 and json.loads(small.stdout)["decision"] == "throttle"
    big = cli(settings, "check", "--cost", "6", "--attr", "org=acme", "--attr", "team=ml")
    assert big.returncode == 12 and big.stdout.startswith("block")
    assert "tier 100% says block" in big.stdout
    elsewhere = cli(settings, "check", "--cost", "6", "--attr", "org=other")
    assert elsewhere.returncode == 0 and "no budget covers" in elsewhere.stdout
    priced = cli(settings, "check", "--provider", "openai", "--model", "gpt-4o",
                 "--input-tokens", "1000000", "--attr", "org=acme", "--json")  # fmt: skip
    assert json.loads(priced.stdout)["estimated_cost"] == "2.5"
    wrong = cli(settings, "check", "--attr", "org")
    assert wrong.returncode == 1 and "key=value" in wrong.stderr

    # alerts: list, acknowledge, resolve
    def listed_alerts(*flags: str) -> dict[str, str]:
        out = cli(settings, "alerts", "list", "--json", *flags).stdout.splitlines()
        return {a["alert_id"]: a["state"] for a in map(json.loads, out)}

    assert listed_alerts() == {alert_id: "open"}
    assert "threshold" in cli(settings, "alerts", "list").stdout  # the table
    assert cli(settings, "alerts", "ack", "acme:1999-01:nope").returncode == 1
    assert cli(settings, "alerts", "ack", alert_id, "--by", "ana").returncode == 0
    resolved = cli(settings, "alerts", "resolve", alert_id, "--note", "limit raised")
    assert resolved.returncode == 0, resolved.stderr
    actions = [a for _, a in read_topic(settings, settings.topics.alert_actions,
               lambda v: AlertAction.from_avro(codec("AlertAction").decode(v)))]  # fmt: skip
    assert [(a.action, a.actor) for a in actions][0] == ("acknowledge", "ana")
    assert actions[-1].action == "resolve" and actions[-1].note == "limit raised"
    assert listed_alerts() == {alert_id: "resolved"}
    assert listed_alerts("--open") == {}

    # delete: a parent with children is refused; a leaf goes, its history stays
    refused = cli(settings, "budgets", "delete", "acme", "--yes")
    assert refused.returncode == 1 and "has children ['acme-ml']" in " ".join(
        refused.stderr.split()
    )
    assert cli(settings, "budgets", "delete", "acme-ml", "--yes").returncode == 0
    assert "acme-ml" not in cli(settings, "budgets", "list").stdout
    missing = cli(settings, "budgets", "show", "acme-ml")
    assert missing.returncode == 1 and "no budget 'acme-ml'" in missing.stderr
