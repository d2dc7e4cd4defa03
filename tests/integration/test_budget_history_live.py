"""`budgets history` on the real broker with a worker and the sink: two applies with
different actors and notes (CLI), an update through the worker's HTTP API with a named
token, a delete (CLI); the history shows the four versions with their actors, notes and
diffs, from the topic and from ClickHouse's budget_history (through the sink's port)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from spendstream.processes import ProcessGroup, wait_for, worker_metrics
from spendstream.sinks.warehouse import sink_warehouse
from spendstream.topics import ensure_topics

pytestmark = pytest.mark.integration

TOKEN = "tok-9f2c"
V1 = "- {budget_id: acme, name: Acme, limit: '100', scope: {org: acme}}\n"
V2 = "- {budget_id: acme, name: Acme, limit: '150', scope: {org: acme, team: [ml]}}\n"


def call(settings, method: str, path: str, body: object = None) -> tuple[int, Any]:  # type: ignore[no-untyped-def]
    """(status, JSON body) of a request to the worker's API with the named token."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{settings.worker_web_port}{path}", data=None if body is None else json.dumps(body).encode(),
        method=method, headers={"Authorization": f"Bearer {TOKEN}",
                                "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def cli(settings, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "spendstream.cli", *args],
                          env=ProcessGroup(settings).env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_history_shows_who_changed_what_from_topic_and_clickhouse(settings, services, tmp_path):
    ensure_topics(settings)
    services.start("sink", "sink")
    services.start("worker", "worker", SPENDSTREAM_API_TOKENS=f"ci-bot={TOKEN},other=tok-2")
    (tmp_path / "v1.yaml").write_text(V1)
    (tmp_path / "v2.yaml").write_text(V2)
    first = cli(settings, "budgets", "apply", str(tmp_path / "v1.yaml"), "--actor", "ana",
                "--note", "initial budget")  # fmt: skip
    assert first.returncode == 0, first.stderr
    second = cli(settings, "budgets", "apply", str(tmp_path / "v2.yaml"), "--actor", "bob",
                 "--note", "ml joins")  # fmt: skip
    assert second.returncode == 0, second.stderr

    # the worker's HTTP API with a named token: the token's name is the actor, not the body's
    wait_for("the worker's HTTP API", lambda: worker_metrics(settings.worker_web_port), 90,
             services)  # fmt: skip
    wait_for("the worker to know the second version",
             lambda: call(settings, "GET", "/budgets/acme")[1].get("actor") == "bob", 60,
             services)  # fmt: skip
    body = {"name": "Acme", "limit": "150", "scope": {"org": "acme", "team": ["ml"]},
            "thresholds": [{"percent": 80}, {"percent": 100, "action": "block"}],
            "actor": "mallory", "note": "tighter tiers"}  # fmt: skip
    status, reply = call(settings, "PUT", "/budgets/acme", body)
    assert status == 200 and reply["actor"] == "ci-bot", reply
    status, reply = call(settings, "DELETE", "/budgets/acme", {"note": 5})  # a DELETE's body
    assert status == 422 and "note" in reply["error"], reply

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
