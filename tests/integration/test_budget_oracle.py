"""Budget engine on the real broker against an oracle recomputed from the raw input.

Budgets are created through the worker's HTTP API; events spread over the last days
(several daily periods in a non-UTC zone, hierarchical monthly budgets, two providers,
some too late to count). Per budget and period the stream's spend and count must equal
the oracle exactly, threshold alerts must be exactly the crossings the oracle expects,
too-late events must be priced and stored in ClickHouse (real spend) with no allocation
and a too_late record in the DLQ, and the API must answer checks, alert actions and
deletions from the same state.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from spendstream.processes import wait_for
from spendstream.producer import UsagePublisher
from spendstream.readback import read_alerts, read_statuses, read_topic
from spendstream.schemas.avro import codec
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import Attributes, DeadLetter, LlmUsage, UsageEvent
from spendstream.schemas.money import plain
from spendstream.sinks.warehouse import sink_warehouse
from spendstream.streams.matching import BudgetRegistry
from spendstream.streams.periods import budget_period, open_since
from spendstream.streams.pricing import Pricer
from spendstream.topics import ensure_topics

pytestmark = pytest.mark.integration
TOKEN = "integration-token"


def call(settings, method: str, path: str, body: Any = None, token: str | None = TOKEN):
    req = urllib.request.Request(
        f"http://127.0.0.1:{settings.worker_web_port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def api_up(settings) -> bool:
    try:
        return call(settings, "GET", "/budgets")[0] == 200
    except OSError:
        return False


def quiet_zone(now: datetime) -> str:
    """A zone whose local time is far from midnight now, so 'yesterday' cannot change
    while the test runs (the late-event cut-off is a local midnight)."""
    for name in ("Asia/Tokyo", "America/New_York", "Europe/Berlin"):
        if 3 <= now.astimezone(ZoneInfo(name)).hour <= 20:
            return name
    raise AssertionError("unreachable: those zones are 5+ hours apart")


def test_totals_and_alerts_match_the_oracle_and_the_api_acts_on_them(settings, services):
    now = datetime.now(UTC)
    zone = quiet_zone(now)
    ensure_topics(settings)
    services.start("worker", "worker", SPENDSTREAM_API_TOKEN=TOKEN)
    services.start("sink", "sink")
    wait_for("worker HTTP API", lambda: api_up(settings), 90, services)

    # --- budgets through the API (child within parent, tiers with actions) --------------
    definitions: list[dict[str, Any]] = [
        {"budget_id": "org", "name": "Acme", "limit": "40", "scope": {"org": "acme"}},
        {"budget_id": "ml", "name": "ML", "parent_id": "org", "limit": "12",
         "scope": {"team": "ml"},
         "thresholds": [{"percent": 50}, {"percent": 80, "action": "downgrade",
                                          "downgrade_to": "gpt-4o-mini"},
                        {"percent": 100, "action": "block"}]},
        {"budget_id": "ml-daily", "name": "ML daily", "parent_id": "ml", "limit": "1.5",
         "period": "daily", "timezone": zone, "scope": {"team": "ml"}},
        {"budget_id": "claude", "name": "Anthropic", "limit": "15",
         "scope": {"provider": "anthropic"}},
    ]  # fmt: skip
    assert call(settings, "POST", "/budgets", definitions[0], token=None)[0] == 401
    assert call(settings, "POST", "/budgets", {**definitions[1], "limit": "99"})[0] == 422
    for d in definitions:
        status, reply = call(settings, "POST", "/budgets", d)
        assert status == 201, reply
    budgets = [BudgetDefinition.model_validate(d) for d in definitions]
    registry = BudgetRegistry(budgets)

    # --- input: 800 events over the last 70 hours, 2 providers, 3 teams -----------------
    events: list[UsageEvent] = []
    for i in range(800):
        when = now - timedelta(minutes=5 + (i * 263) % (70 * 60))
        claude = i % 3 == 0
        events.append(UsageEvent(
            event_id=f"ev-{i}", occurred_at=when, source="llm",
            attributes=Attributes(org="acme", team=("ml", "web", "ops")[i % 3 if i % 4 else 0]),
            payload=LlmUsage(provider="anthropic" if claude else "openai",
                             model="claude-sonnet-4-5" if claude else "gpt-4o",
                             input_tokens=2000 + 37 * i, output_tokens=300 + 11 * i,
                             cache_read_tokens=(i % 7) * 100),
        ))  # fmt: skip
    with UsagePublisher(settings) as publisher:
        report = publisher.publish_many(events)
    assert (report.sent, report.failed) == (800, 0)
    arrived_by = datetime.now(UTC)

    # --- the oracle: the same rules, applied to the raw input in one sequential pass ----
    pricer = Pricer()
    spent: dict[str, Decimal] = defaultdict(Decimal)
    count: Counter[str] = Counter()
    too_late: set[str] = set()
    for e in events:
        cost = pricer.price(e).total
        matches = registry.match(e)
        periods = {m.budget.budget_id: budget_period(m.budget, e.occurred_at) for m in matches}
        late = False
        for m in matches:
            oldest = open_since(m.budget, arrived_by, settings.late_periods)
            assert oldest == open_since(m.budget, now, settings.late_periods)  # quiet zone
            late |= oldest is not None and periods[m.budget.budget_id].start < oldest.start
        if late:
            too_late.add(e.event_id)
            continue
        for m in matches:
            key = f"{m.budget.budget_id}|{periods[m.budget.budget_id].key}"
            spent[key] += cost
            count[key] += 1
    assert too_late and len(too_late) < 800  # the input exercises both
    expected_tiers: dict[str, set[str]] = {}
    for key, total in spent.items():
        budget = next(b for b in budgets if b.budget_id == key.split("|")[0])
        pct = total * 100 / budget.limit
        tiers = {f"threshold:{plain(t.percent)}" for t in budget.thresholds if pct >= t.percent}
        expected_tiers[key] = tiers | ({"exceeded"} if total > budget.limit else set())
    assert sum(len(t) for t in expected_tiers.values()) >= 6

    # --- the stream agrees to the last unit --------------------------------------------
    def settled():
        got = {f"{s.budget_id}|{s.period_key}": s for s in read_statuses(settings)}
        done = {k: s.spent for k, s in got.items()} == dict(spent)
        return got if done else None

    statuses = wait_for("budget status equal to the oracle", settled, 120, services)
    assert {k: s.event_count for k, s in statuses.items()} == dict(count)
    assert len({k.split("|")[1] for k in statuses if k.startswith("ml-daily|")}) >= 2

    def dlq_complete():
        dead = [d for _, d in read_topic(settings, settings.topics.dlq,
                lambda v: DeadLetter.from_avro(codec("DeadLetter").decode(v)))]  # fmt: skip
        return dead if len(dead) >= len(too_late) else None

    dead = wait_for("too-late events in the DLQ", dlq_complete, 60, services)
    assert {d.event_id for d in dead} == too_late
    assert {d.error_code for d in dead} == {"too_late"}

    # too late to count is still spend: every event is priced and stored in ClickHouse,
    # the too-late ones with no allocation; ClickHouse's allocations equal the stream's
    warehouse = wait_for("sink query port", lambda: sink_warehouse(settings), 90, services)
    wait_for("every event in priced_usage", lambda: warehouse.query(
        "SELECT count() FROM priced_usage FINAL").scalar() == 800, 120, services)  # fmt: skip
    costs = {e.event_id: pricer.price(e).total for e in events}
    stored = dict(warehouse.query("SELECT event_id, cost FROM priced_usage FINAL").rows)
    assert stored == costs
    want_allocations = sum(count.values())
    wait_for("allocations in ClickHouse", lambda: warehouse.query(
        "SELECT count() FROM cost_allocations FINAL").scalar() == want_allocations, 120,
        services)  # fmt: skip
    late_allocated = warehouse.query(
        "SELECT count() FROM cost_allocations FINAL WHERE event_id IN {ids:Array(String)}",
        {"ids": sorted(too_late)},
    ).scalar()
    assert late_allocated == 0
    rows = warehouse.query("SELECT budget_id, period_key, sum(amount) FROM cost_allocations "
                           "FINAL GROUP BY budget_id, period_key").rows  # fmt: skip
    assert {f"{b}|{k}": v for b, k, v in rows} == dict(spent)

    def tiers_in():
        got: dict[str, set[str]] = defaultdict(set)
        alerts = read_alerts(settings)
        for a in alerts:
            if a.kind in ("threshold", "exceeded"):
                got[f"{a.budget_id}|{a.period_key}"].add(a.alert_id.split(":", 2)[2])
        want = {k: v for k, v in expected_tiers.items() if v}
        return (alerts, dict(got)) if dict(got) == want else None

    alerts, _ = wait_for("alerts equal to the oracle's crossings", tiers_in, 60, services)
    assert max(Counter(a.alert_id for a in alerts).values()) == 1  # each fires once
    forecasts = Counter(f"{a.budget_id}|{a.period_key}" for a in alerts if a.kind == "forecast")
    assert all(n == 1 for n in forecasts.values())

    # --- the API answers from the same state -------------------------------------------
    month = next(k for k in spent if k.startswith("ml|")).split("|")[1]
    status, reply = call(settings, "GET", "/budgets/ml/status")
    assert status == 200
    ml_now = next(p for p in reply["periods"] if p["period_key"] == month)
    assert Decimal(ml_now["spent"]) == spent[f"ml|{month}"]
    assert Decimal(ml_now["burn_rate_per_day"]) > 0 and ml_now["projected_total"]
    status, answer = call(settings, "POST", "/check", {
        "estimated_cost": "0.01", "attributes": {"org": "acme", "team": "ml"}})  # fmt: skip
    assert status == 200
    ml_pct = (spent[f"ml|{month}"] + Decimal("0.01")) * 100 / 12
    want = "block" if ml_pct >= 100 else "downgrade" if ml_pct >= 80 else None
    verdicts = {v["budget_id"]: v["decision"] for v in answer["budgets"]}
    assert set(verdicts) == {"org", "ml", "ml-daily"}
    if want:
        assert verdicts["ml"] == want
    assert call(settings, "POST", "/check", {"model": "x"})[0] == 422

    # acknowledge and resolve an alert: it leaves the active alerts
    alert_id = next(a.alert_id for a in alerts if a.budget_id == "org" and a.kind == "threshold")
    assert call(settings, "POST", f"/alerts/{alert_id}/resolve", {"actor": "ana"},
                token="wrong")[0] == 401  # fmt: skip
    assert call(settings, "POST", f"/alerts/{alert_id}/acknowledge", {"actor": "ana"})[0] == 200
    assert call(settings, "POST", f"/alerts/{alert_id}/resolve", {"note": "limit raised"})[0] == 200
    org_status = call(settings, "GET", "/budgets/org/status")[1]
    active = [a for p in org_status["periods"] for a in p["active_alerts"]]
    assert alert_id not in active

    # delete: refused while a child exists, then matching stops
    assert call(settings, "DELETE", "/budgets/ml")[0] == 409
    assert call(settings, "DELETE", "/budgets/claude")[0] == 200
    assert call(settings, "GET", "/budgets/claude")[0] == 404
    assert "claude" not in [b["budget_id"] for b in call(settings, "GET", "/budgets")[1]]
    with UsagePublisher(settings) as publisher:
        publisher.publish_many([UsageEvent(
            event_id="after-delete", occurred_at=datetime.now(UTC), source="llm",
            attributes=Attributes(org="acme", team="web"),
            payload=LlmUsage(provider="anthropic", model="claude-sonnet-4-5", input_tokens=10),
        )])  # fmt: skip
    org_key = f"org|{datetime.now(UTC):%Y-%m}"
    wait_for("the org budget to count the new event",
             lambda: any(f"{s.budget_id}|{s.period_key}" == org_key
                         and s.event_count == count[org_key] + 1
                         for s in read_statuses(settings)), 60, services)  # fmt: skip
    claude_counts = {f"{s.budget_id}|{s.period_key}": s.event_count
                     for s in read_statuses(settings) if s.budget_id == "claude"}  # fmt: skip
    assert claude_counts == {k: v for k, v in count.items() if k.startswith("claude|")}
