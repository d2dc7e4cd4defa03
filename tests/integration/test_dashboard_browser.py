"""The worker's live dashboard in a real headless Chromium: a real worker, sink, broker and
chDB; budgets and usage published; the page rendered and its DOM checked against the
budget-status topic to the cent; a screenshot saved as a CI artifact.

Skips only when no Chromium binary is found (`apt-get install chromium`;
SPENDSTREAM_CHROMIUM names another binary)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from spendstream.config import Settings
from spendstream.processes import wait_for
from spendstream.producer import UsagePublisher, publish_alert_action, publish_budgets
from spendstream.readback import read_statuses
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import AlertAction, Attributes, LlmUsage, UsageEvent
from spendstream.sinks.warehouse import sink_warehouse
from spendstream.topics import ensure_topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ORG = "dash-org"
CENT = Decimal("0.01")


def find_chromium() -> str | None:
    named = os.environ.get("SPENDSTREAM_CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def artifacts_dir() -> Path:
    path = Path(os.environ.get("SPENDSTREAM_ARTIFACTS_DIR") or ROOT / ".ci" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cents(value: Decimal) -> str:
    return str(value.quantize(CENT, ROUND_HALF_UP))


def usage_events(n: int) -> list[UsageEvent]:
    """gpt-4o and gpt-4o-mini calls with token counts that leave sub-cent digits."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    if base.day == 1 and base.hour == 0 and base.minute < 25:  # keep one monthly period
        base = base.replace(minute=25)
    return [
        UsageEvent(
            event_id=f"{ORG}-{i}",
            occurred_at=base + timedelta(seconds=i),
            source="llm",
            attributes=Attributes(org=ORG, team="ml" if i % 3 else "web", project=f"p{i % 2}"),
            payload=LlmUsage(
                provider="openai",
                model="gpt-4o" if i % 2 else "gpt-4o-mini",
                input_tokens=12_345 + 77 * i,
                output_tokens=1_234 + 31 * i,
            ),
        )  # fmt: skip
        for i in range(n)
    ]


class DomReader(HTMLParser):
    """Per budget section (``data-budget-id``): its spent figure, state, alert states and
    top drivers; plus the page's own flags."""

    def __init__(self) -> None:
        super().__init__()
        self.budgets: dict[str, dict[str, Any]] = {}
        self.body: dict[str, str | None] = {}
        self.text: list[str] = []
        self._budget: dict[str, Any] | None = None
        self._capture: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if a.get("data-budget-id"):
            self._budget = self.budgets.setdefault(
                str(a["data-budget-id"]), {"alerts": {}, "drivers": set(), "attrs": a}
            )
        if self._budget is None:
            return
        if a.get("data-field") in ("spent", "state", "limit"):
            self._capture = str(a["data-field"])
            self._budget[self._capture] = ""
        if a.get("data-alert-id"):
            self._budget["alerts"][a["data-alert-id"]] = a.get("data-alert-state")
        if a.get("data-driver") is not None:
            self._budget["drivers"].add(a["data-driver"])

    def handle_endtag(self, tag: str) -> None:
        self._capture = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._capture and self._budget is not None:
            self._budget[self._capture] += data


def fetch(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except OSError:
        return 0, {}, b""


def dashboard_data(port: int) -> dict[str, Any] | None:
    status, _, body = fetch(port, "/dashboard/data")
    return json.loads(body) if status == 200 else None


def run_chromium(binary: str, tmp_path: Path, url: str, *args: str) -> str:
    command = [
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}",
        "--virtual-time-budget=8000", *args, url,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stderr[-3000:]}"
    return result.stdout


def test_dashboard_renders_every_budget_with_exact_figures_in_chromium(
    settings: Settings, services: Any, tmp_path: Path
) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip(f"no Chromium binary found (looked for {', '.join(BROWSERS)}; set "
                    "SPENDSTREAM_CHROMIUM or `apt-get install chromium`)")  # fmt: skip
    port = settings.worker_web_port
    events = usage_events(60)
    ml = [e for e in events if e.attributes.team == "ml"]
    budgets = [
        BudgetDefinition(budget_id="dash-org", name="All of dash-org", limit="25",
                         scope={"org": [ORG]}),
        BudgetDefinition(budget_id="dash-ml", name="Team ML", parent_id="dash-org", limit="1.5",
                         scope={"org": [ORG], "team": ["ml"]}),
        BudgetDefinition(budget_id="dash-idle", name="Nothing yet", limit="10.5",
                         scope={"org": ["someone-else"]}),
    ]  # fmt: skip
    ensure_topics(settings)
    publish_budgets(settings, budgets)
    services.start("worker", "worker")
    services.start("sink", "sink")
    with UsagePublisher(settings) as publisher:
        assert publisher.publish_many(events).failed == 0

    counts = {"dash-org": len(events), "dash-ml": len(ml)}

    def settled() -> dict[str, Any] | None:
        latest = {s.budget_id: s for s in read_statuses(settings)}
        done = all(b in latest and latest[b].event_count == n for b, n in counts.items())
        return latest if done else None

    statuses = wait_for("budget statuses", settled, 180, services)
    assert "dash-idle" not in statuses

    def stored() -> bool:
        warehouse = sink_warehouse(settings)
        if warehouse is None:
            return False
        n = warehouse.query("SELECT count() FROM cost_allocations FINAL").scalar()
        return int(n) == len(events) + len(ml)

    wait_for("allocations in ClickHouse", stored, 180, services)

    # acknowledge one alert of the ML budget: the page shows its state
    ml_status = statuses["dash-ml"]
    assert ml_status.alerted_tiers, ml_status  # 1.5 USD is crossed: tiers fired
    acked = f"dash-ml:{ml_status.period_key}:{ml_status.alerted_tiers[0]}"
    publish_alert_action(settings, AlertAction(alert_id=acked, budget_id="dash-ml",
                                               action="acknowledge", actor="test",
                                               at=datetime.now(UTC)))  # fmt: skip

    def served() -> dict[str, Any] | None:
        data = dashboard_data(port)
        if not data or not data["warehouse"]["available"]:
            return None
        by_id = {b["budget_id"]: b for b in data["budgets"]}
        current = {b: by_id[b]["periods"][0] for b in counts if b in by_id}
        ready = (
            all(b in current and Decimal(current[b]["spent"]) == statuses[b].spent for b in counts)
            and current["dash-org"]["drivers"] and current["dash-org"]["drivers"]["model"]
            and any(a["alert_id"] == acked and a["state"] == "acknowledged"
                    for a in by_id["dash-ml"]["alerts"])
        )  # fmt: skip
        return data if ready else None

    data = wait_for("the dashboard's data", served, 120, services)
    assert {b["budget_id"] for b in data["budgets"]} == {"dash-org", "dash-ml", "dash-idle"}

    # what the server sends: the page's files with their content types, data for its own page
    for path, kind in [("/dashboard", "text/html"), ("/dashboard/static/dashboard.js",
                       "text/javascript"), ("/dashboard/static/dashboard.css", "text/css"),
                       ("/dashboard/static/vendor/chart.min.js", "text/javascript")]:  # fmt: skip
        status, headers, body = fetch(port, path)
        assert status == 200 and headers["Content-Type"].startswith(kind), (path, headers)
        assert headers["X-Content-Type-Options"] == "nosniff" and body
    status, headers, _ = fetch(port, "/dashboard")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert fetch(port, "/dashboard/static/nope.js")[0] == 404
    assert fetch(port, "/dashboard/data", Origin="http://evil.example")[0] == 403
    assert fetch(port, "/dashboard/data", **{"Sec-Fetch-Site": "cross-site"})[0] == 403

    # the page, rendered by Chromium
    url = f"http://127.0.0.1:{port}/dashboard"
    dom = DomReader()
    dom.feed(run_chromium(binary, tmp_path, url, "--dump-dom"))
    assert dom.body.get("data-loaded") == "true", "the page never rendered the data"
    assert set(dom.budgets) == {"dash-org", "dash-ml", "dash-idle"}
    for budget_id in counts:
        shown = dom.budgets[budget_id]
        assert shown["spent"] == cents(statuses[budget_id].spent), (budget_id, shown)
        assert shown["state"] == statuses[budget_id].state
        assert shown["limit"] == cents(statuses[budget_id].limit)
    assert dom.budgets["dash-idle"]["spent"] == "0.00"
    assert dom.budgets["dash-ml"]["alerts"][acked] == "acknowledged"
    others = {a: s for a, s in dom.budgets["dash-ml"]["alerts"].items() if a != acked}
    assert others and set(others.values()) == {"open"}
    assert {"gpt-4o", "gpt-4o-mini"} <= dom.budgets["dash-org"]["drivers"]
    assert {"ml", "web"} <= dom.budgets["dash-org"]["drivers"]
    assert "no ClickHouse" not in "".join(dom.text)

    # ... and a screenshot for the CI artifacts
    shot = artifacts_dir() / "dashboard.png"
    shot.unlink(missing_ok=True)
    run_chromium(binary, tmp_path, url, f"--screenshot={shot}", "--window-size=1280,1600")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("SPENDSTREAM_UPDATE_README_SCREENSHOT"):  # the README's picture
        (ROOT / "docs" / "dashboard.png").write_bytes(shot.read_bytes())
