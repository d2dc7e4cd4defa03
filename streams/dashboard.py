"""The live spend dashboard: ``GET /dashboard`` on the worker's web server.

A page (``static/dashboard.html``, ``.js``, ``.css``; Chart.js vendored in
``static/vendor``: no build step, no CDN) that polls ``GET /dashboard/data`` every 2 s.
The data come from the worker's local state, as the API's reads do: every budget (the
budget feed) and its latest status per period (spent, limit, tier lines, state, burn
rate, projected total with its 95 % band, days left), and the alerts of each period with
their state from the alert actions (open, acknowledged, resolved). The top cost drivers
(model, team, project) and the spend curve of the current period come from ClickHouse
along the path of ``GET /budgets/ID/usage`` (the sink's query port in embedded mode), at
most every ``FACTS_TTL_S``; without a reachable warehouse the page says "no ClickHouse"
and shows the rest.

Read-only, like the API's reads, so no token. The data endpoint shows spend, so it
refuses other sites' pages and, on a loopback bind, foreign ``Host`` names (DNS
rebinding). Money is an exact decimal string; the page rounds it to cents on the string.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import AlertAction, BudgetStatus
from spendstream.schemas.money import plain

from .api import LOOPBACK, Reply, error, guarded, jsonable
from .matching import BudgetRegistry
from .periods import Period, budget_period

if TYPE_CHECKING:
    from spendstream.sinks.warehouse import Warehouse

log = logging.getLogger("spendstream.dashboard")

NO_WAREHOUSE = (
    "no ClickHouse reachable: start the sink (`spendstream sink`) to see the top cost "
    "drivers and the spend curve"
)
DIMENSIONS = ("model", "team", "project")
TOP_DRIVERS = 5
#: points of a period's spend curve at most (hourly buckets are merged beyond that)
MAX_CURVE_POINTS = 400
ALERTS_PER_BUDGET = 20
#: how long ClickHouse's part of the data is reused (the page polls every 2 s)
FACTS_TTL_S = 5.0

ALERT_STATES = {"acknowledge": "acknowledged", "resolve": "resolved"}

#: (budget_id, period_key) of a budget's current period
PeriodRef = tuple[str, str]


class FeedView(Protocol):
    """What the dashboard reads of the budget feed (``BudgetFeed``; a fake in tests)."""

    @property
    def registry(self) -> BudgetRegistry: ...

    @property
    def statuses(self) -> Mapping[str, BudgetStatus]: ...

    @property
    def actions(self) -> Mapping[str, AlertAction]: ...


@dataclass
class WarehouseFacts:
    """What ClickHouse adds for the current periods, keyed by (budget_id, period_key):
    the top drivers per dimension (``{"name", "cost", "events"}``, cost a decimal string)
    and the cumulative spend curve (``{"t": ISO time, "spent": decimal string}``)."""

    drivers: dict[PeriodRef, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    curves: dict[PeriodRef, list[dict[str, Any]]] = field(default_factory=dict)


#: the facts of these current periods; None when no warehouse answers
FactsReader = Callable[[Sequence[PeriodRef], datetime], WarehouseFacts | None]


# --- the data ----------------------------------------------------------------------------
def current_periods(feed: FeedView, now: datetime) -> list[PeriodRef]:
    refs = []
    for budget in feed.registry.all():
        period = budget_period(budget, now)
        if period is not None:
            refs.append((budget.budget_id, period.key))
    return sorted(refs)


def dashboard_data(feed: FeedView, now: datetime, facts: WarehouseFacts | None) -> dict[str, Any]:
    """Everything the page shows, JSON-ready (money as exact decimal strings): every budget
    (also one deleted since, while its statuses remain) with its periods newest first."""
    by_budget: dict[str, list[BudgetStatus]] = {}
    for status in feed.statuses.values():
        by_budget.setdefault(status.budget_id, []).append(status)
    definitions = {b.budget_id: b for b in feed.registry.all()}
    actions = dict(feed.actions)
    budgets = [
        budget_view(bid, definitions.get(bid), by_budget.get(bid, []), actions, now, facts)
        for bid in sorted(set(definitions) | set(by_budget))
    ]
    return {
        "generated_at": now.isoformat(),
        "warehouse": {
            "available": facts is not None,
            "message": None if facts is not None else NO_WAREHOUSE,
        },
        "budgets": budgets,
    }


def budget_view(
    budget_id: str,
    budget: BudgetDefinition | None,
    statuses: list[BudgetStatus],
    actions: Mapping[str, AlertAction],
    now: datetime,
    facts: WarehouseFacts | None,
) -> dict[str, Any]:
    current = budget_period(budget, now) if budget is not None else None
    current_key = current.key if current is not None else None
    entries = [
        (s.period_start, period_view(s, budget, s.period_key == current_key)) for s in statuses
    ]
    if current is not None and all(s.period_key != current.key for s in statuses):
        assert budget is not None
        entries.append((current.start, empty_period(budget, current, now)))
    entries.sort(key=lambda e: e[0], reverse=True)
    periods = [entry for _, entry in entries]
    if current is not None and facts is not None:
        ref = (budget_id, current.key)
        for entry in periods:
            if entry["current"]:
                entry["drivers"] = facts.drivers.get(ref, {d: [] for d in DIMENSIONS})
                entry["curve"] = facts.curves.get(ref, [])
    alerts = budget_alerts(budget_id, statuses, actions)
    newest = max(statuses, key=lambda s: s.period_start, default=None)
    return {
        "budget_id": budget_id,
        "name": budget.name if budget else (newest.budget_name if newest else budget_id),
        "parent_id": budget.parent_id if budget else None,
        "owner": budget.owner if budget else None,
        "period": budget.period if budget else None,
        "timezone": budget.timezone if budget else None,
        "limit": plain(budget.limit) if budget else None,
        "currency": budget.currency if budget else (newest.currency if newest else None),
        "deleted": budget is None,
        "current_period": current.key if current else None,
        "periods": periods,
        "open_alerts": sum(1 for a in alerts if a["state"] == "open"),
        "alerts": alerts[:ALERTS_PER_BUDGET],
    }


def tier_lines(
    budget: BudgetDefinition | None, limit: Decimal, alerted: Sequence[str]
) -> list[dict[str, Any]]:
    """The budget's thresholds as amounts of this period's limit (the chart's tier lines)."""
    if budget is None:
        return []
    return [
        {
            "percent": plain(t.percent),
            "amount": plain(limit * t.percent / 100),
            "action": t.action,
            "downgrade_to": t.downgrade_to,
            "reached": f"threshold:{plain(t.percent)}" in alerted,
        }
        for t in budget.thresholds
    ]


def period_view(
    status: BudgetStatus, budget: BudgetDefinition | None, current: bool
) -> dict[str, Any]:
    view = jsonable({
        "period_key": status.period_key,
        "period_start": status.period_start,
        "period_end": status.period_end,
        "current": current,
        "has_status": True,
        "spent": status.spent,
        "limit": status.limit,
        "remaining": status.remaining,
        "percent": status.percent,
        "currency": status.currency,
        "state": status.state,
        "event_count": status.event_count,
        "burn_rate_per_day": status.burn_rate_per_day,
        "projected_total": status.projected_total,
        "projected_low": status.projected_low,
        "projected_high": status.projected_high,
        "days_left": status.days_left,
        "days_to_limit": status.days_to_limit,
        "updated_at": status.updated_at,
        "tiers": tier_lines(budget, status.limit, status.alerted_tiers),
    })  # fmt: skip
    view.update(drivers=None, curve=None)
    return dict(view)


def empty_period(budget: BudgetDefinition, period: Period, now: datetime) -> dict[str, Any]:
    """The current period of a budget nothing was counted toward yet."""
    left = Decimal(max(int((period.end - now).total_seconds()), 0)) / 86400
    view = jsonable({
        "period_key": period.key,
        "period_start": period.start,
        "period_end": period.end,
        "current": True,
        "has_status": False,
        "spent": Decimal(0),
        "limit": budget.limit,
        "remaining": budget.limit,
        "percent": Decimal(0),
        "currency": budget.currency,
        "state": "normal",
        "event_count": 0,
        "burn_rate_per_day": None,
        "projected_total": None,
        "projected_low": None,
        "projected_high": None,
        "days_left": left.quantize(Decimal("0.01")),
        "days_to_limit": None,
        "updated_at": None,
        "tiers": tier_lines(budget, budget.limit, ()),
    })  # fmt: skip
    view.update(drivers=None, curve=None)
    return dict(view)


def alert_view(
    alert_id: str, period_key: str, tag: str, action: AlertAction | None
) -> dict[str, Any]:
    """An alert by its id ``budget:period:kind[:detail]`` and its latest action."""
    kind, _, detail = tag.partition(":")
    hour = None
    if kind == "anomaly" and detail.isdigit():
        hour = datetime.fromtimestamp(int(detail) * 3600, UTC).isoformat()
    return {
        "alert_id": alert_id,
        "period_key": period_key,
        "kind": kind,
        "tier": detail if kind == "threshold" and detail else None,
        "hour": hour,
        "state": ALERT_STATES.get(action.action, "open") if action else "open",
        "by": action.actor if action else None,
        "at": action.at.isoformat() if action else None,
        "note": action.note if action else None,
    }


def budget_alerts(
    budget_id: str, statuses: list[BudgetStatus], actions: Mapping[str, AlertAction]
) -> list[dict[str, Any]]:
    """Every alert that fired (a status's ``alerted_tiers``: resolved ones too) and every
    alert acted on, newest period first and, within a period, the last to fire first."""
    seen: set[str] = set()
    alerts = []
    for status in sorted(statuses, key=lambda s: s.period_start, reverse=True):
        for tag in reversed(status.alerted_tiers):
            alert_id = f"{budget_id}:{status.period_key}:{tag}"
            if alert_id not in seen:
                seen.add(alert_id)
                alerts.append(alert_view(alert_id, status.period_key, tag, actions.get(alert_id)))
    for alert_id, action in sorted(actions.items(), reverse=True):
        parts = alert_id.split(":", 2)
        if action.budget_id == budget_id and alert_id not in seen and len(parts) == 3:
            seen.add(alert_id)
            alerts.append(alert_view(alert_id, parts[1], parts[2], action))
    return alerts


# --- ClickHouse --------------------------------------------------------------------------
DRIVERS_SQL = """
SELECT budget_id, period_key, d.1 AS dimension, d.2 AS name,
       sum(amount) AS cost, count() AS events
FROM cost_allocations FINAL
ARRAY JOIN [('model', if(model = '', concat('(', toString(source), ')'), toString(model))),
            ('team', team), ('project', project)] AS d
WHERE budget_id IN {b:Array(String)} AND period_key IN {p:Array(String)}
GROUP BY budget_id, period_key, dimension, name
ORDER BY budget_id, period_key, dimension, cost DESC, name
LIMIT {n:UInt32} BY budget_id, period_key, dimension
"""

CURVE_SQL = """
SELECT budget_id, period_key, toStartOfHour(occurred_at) AS hour, sum(amount) AS cost
FROM cost_allocations FINAL
WHERE budget_id IN {b:Array(String)} AND period_key IN {p:Array(String)}
GROUP BY budget_id, period_key, hour
ORDER BY budget_id, period_key, hour
"""


def warehouse_facts(
    open_warehouse: Callable[[], Warehouse | None], refs: Sequence[PeriodRef], now: datetime
) -> WarehouseFacts | None:
    """Top drivers and spend curves of these periods; None when no warehouse is reachable
    (``open_warehouse`` answers None). Query errors propagate."""
    warehouse = open_warehouse()
    if warehouse is None:
        return None
    facts = WarehouseFacts()
    if not refs:
        warehouse.close()
        return facts
    wanted = set(refs)
    params = {"b": sorted({b for b, _ in refs}), "p": sorted({p for _, p in refs})}
    try:
        drivers = warehouse.query(DRIVERS_SQL, {**params, "n": TOP_DRIVERS}).rows
        buckets = warehouse.query(CURVE_SQL, params).rows
    finally:
        warehouse.close()
    for budget_id, period_key, dimension, name, cost, events in drivers:
        ref = (budget_id, period_key)
        if ref in wanted:
            per = facts.drivers.setdefault(ref, {d: [] for d in DIMENSIONS})
            per.setdefault(dimension, []).append(
                {"name": name, "cost": plain(Decimal(cost)), "events": int(events)}
            )
    hourly: dict[PeriodRef, list[tuple[datetime, Decimal]]] = {}
    for budget_id, period_key, hour, cost in buckets:
        ref = (budget_id, period_key)
        if ref in wanted:
            start = hour if hour.tzinfo else hour.replace(tzinfo=UTC)
            hourly.setdefault(ref, []).append((start, Decimal(cost)))
    for ref, points in hourly.items():
        facts.curves[ref] = spend_curve(points, now)
    return facts


def spend_curve(hourly: list[tuple[datetime, Decimal]], now: datetime) -> list[dict[str, Any]]:
    """Cumulative spend at the end of each bucket (never after ``now``), exact, from zero
    at the start of the first; hourly buckets are merged so a period has at most
    ``MAX_CURVE_POINTS`` points."""
    if not hourly:
        return []
    step = max(1, math.ceil(len(hourly) / MAX_CURVE_POINTS))
    curve, total = [{"t": hourly[0][0].isoformat(), "spent": "0"}], Decimal(0)
    for i in range(0, len(hourly), step):
        group = hourly[i : i + step]
        total += sum((cost for _, cost in group), Decimal(0))
        end = min(group[-1][0] + timedelta(hours=1), now)
        curve.append({"t": end.isoformat(), "spent": plain(total)})
    return curve


class Dashboard:
    """The data builder with ClickHouse's part cached for ``ttl_s`` (and per set of
    current periods). ``data`` blocks on ClickHouse: call it off the event loop."""

    def __init__(
        self,
        feed: FeedView,
        read_facts: FactsReader | None,
        *,
        ttl_s: float = FACTS_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.feed = feed
        self.read_facts = read_facts
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, tuple[PeriodRef, ...], WarehouseFacts | None] | None = None
        self._available: bool | None = None

    def facts(self, refs: Sequence[PeriodRef], now: datetime) -> WarehouseFacts | None:
        key = tuple(sorted(refs))
        with self._lock:
            cached = self._cached
            if cached and cached[1] == key and self.clock() - cached[0] < self.ttl_s:
                return cached[2]
            facts, why = None, "no warehouse configured"
            if self.read_facts is not None:
                try:
                    facts = self.read_facts(key, now)
                    why = "no sink running" if facts is None else ""
                except Exception as exc:  # an outage: the page shows "no ClickHouse"
                    why = f"{type(exc).__name__}: {exc}"
            if self.read_facts is not None and self._available is not (facts is not None):
                if facts is None:
                    log.warning("dashboard: ClickHouse unavailable (%s)", why)
                elif self._available is not None:
                    log.info("dashboard: ClickHouse reachable again")
                self._available = facts is not None
            self._cached = (self.clock(), key, facts)
            return facts

    def data(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or datetime.now(UTC)
        return dashboard_data(self.feed, now, self.facts(current_periods(self.feed, now), now))


# --- static files and the web server -----------------------------------------------------
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
}
#: files without a suffix (vendor/README) are text
DEFAULT_TYPE = "text/plain; charset=utf-8"

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
#: the page runs only its own files: no inline script, nothing from elsewhere
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def content_type(name: str) -> str:
    dot = name.rfind(".")
    return CONTENT_TYPES.get(name[dot:].lower(), DEFAULT_TYPE) if dot > 0 else DEFAULT_TYPE


def static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files shipped in the package (``streams/static``), by path relative to
    it (``dashboard.js``, ``vendor/chart.min.js``), with their content types."""
    root = resources.files("spendstream.streams") / "static"
    found: dict[str, tuple[bytes, str]] = {}
    folders = [("", root)]
    while folders:
        prefix, folder = folders.pop()
        for item in folder.iterdir():
            if item.is_dir():
                folders.append((f"{prefix}{item.name}/", item))
            elif not item.name.startswith("."):
                found[prefix + item.name] = (item.read_bytes(), content_type(item.name))
    return found


def host_refusal(headers: Any, bind: str) -> Reply | None:
    """On a loopback bind, a page reached under a foreign host name is a DNS-rebinding
    page (as in ``api.browser_refusal``)."""
    if bind in LOOPBACK:
        host = (headers.get("Host") or "").rsplit(":", 1)[0]
        if host not in LOOPBACK:
            return error(403, f"Host must be a loopback name on a loopback bind, not '{host}'")
    return None


def data_refusal(headers: Any, bind: str) -> Reply | None:
    """The data endpoint answers the dashboard's own page (same origin), a terminal or a
    program; never another site's page."""
    if headers.get("Sec-Fetch-Site", "none") not in ("none", "same-origin"):
        return error(403, "cross-site requests are refused")
    origin = headers.get("Origin")
    host = headers.get("Host") or ""
    if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
        return error(403, "cross-origin requests are refused")
    return host_refusal(headers, bind)


def mount_dashboard(
    app: Any,
    feed: FeedView,
    open_warehouse: Callable[[], Warehouse | None] | None,
    bind: str = "127.0.0.1",
) -> Dashboard:
    """Register ``/dashboard``, ``/dashboard/data`` and ``/dashboard/static/...`` on a faust
    app's web server; ``open_warehouse``: the worker's way to ClickHouse (None: none)."""
    from faust.web import View

    reader: FactsReader | None = None
    if open_warehouse is not None:
        opener = open_warehouse

        def reader(refs: Sequence[PeriodRef], now: datetime) -> WarehouseFacts | None:
            return warehouse_facts(opener, refs, now)

    dashboard = Dashboard(feed, reader)
    files = static_files()
    if "dashboard.html" not in files:
        log.error("dashboard files missing from the package (streams/static): /dashboard is 404")

    def send(view: Any, name: str, headers: Any) -> Any:
        refused = host_refusal(headers, bind)
        if refused:
            return view.json(refused[1], status=refused[0], headers=SECURITY_HEADERS)
        if name not in files:
            return view.json({"error": f"no file '{name}'"}, status=404, headers=SECURITY_HEADERS)
        body, ctype = files[name]
        extra = {"Content-Security-Policy": PAGE_POLICY} if ctype.startswith("text/html") else {}
        return view.bytes(body, headers={"Content-Type": ctype, **SECURITY_HEADERS, **extra})

    @app.page("/dashboard")
    class Page(View):
        async def get(self, request: Any) -> Any:
            return send(self, "dashboard.html", request.headers)

    @app.page("/dashboard/data")
    class Data(View):
        async def get(self, request: Any) -> Any:
            async def run() -> Reply:
                return 200, await asyncio.to_thread(dashboard.data)

            status, body = data_refusal(request.headers, bind) or await guarded(run)
            headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
            return self.json(body, status=status, headers=headers)

    @app.page("/dashboard/static/{name}")
    class Static(View):
        async def get(self, request: Any, name: str) -> Any:
            return send(self, name, request.headers)

    @app.page("/dashboard/static/vendor/{name}")
    class Vendor(View):
        async def get(self, request: Any, name: str) -> Any:
            return send(self, f"vendor/{name}", request.headers)

    return dashboard
