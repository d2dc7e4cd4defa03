"""Worker HTTP API logic: auth on changes, 4xx JSON for bad input, reads from local state."""

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from spendstream.config import Settings
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import BudgetStatus
from spendstream.streams.api import BudgetApi, guarded
from spendstream.streams.budget_feed import BudgetFeed
from spendstream.streams.pricing import Pricer

TOKEN = "s3cret"
AUTH = f"Bearer {TOKEN}"


@pytest.fixture
def api():
    feed = BudgetFeed(Settings())
    feed.registry.put(BudgetDefinition(budget_id="org", name="Acme", limit="100",
                                       scope={"org": "acme"}))  # fmt: skip
    written, actions = [], []
    api = BudgetApi(feed, Pricer(), TOKEN, lambda b, i: written.append((b, i)), actions.append)
    api.written, api.actions = written, actions
    return api


def body(data) -> bytes:
    return json.dumps(data).encode()


def test_changes_need_the_bearer_token(api):
    new = body({"name": "ML", "limit": "10", "parent_id": "org"})
    assert api.put_budget("ml", new, None)[0] == 401
    assert api.put_budget("ml", new, "Bearer wrong")[0] == 401
    assert api.delete_budget("org", "Basic abc")[0] == 401
    read_only = BudgetApi(api.feed, api.pricer, "", api.write_budget, api.write_action)
    status, reply = read_only.put_budget("ml", new, AUTH)
    assert status == 403 and "SPENDSTREAM_API_TOKEN" in reply["error"]
    assert api.written == []


def test_create_read_update_delete(api):
    status, created = api.put_budget(None, body({"budget_id": "ml", "name": "ML", "limit": "10",
                                                 "parent_id": "org"}), AUTH)  # fmt: skip
    assert status == 201 and created["limit"] == "10"  # money as a decimal string
    assert (
        api.put_budget(None, body({"budget_id": "ml", "name": "x", "limit": "1"}), AUTH)[0] == 409
    )
    assert api.get_budget("ml") == (200, created)
    status, updated = api.put_budget("ml", body({"name": "ML", "limit": "20", "parent_id": "org",
                                                 "period": "weekly"}), AUTH)  # fmt: skip
    assert status == 200 and updated["period"] == "weekly"
    assert [b["budget_id"] for b in api.list_budgets()[1]] == ["ml", "org"]
    assert api.delete_budget("org", AUTH)[0] == 409  # has a child
    assert api.delete_budget("ml", AUTH)[0] == 200
    assert api.get_budget("ml")[0] == 404
    assert [(b and b.budget_id, i) for b, i in api.written] == [("ml", "ml"), ("ml", "ml"),
                                                               (None, "ml")]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (body({"name": "x", "limit": "-5"}), 422, "limit"),
        (body({"name": "x", "limit": "10", "timezone": "Mars/Base"}), 422, "IANA"),
        (
            body({"name": "x", "limit": "10", "thresholds": [{"percent": 90}, {"percent": 50}]}),
            422,
            "ascending",
        ),
        (body({"name": "x", "limit": "500", "parent_id": "org"}), 422, "exceeds its parent"),
        (body({"name": "x", "limit": "5", "parent_id": "nope"}), 422, "unknown"),
        (body({"budget_id": "other", "name": "x", "limit": "5"}), 400, "path"),
    ],
)
def test_invalid_budgets_get_a_4xx_json_error(api, payload, status, words):
    got_status, reply = asyncio.run(guarded(lambda: api.put_budget("x", payload, AUTH)))
    assert got_status == status and words in reply["error"]
    assert api.written == []


def test_check_answers_from_local_status(api):
    api.feed.statuses["org|" + datetime.now(UTC).strftime("%Y-%m")] = BudgetStatus(
        budget_id="org", budget_name="Acme", period_key=datetime.now(UTC).strftime("%Y-%m"),
        period_start=datetime(2026, 11, 1, tzinfo=UTC), period_end=datetime(2026, 12, 1, tzinfo=UTC),
        spent=Decimal("95"), limit=Decimal(100), currency="USD", event_count=3, state="critical",
        updated_at=datetime.now(UTC),
    )  # fmt: skip
    status, reply = api.check(body({"estimated_cost": "2", "attributes": {"org": "acme"}}))
    assert status == 200 and reply["decision"] == "warn"
    assert reply["budgets"][0]["spent_after"] == "97"
    status, reply = api.check(body({"provider": "openai"}))
    assert status == 422 and "estimated_cost" in reply["error"]
    status, reply = api.check(body({"provider": "openai", "model": "no-such-model"}))
    assert status == 422 and "no-such-model" in reply["error"]


def test_alert_actions_and_status_hide_resolved_alerts(api):
    api.feed.statuses["org|2026-11"] = BudgetStatus(
        budget_id="org", budget_name="Acme", period_key="2026-11",
        period_start=datetime(2026, 11, 1, tzinfo=UTC), period_end=datetime(2026, 12, 1, tzinfo=UTC),
        spent=Decimal("60"), limit=Decimal(100), currency="USD", event_count=3, state="normal",
        updated_at=datetime.now(UTC), active_alerts=["org:2026-11:threshold:50"],
    )  # fmt: skip
    alert = "org:2026-11:threshold:50"
    assert api.alert_action(alert, "resolve", body({"actor": "ana"}), None)[0] == 401
    assert api.alert_action(alert, "snooze", b"", AUTH)[0] == 404
    assert api.alert_action("ghost:2026-11:x", "resolve", b"", AUTH)[0] == 404
    status, reply = api.alert_action(alert, "acknowledge", body({"actor": "ana"}), AUTH)
    assert status == 200 and reply["action"] == "acknowledge"
    assert api.status("org")[1]["periods"][0]["active_alerts"] == [alert]
    status, reply = api.alert_action(alert, "resolve", body({"note": "raised limit"}), AUTH)
    assert status == 200 and reply["actor"] == "api" and api.actions[-1].note == "raised limit"
    assert api.status("org")[1]["periods"][0]["active_alerts"] == []
    assert api.status("nope")[0] == 404


def test_usage_without_a_warehouse_is_a_503_and_unknown_budget_a_404(api):
    assert api.usage("org", 10)[0] == 503
    assert api.usage("nope", 10)[0] == 404
    api.read_usage = lambda b, n: [{"event_id": "e1", "amount": "0.5"}][:n]
    assert api.usage("org", 10) == (200, {"budget_id": "org", "usage": [{"event_id": "e1",
                                                                         "amount": "0.5"}]})  # fmt: skip


def test_unexpected_failures_are_json_500s():
    def boom():
        raise RuntimeError("kaput")

    assert asyncio.run(guarded(boom)) == (500, {"error": "internal error: RuntimeError: kaput"})
