"""`budgets history` on the real broker with the sink: two applies with different actors
and notes (CLI), an update through the worker's API wiring with a named token, a delete
(CLI); the history shows the four versions with their actors, notes and diffs, from the
topic and from ClickHouse's budget_history (through the running sink's query port)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import SecretStr

from spendstream.processes import ProcessGroup, wait_for
from spendstream.sinks.warehouse import sink_warehouse
from spendstream.streams.app import make_api
from spendstream.streams.budget_feed import BudgetFeed
from spendstream.streams.pricing import Pricer
from spendstream.topics import ensure_topics

pytestmark = pytest.mark.integration

V1 = "- {budget_id: acme, name: Acme, limit: '100', scope: {org: acme}}\n"
V2 = "- {budget_id: acme, name: Acme, limit: '150', scope: {org: acme, team: [ml]}}\n"


def cli(settings, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "spendstream.cli", *args],
                          env=ProcessGroup(settings).env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_history_shows_who_changed_what_from_topic_and_clickhouse(settings, services, tmp_path):
    ensure_topics(settings)
    services.start("sink", "sink")
    (tmp_path / "v1.yaml").write_text(V1)
    (tmp_path / "v2.yaml").write_text(V2)
    first = cli(settings, "budgets", "apply", str(tmp_path / "v1.yaml"), "--actor", "ana",
                "--note", "initial budget")  # fmt: skip
    assert first.returncode == 0, first.stderr
    second = cli(settings, "budgets", "apply", str(tmp_path / "v2.yaml"), "--actor", "bob",
                 "--note", "ml joins")  # fmt: skip
    assert second.returncode == 0, second.stderr

    # the worker's API as `spendstream worker` wires it, with a named token
    named = settings.model_copy(update={"api_tokens": SecretStr("ci-bot=tok-9f2c")})
    feed = BudgetFeed(named, fetch_wait_ms=20)
    feed.start()
    assert feed.caught_up.wait(30)
    feed.stop()
    api = make_api(named, feed, Pricer())
    body = {"name": "Acme", "limit": "150", "scope": {"org": "acme", "team": ["ml"]},
            "thresholds": [{"percent": 80}, {"percent": 100, "action": "block"}],
            "actor": "mallory", "note": "tighter tiers"}  # fmt: skip
    status, reply = api.put_budget("acme", json.dumps(body).encode(), "Bearer tok-9f2c")
    assert status == 200 and reply["actor"] == "ci-bot", reply

    gone = cli(settings, "budgets", "delete", "acme", "--yes", "--actor", "ops",
               "--note", "project ended")  # fmt: skip
    assert gone.returncode == 0, gone.stderr

    def stored() -> bool:
        warehouse = sink_warehouse(settings)
        if warehouse is None:
            return False
        return warehouse.query("SELECT count() FROM budget_history FINAL").scalar() == 4

    wait_for("four budget versions in ClickHouse", stored, 120, services)

    shown = cli(settings, "budgets", "history", "acme", "--json")
    assert shown.returncode == 0, shown.stderr
    versions = json.loads(shown.stdout)["versions"]
    assert [(v["actor"], v["note"], v["kind"]) for v in versions] == [
        ("ana", "initial budget", "first"),
        ("bob", "ml joins", "changed"),
        ("ci-bot", "tighter tiers", "changed"),
        ("ops", "project ended", "deleted"),
    ]
    assert versions[1]["changes"] == [
        {"field": "limit", "old": "100", "new": "150"},
        {"field": "scope.team", "old": None, "new": ["ml"]},
    ]
    assert [c["field"] for c in versions[2]["changes"]] == ["thresholds"]
    assert all(v["from"] == ["topic", "clickhouse"] for v in versions)

    table = cli(settings, "budgets", "history", "acme")
    assert table.returncode == 0, table.stderr
    text = " ".join(table.stdout.split())
    assert "limit 100 -> 150" in text and "compacted" in text
    unknown = cli(settings, "budgets", "history", "nobody")
    assert unknown.returncode == 1 and "no budget 'nobody'" in unknown.stderr
