"""The dashboard's data builder on a fake feed, its ClickHouse part and cache, the
request checks, and the page's files shipped in the package (with Chart.js's licence)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from spendstream.config import load_settings
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import AlertAction, BudgetStatus, Threshold
from spendstream.sinks.warehouse import ReaderWarehouse, connect, migrate
from spendstream.streams.dashboard import (
    NO_WAREHOUSE,
    Dashboard,
    WarehouseFacts,
    data_refusal,
    host_refusal,
    spend_curve,
    static_files,
    warehouse_facts,
)
from spendstream.streams.matching import BudgetRegistry

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
NOV = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
OCT = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))


@dataclass
class FakeFeed:
    registry: BudgetRegistry
    statuses: dict[str, BudgetStatus] = field(default_factory=dict)
    actions: dict[str, AlertAction] = field(default_factory=dict)


def status(budget_id: str, period: tuple[datetime, datetime], key: str, spent: str,
           limit: str = "1000", **extra: Any) -> BudgetStatus:  # fmt: skip
    return BudgetStatus(
        budget_id=budget_id, budget_name=budget_id.title(), period_key=key,
        period_start=period[0], period_end=period[1], spent=Decimal(spent),
        limit=Decimal(limit), currency="USD", event_count=7, state=extra.pop("state", "critical"),
        updated_at=NOW, **extra,
    )  # fmt: skip


def action(alert_id: str, what: str) -> AlertAction:
    return AlertAction(alert_id=alert_id, budget_id=alert_id.split(":")[0], action=what,
                       actor="ana", note="on it", at=NOW)  # fmt: skip


@pytest.fixture
def feed() -> FakeFeed:
    team = BudgetDefinition(
        budget_id="team", name="Team ML", limit="1000",
        thresholds=[Threshold(percent=50), Threshold(percent=80, action="downgrade",
                                                    downgrade_to="gpt-4o-mini"),
                    Threshold(percent=100, action="block")],
    )  # fmt: skip
    quiet = BudgetDefinition(budget_id="quiet", name="Quiet", limit="25.5", period="monthly")
    feed = FakeFeed(BudgetRegistry([team, quiet]))
    feed.statuses["team|2026-11"] = status(
        "team", NOV, "2026-11", "812.345678901",
        alerted_tiers=["threshold:50", "threshold:80"],
        burn_rate_per_day="55.123456789", projected_total="1650.5", projected_low="1400.25",
        projected_high="1900.125", days_left=Decimal("16.5"), days_to_limit=Decimal("3.4"),
        active_alerts=["team:2026-11:threshold:80"],
    )  # fmt: skip
    feed.statuses["team|2026-10"] = status("team", OCT, "2026-10", "1200.004", state="exceeded",
                                           alerted_tiers=["threshold:50", "exceeded"])  # fmt: skip
    feed.statuses["gone|2026-11"] = status("gone", NOV, "2026-11", "3.3", state="normal")
    feed.actions["team:2026-11:threshold:50"] = action("team:2026-11:threshold:50", "resolve")
    feed.actions["team:2026-11:threshold:80"] = action("team:2026-11:threshold:80", "acknowledge")
    return feed


def by_id(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["budget_id"]: b for b in data["budgets"]}


def floats_in(value: Any) -> list[Any]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in floats_in(v)]
    if isinstance(value, list):
        return [f for v in value for f in floats_in(v)]
    return []


def test_figures_are_exact_strings_per_budget_and_period(feed):
    data = Dashboard(feed, None).data(NOW)
    json.dumps(data)  # JSON-ready
    assert floats_in(data) == []  # money and everything else: never a float
    budgets = by_id(data)
    assert list(budgets) == ["gone", "quiet", "team"]  # every budget, also a deleted one
    team = budgets["team"]
    assert team["name"] == "Team ML" and team["current_period"] == "2026-11"
    assert [p["period_key"] for p in team["periods"]] == ["2026-11", "2026-10"]  # newest first
    now, before = team["periods"]
    assert now["current"] and not before["current"]
    assert now["spent"] == "812.345678901" and now["limit"] == "1000"
    assert now["remaining"] == "187.654321099" and now["percent"] == "81.23"
    assert now["state"] == "critical" and now["days_left"] == "16.5"
    assert (now["burn_rate_per_day"], now["projected_total"], now["projected_low"],
            now["projected_high"]) == ("55.123456789", "1650.5", "1400.25", "1900.125")  # fmt: skip
    assert now["period_start"] == "2026-11-01T00:00:00+00:00"
    assert now["period_end"] == "2026-12-01T00:00:00+00:00"
    assert before["spent"] == "1200.004" and before["state"] == "exceeded"


def test_tier_lines_come_from_the_budget_definition(feed):
    team = by_id(Dashboard(feed, None).data(NOW))["team"]
    tiers = team["periods"][0]["tiers"]
    assert [(t["percent"], t["amount"], t["action"], t["reached"]) for t in tiers] == [
        ("50", "500", "notify", True),
        ("80", "800", "downgrade", True),
        ("100", "1000", "block", False),
    ]
    assert tiers[1]["downgrade_to"] == "gpt-4o-mini"
    # a budget with no spend yet this period: zero, its own limit, the default tiers
    quiet = by_id(Dashboard(feed, None).data(NOW))["quiet"]
    (period,) = quiet["periods"]
    assert period["current"] and not period["has_status"] and period["period_key"] == "2026-11"
    assert (period["spent"], period["limit"], period["state"]) == ("0", "25.5", "normal")
    assert [t["amount"] for t in period["tiers"]] == ["12.75", "19.125", "22.95", "25.5"]
    assert period["days_left"] == "15.5"


def test_alerts_carry_their_state_from_the_alert_actions(feed):
    team = by_id(Dashboard(feed, None).data(NOW))["team"]
    states = [(a["alert_id"], a["kind"], a["tier"], a["state"]) for a in team["alerts"]]
    assert states == [
        ("team:2026-11:threshold:80", "threshold", "80", "acknowledged"),
        ("team:2026-11:threshold:50", "threshold", "50", "resolved"),  # resolved ones stay
        ("team:2026-10:exceeded", "exceeded", None, "open"),
        ("team:2026-10:threshold:50", "threshold", "50", "open"),
    ]
    assert team["open_alerts"] == 2
    assert team["alerts"][0]["by"] == "ana" and team["alerts"][0]["note"] == "on it"


def test_an_anomaly_alert_names_its_hour(feed):
    hour = int(datetime(2026, 11, 15, 9, tzinfo=UTC).timestamp()) // 3600
    feed.statuses["quiet|2026-11"] = status("quiet", NOV, "2026-11", "20", limit="25.5",
                                            alerted_tiers=[f"anomaly:{hour}"])  # fmt: skip
    (alert,) = by_id(Dashboard(feed, None).data(NOW))["quiet"]["alerts"]
    assert alert["kind"] == "anomaly" and alert["hour"] == "2026-11-15T09:00:00+00:00"
    assert alert["state"] == "open"


def test_without_a_warehouse_the_page_says_no_clickhouse(feed):
    for reader in (None, lambda refs, now: None):
        data = Dashboard(feed, reader).data(NOW)
        assert data["warehouse"] == {"available": False, "message": NO_WAREHOUSE}
        assert "no ClickHouse" in NO_WAREHOUSE
        assert all(p["drivers"] is None and p["curve"] is None
                   for b in data["budgets"] for p in b["periods"])  # fmt: skip

    def broken(refs: Any, now: datetime) -> WarehouseFacts:
        raise ConnectionError("sink went away")

    data = Dashboard(feed, broken).data(NOW)  # an outage is not an error of the page
    assert data["warehouse"]["available"] is False
    assert by_id(data)["team"]["periods"][0]["spent"] == "812.345678901"


def test_warehouse_facts_go_to_the_current_period_and_are_cached(feed):
    calls: list[tuple[Any, ...]] = []
    clock = [0.0]

    def reader(refs: Any, now: datetime) -> WarehouseFacts:
        calls.append(tuple(refs))
        return WarehouseFacts(
            drivers={("team", "2026-11"): {
                "model": [{"name": "gpt-4o", "cost": "800.1", "events": 5}],
                "team": [{"name": "ml", "cost": "812.345678901", "events": 7}],
                "project": [{"name": "", "cost": "812.345678901", "events": 7}]}},
            curves={("team", "2026-11"): [{"t": "2026-11-15T11:00:00+00:00", "spent": "812.3"}]},
        )  # fmt: skip

    dashboard = Dashboard(feed, reader, ttl_s=5, clock=lambda: clock[0])
    data = dashboard.data(NOW)
    assert calls == [(("quiet", "2026-11"), ("team", "2026-11"))]  # current periods only
    assert data["warehouse"] == {"available": True, "message": None}
    team = by_id(data)["team"]
    assert team["periods"][0]["drivers"]["model"][0] == {"name": "gpt-4o", "cost": "800.1",
                                                         "events": 5}  # fmt: skip
    assert team["periods"][0]["curve"][0]["spent"] == "812.3"
    assert team["periods"][1]["drivers"] is None  # past periods: no drivers
    quiet = by_id(data)["quiet"]["periods"][0]
    assert quiet["drivers"] == {"model": [], "team": [], "project": []} and quiet["curve"] == []
    dashboard.data(NOW)
    assert len(calls) == 1  # within the TTL: reused
    clock[0] = 6
    dashboard.data(NOW)
    assert len(calls) == 2


def test_spend_curve_is_cumulative_exact_and_never_after_now():
    hours = [(datetime(2026, 11, 15, h, tzinfo=UTC), Decimal("0.100000001")) for h in range(12)]
    curve = spend_curve(hours, datetime(2026, 11, 15, 11, 30, tzinfo=UTC))
    assert curve[0] == {"t": "2026-11-15T00:00:00+00:00", "spent": "0"}  # nothing before
    assert curve[1] == {"t": "2026-11-15T01:00:00+00:00", "spent": "0.100000001"}
    assert curve[-1] == {"t": "2026-11-15T11:30:00+00:00", "spent": "1.200000012"}
    many = [(datetime(2026, 1, 1, tzinfo=UTC).replace(day=1 + i // 24, hour=i % 24),
             Decimal("0.001")) for i in range(24 * 31)]  # fmt: skip
    merged = spend_curve(many, datetime(2027, 1, 1, tzinfo=UTC))
    assert len(merged) <= 401 and merged[-1]["spent"] == "0.744"
    assert spend_curve([], NOW) == []


def test_drivers_and_curve_queries_pass_the_read_guard_on_the_real_schema(chdb_dir):
    """The ClickHouse part as the sink's query port runs it (read-only session, SQL guard)."""
    database = f"dash_{uuid.uuid4().hex[:6]}"
    settings = load_settings(data_dir=chdb_dir.parent, clickhouse_dsn=f"chdb://{chdb_dir}",
                             clickhouse_database=database)  # fmt: skip
    client = connect(settings)
    migrate(client)
    client.command(
        "INSERT INTO cost_allocations (allocation_id, event_id, budget_id, period_key, "
        "occurred_at, amount, currency, source, model, team, project) VALUES "
        "('a1', 'e1', 'team', '2026-11', '2026-11-15 09:10:00', 1.123456789, 'USD', 'llm', "
        "'gpt-4o', 'ml', 'p1'), "
        "('a2', 'e2', 'team', '2026-11', '2026-11-15 10:20:00', 2.5, 'USD', 'apify', '', 'web', ''), "
        "('a3', 'e3', 'team', '2026-10', '2026-10-15 10:20:00', 7, 'USD', 'llm', 'gpt-4o', 'ml', ''), "
        "('a4', 'e4', 'other', '2026-11', '2026-11-15 10:20:00', 9, 'USD', 'llm', 'x', 'ml', '')"
    )  # fmt: skip
    facts = warehouse_facts(lambda: ReaderWarehouse(connect(settings), database),
                            [("team", "2026-11")], NOW)  # fmt: skip
    assert facts is not None
    assert facts.drivers == {("team", "2026-11"): {
        "model": [{"name": "(apify)", "cost": "2.5", "events": 1},
                  {"name": "gpt-4o", "cost": "1.123456789", "events": 1}],
        "team": [{"name": "web", "cost": "2.5", "events": 1},
                 {"name": "ml", "cost": "1.123456789", "events": 1}],
        "project": [{"name": "", "cost": "2.5", "events": 1},
                    {"name": "p1", "cost": "1.123456789", "events": 1}]}}  # fmt: skip
    assert facts.curves == {("team", "2026-11"): [
        {"t": "2026-11-15T09:00:00+00:00", "spent": "0"},
        {"t": "2026-11-15T10:00:00+00:00", "spent": "1.123456789"},
        {"t": "2026-11-15T11:00:00+00:00", "spent": "3.623456789"}]}  # fmt: skip
    assert warehouse_facts(lambda: None, [("team", "2026-11")], NOW) is None  # no sink


def test_the_data_endpoint_refuses_other_sites_and_foreign_hosts():
    local = {"Host": "127.0.0.1:6066"}
    assert data_refusal(local, "127.0.0.1") is None
    assert data_refusal({**local, "Sec-Fetch-Site": "same-origin"}, "127.0.0.1") is None
    assert data_refusal({**local, "Origin": "http://127.0.0.1:6066"}, "127.0.0.1") is None
    assert data_refusal({**local, "Sec-Fetch-Site": "cross-site"}, "127.0.0.1")[0] == 403
    assert data_refusal({**local, "Origin": "https://evil.example"}, "127.0.0.1")[0] == 403
    assert data_refusal({"Host": "evil.example:6066"}, "127.0.0.1")[0] == 403  # DNS rebinding
    assert data_refusal({"Host": "spend.internal:6066"}, "0.0.0.0") is None
    # the page itself carries no data: a link from elsewhere may open it
    assert host_refusal({**local, "Sec-Fetch-Site": "cross-site"}, "127.0.0.1") is None
    assert host_refusal({"Host": "evil.example"}, "127.0.0.1")[0] == 403


def test_the_page_and_chart_js_ship_in_the_package_with_the_licence():
    files = static_files()
    for name, kind in [("dashboard.html", "text/html"), ("dashboard.js", "text/javascript"),
                       ("dashboard.css", "text/css"), ("vendor/chart.min.js", "text/javascript"),
                       ("vendor/chart.js.LICENSE.txt", "text/plain"),
                       ("vendor/README", "text/plain")]:  # fmt: skip
        assert name in files, name
        assert files[name][1].startswith(kind), (name, files[name][1])
    chart = files["vendor/chart.min.js"][0][:200].decode()
    assert "Chart.js v3.9.1" in chart and "MIT" in chart
    licence = files["vendor/chart.js.LICENSE.txt"][0].decode()
    assert "Permission is hereby granted, free of charge" in licence
    assert "Chart.js Contributors" in licence
    assert "3.9.1" in files["vendor/README"][0].decode()
    # no CDN: the page loads only its own files
    html = files["dashboard.html"][0].decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/dashboard/static/") for s in sources), sources
    # and the package declares them (a wheel, as Docker installs, carries them)
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"spendstream.streams" = ["static/*", "static/vendor/*"]' in pyproject


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_the_page_rounds_money_to_cents_on_the_string_like_decimal():
    """dashboard.js's toCents against Decimal's ROUND_HALF_UP (run under node)."""
    values = ["0", "0.005", "0.004999999", "-0.005", "9.995", "99.999999999", "1E+3",
              "0.000000001", "123456789012345678901.125", "812.345678901", "25.5", "-1.235"]  # fmt: skip
    script = Path(static_files.__code__.co_filename).parent / "static" / "dashboard.js"
    out = subprocess.run(
        ["node", "-e", f"const {{toCents}} = require({json.dumps(str(script))});"
         "const v = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
         "process.stdout.write(JSON.stringify(v.map(toCents)));"],
        input=json.dumps(values), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    want = [str(Decimal(v).quantize(Decimal("0.01"), ROUND_HALF_UP)).replace("-0.00", "0.00")
            for v in values]  # fmt: skip
    assert json.loads(out.stdout) == want
