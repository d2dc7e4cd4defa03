"""The sink's query port in the default setup (embedded chDB, sink running), on the real
broker: it reads only the spendstream database, cannot stop ingestion, reach files or the
network, refuses web pages and callers without the token, and every README query and
every report runs through it with its values intact."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, date, datetime
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from uuid import UUID

import pytest

from spendstream.demo import make_plan
from spendstream.processes import wait_for
from spendstream.producer import UsagePublisher, publish_budgets
from spendstream.schemas.budget import BudgetDefinition
from spendstream.sinks.warehouse import (
    QueryRefused,
    SinkWarehouse,
    WarehouseError,
    running_sink,
    sink_warehouse,
)
from spendstream.streams.pricing import Pricer
from spendstream.topics import ensure_topics

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
REPORTS = ("summary", "trend", "compare", "projection", "top", "recommendations")
ATTACKS = [
    "SET max_threads = 1",
    "INSERT INTO FUNCTION file('{out}', 'CSV', 'x String') VALUES ('x')",
    "SELECT * FROM file('{secret}', 'LineAsString')",
    "SELECT file('{secret}')",
    "SELECT 1 INTO OUTFILE '{out}'",
    "SELECT * FROM url('http://127.0.0.1:9/x', 'LineAsString')",
    "INSERT INTO budgets (budget_id) VALUES ('x')",
    "DROP TABLE priced_usage",
    "SYSTEM STOP MERGES",
    "KILL QUERY WHERE 1",
    "SELECT 1; KILL QUERY WHERE 1",
    "SELECT name FROM system.tables",
    "SELECT * FROM merge('system', '^one$')",
    "SELECT count() SETTINGS max_threads = 1",
    "OPTIMIZE TABLE priced_usage FINAL",
]


def readme_queries() -> list[str]:
    blocks = [b.split("```", 1)[0] for b in README.read_text().split("```sql")[1:]]
    return [s.strip() for block in blocks for s in block.split(";") if s.strip()]


def cli(services, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spendstream.cli", *args], env=services.env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture
def loaded(settings, services):
    """Worker and sink running, a demo plan's budgets and usage stored."""
    ensure_topics(settings)
    plan = make_plan("qp", 120, datetime.now(UTC), Pricer())
    publish_budgets(settings, plan.budgets)
    services.start("worker", "worker")
    services.start("sink", "sink")
    warehouse = wait_for("sink query port", lambda: sink_warehouse(settings), 90, services)
    with UsagePublisher(settings) as publisher:
        publisher.publish_many(plan.events)
    wait_for("rows", lambda: warehouse.query(
        "SELECT (SELECT count() FROM priced_usage FINAL), (SELECT count() FROM "
        "cost_allocations FINAL)").rows[0] == (len(plan.events), plan.allocations),
        120, services)  # fmt: skip
    return warehouse


def test_every_readme_query_and_report_runs_through_the_port(loaded, services):
    for sql in readme_queries():
        result = cli(services, "sql", "--format", "json", "--", sql)
        assert result.returncode == 0, f"{sql}\n{result.stderr}"
        strict_json(result.stdout)
    assert any(loaded.query(sql).rows for sql in readme_queries())  # not all empty
    for kind in REPORTS:
        result = cli(services, "report", kind, "--format", "json")
        assert result.returncode == 0, f"report {kind}: {result.stderr}"
        assert strict_json(result.stdout)["rows"] is not None
    for fmt in ("table", "csv", "md"):
        result = cli(services, "report", "trend", "--format", fmt)
        assert result.returncode == 0, result.stderr
        assert date.today().isoformat()[:7] in result.stdout


def test_values_of_every_readme_type_round_trip_through_the_port(loaded):
    row = loaded.query(
        "SELECT toDate('2026-11-26') AS d, toDate32('1950-01-02') AS d32, "
        "toDateTime64('2026-11-26 10:00:00.123456', 6, 'UTC') AS ts, "
        "toUUID('6f1c2b9e-5a4d-4c3b-9a1e-0d2f3c4b5a69') AS u, toIPv4('10.1.2.3') AS ip4, "
        "toIPv6('2001:db8::1') AS ip6, toDecimal128('12345678901.123456789', 9) AS m, "
        "[toDecimal128('0.000000001', 9), toDecimal128('-2.5', 9)] AS ms, "
        "map('a', toDecimal128('1.1', 9)) AS mm, tuple(1, 'x') AS t, nan AS f1, inf AS f2, "
        "-inf AS f3, toInt128('-170141183460469231731687303715884105728') AS big, "
        "CAST(NULL AS Nullable(String)) AS n, true AS b, toFixedString('ab', 2) AS fs"
    ).rows[0]
    d, d32, ts, u, ip4, ip6, m, ms, mm, t, f1, f2, f3, big, n, b, fs = row
    assert (d, d32) == (date(2026, 11, 26), date(1950, 1, 2))
    # clickhouse-connect gives naive UTC for DateTime64(6, 'UTC'): the port keeps that
    assert ts == datetime(2026, 11, 26, 10, 0, 0, 123456)
    assert u == UUID("6f1c2b9e-5a4d-4c3b-9a1e-0d2f3c4b5a69")
    assert (ip4, ip6) == (IPv4Address("10.1.2.3"), IPv6Address("2001:db8::1"))
    assert m == Decimal("12345678901.123456789")
    assert ms == [Decimal("0.000000001"), Decimal("-2.5")]
    assert mm == {"a": Decimal("1.1")} and t == (1, "x")
    assert f1 != f1 and f2 == float("inf") and f3 == float("-inf")
    assert big == -(2**127) and n is None and b is True and fs in ("ab", b"ab")
    # the README tables' own types: Date (daily_spend), Decimal, DateTime64, arrays
    day, usd = loaded.query("SELECT day, sum(cost) FROM daily_spend GROUP BY day LIMIT 1").rows[0]
    assert isinstance(day, date) and isinstance(usd, Decimal)


def test_queries_cannot_stop_ingestion_or_reach_files_or_the_network(
    loaded, settings, services, tmp_path
):
    secret = tmp_path / "secret.txt"
    secret.write_text("top-secret-line\n")
    out = tmp_path / "written-by-query.txt"
    for template in ATTACKS:
        sql = template.format(out=out, secret=secret)
        with pytest.raises(WarehouseError) as refused:
            loaded.query(sql)
        assert "top-secret-line" not in str(refused.value), sql
    assert not out.exists()
    # the CLI says so plainly, once, with exit code 1
    result = cli(services, "sql", f"SELECT * FROM file('{secret}', 'LineAsString')")
    assert result.returncode == 1 and "not allowed" in result.stderr
    assert "top-secret-line" not in result.stdout + result.stderr
    # ... and the writer is untouched: a budget published now still lands, health says ok
    publish_budgets(settings, [BudgetDefinition(budget_id="after-attacks", name="a", limit="5")])
    wait_for("budget row", lambda: loaded.query(
        "SELECT count() FROM budgets WHERE budget_id = 'after-attacks'").scalar() == 1,
        60, services)  # fmt: skip
    assert loaded.health()["ok"] is True


def test_port_requires_the_token_and_refuses_web_pages(loaded, settings):
    endpoint = running_sink(settings)
    assert endpoint is not None
    info = Path(settings.chdb_path.parent / "sink.json")
    assert info.stat().st_mode & 0o077 == 0  # the token is readable by this user only
    url = f"{endpoint.url}/query"
    body = json.dumps({"sql": "SELECT count() FROM priced_usage"}).encode()
    auth = {"Authorization": f"Bearer {endpoint.token}"}
    json_type = {"Content-Type": "application/json"}
    assert post(url, body, {**json_type, **auth})[0] == 200
    assert post(url, body, json_type)[0] == 401
    assert post(url, body, {**json_type, "Authorization": "Bearer wrong"})[0] == 401
    # what a web page can send: a text/plain "simple" request, with its Origin
    page = {"Content-Type": "text/plain", "Origin": "http://evil.example"}
    assert post(url, body, page)[0] == 403
    assert post(url, body, {**page, **auth})[0] == 403
    assert post(url, body, {**auth, "Content-Type": "text/plain"})[0] == 415
    assert post(url, body, {**json_type, **auth, "Sec-Fetch-Site": "cross-site"})[0] == 403
    assert post(url, body, {**json_type, **auth, "Host": "evil.example:80"})[0] == 403
    assert post(url, b"x" * (2 << 20), {**json_type, **auth})[0] == 413
    assert post(url, b"[" * 100_000, {**json_type, **auth})[0] == 400
    assert SinkWarehouse(endpoint.url, "wrong").health()["ok"] is True  # health: no token
    with pytest.raises(WarehouseError, match="invalid token"):
        SinkWarehouse(endpoint.url, "wrong").query("SELECT 1")
    with pytest.raises(QueryRefused):
        loaded.query("SELECT * FROM system.one")
    assert re.search(r"[A-Za-z0-9_-]{40,}", endpoint.token)
