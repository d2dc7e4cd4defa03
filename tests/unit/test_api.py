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
    api = BudgetApi(
        feed, Pricer(), TOKEN, lambda b, i, *who: written.append((b, i)), actions.append
    )
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


def fired(api, alert_id: str) -> None:
    """Record a status of budget 'org' whose active alerts include ``alert_id``."""
    api.feed.statuses["org|2026-11"] = BudgetStatus(
        budget_id="org", budget_name="Acme", period_key="2026-11",
        period_start=datetime(2026, 11, 1, tzinfo=UTC), period_end=datetime(2026, 12, 1, tzinfo=UTC),
        spent=Decimal("60"), limit=Decimal(100), currency="USD", event_count=3, state="normal",
        updated_at=datetime.now(UTC), active_alerts=[alert_id],
    )  # fmt: skip


def test_alerts_that_never_fired_cannot_be_acted_on(api):
    # the budget exists, the alert id is well formed, but no status ever listed it
    early = "org:2026-11:threshold:90"
    status, reply = api.alert_action(early, "resolve", body({"actor": "ana"}), AUTH)
    assert status == 404 and early in reply["error"]
    assert api.actions == [] and early not in api.feed.actions
    # once it fires it can be resolved; and it did not arrive resolved in advance
    fired(api, early)
    assert api.status("org")[1]["periods"][0]["active_alerts"] == [early]
    assert api.alert_action(early, "resolve", b"", AUTH)[0] == 200
    # an alert already acted on stays actionable (its status may have been compacted away)
    api.feed.statuses.clear()
    assert api.alert_action(early, "acknowledge", b"", AUTH)[0] == 200


def test_deeply_nested_json_is_a_400_not_a_500(api):
    deep = b"[" * 200_000 + b"]" * 200_000
    for call in (lambda: api.check(deep), lambda: api.put_budget("x", deep, AUTH)):
        status, reply = asyncio.run(guarded(call))
        assert status == 400 and "nested too deeply" in reply["error"]


@pytest.mark.parametrize("budget_id", ["a:b", "..", ".", ".hidden", "a/b", "a b", "x" * 129, ""])
def test_budget_ids_outside_the_safe_alphabet_are_refused(api, budget_id):
    status, reply = api.put_budget(None, body({"budget_id": budget_id, "name": "x",
                                               "limit": "5"}), AUTH)  # fmt: skip
    assert status == 422 and reply["error"].startswith("budget_id:")
    assert api.written == []


def test_budget_ids_in_the_safe_alphabet_are_accepted(api):
    for budget_id in ("a", "Team-ML_2.eu", "x" * 128):
        new = body({"budget_id": budget_id, "name": "x", "limit": "5"})
        assert api.put_budget(None, new, AUTH)[0] == 201


def test_whole_budget_errors_are_labelled_budget_not_event(api):
    status, reply = api.put_budget("x", body({"name": "x", "limit": "0"}), AUTH)
    assert status == 422
    assert reply["error"] == "budget: limit must be greater than zero"


def test_jsonable_keeps_money_exact_and_json_valid():
    from ipaddress import IPv4Address, IPv6Address
    from uuid import UUID

    from spendstream.streams.api import jsonable

    uid = UUID("61f0c404-5cb3-11e7-907b-a6006ad3dba0")
    value = {
        "amounts": [Decimal("1.500000000"), (Decimal("0.000000001"),)],
        "by_id": {uid: Decimal("2.50")},
        "ip": [IPv4Address("1.2.3.4"), IPv6Address("::1")],
        "when": datetime(2026, 11, 24, 10, tzinfo=UTC),
        "odd": [float("nan"), float("inf"), float("-inf"), 1.5],
        "raw": b"ab\xff",
    }
    text = json.dumps(jsonable(value), allow_nan=False)  # raises on NaN/Infinity
    assert json.loads(text) == {
        "amounts": ["1.5", ["0.000000001"]],
        "by_id": {str(uid): "2.5"},
        "ip": ["1.2.3.4", "::1"],
        "when": "2026-11-24T10:00:00+00:00",
        "odd": [None, None, None, 1.5],
        "raw": "ab\\xff",
    }


def test_browser_requests_are_refused():
    """A page in the user's browser must not use the API: cross-origin requests carry an
    Origin (or a cross-site Sec-Fetch-Site); a DNS-rebinding page a foreign Host."""
    from spendstream.streams.api import browser_refusal

    local = {"Host": "127.0.0.1:6066"}
    assert browser_refusal(local) is None
    assert browser_refusal({"Host": "localhost:6066"}) is None
    assert browser_refusal({**local, "Origin": "http://evil.example"})[0] == 403
    assert browser_refusal({**local, "Origin": "null"})[0] == 403
    assert browser_refusal({**local, "Sec-Fetch-Site": "cross-site"})[0] == 403
    assert browser_refusal({**local, "Sec-Fetch-Site": "same-origin"}) is None
    assert browser_refusal({"Host": "evil.example:6066"})[0] == 403
    # bound to all interfaces (Docker): any Host, still no Origin
    assert browser_refusal({"Host": "worker:6066"}, bind="0.0.0.0") is None
    assert browser_refusal({"Host": "worker:6066", "Origin": "x"}, bind="0.0.0.0")[0] == 403
