"""docker-compose.yml cannot run here (no Docker engine), so check its structure and wiring."""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from spendstream.config import Settings, settings_env_names

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_services_exist(compose):
    assert {"kafka", "clickhouse", "topics", "worker", "sink"} <= set(compose["services"])


def test_kafka_is_single_node_kraft_with_transactions(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = env_of(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert "healthcheck" in kafka


def test_services_wait_for_their_dependencies(compose):
    services = compose["services"]
    assert "healthcheck" in services["clickhouse"]
    for name in ("worker", "sink"):
        deps = services[name]["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy"
        assert deps["topics"]["condition"] == "service_completed_successfully"
    assert services["sink"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"


def test_commands_run_the_cli(compose):
    services = compose["services"]
    assert services["worker"]["command"] == ["worker"]
    assert services["sink"]["command"] == ["sink"]
    assert services["topics"]["command"] == ["topics", "create"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["spendstream"]' in dockerfile


def test_every_spendstream_variable_is_a_known_setting(compose):
    known = settings_env_names()
    seen = set()
    for name, service in compose["services"].items():
        for var in env_of(service):
            if var.startswith("SPENDSTREAM_"):
                seen.add(var)
                assert var in known, f"{name} sets {var}, which no setting reads"
    assert {"SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS", "SPENDSTREAM_CLICKHOUSE_DSN"} <= seen


def test_shared_environment_builds_valid_settings(compose, monkeypatch):
    for var in list(__import__("os").environ):
        if var.startswith("SPENDSTREAM_"):
            monkeypatch.delenv(var)
    for var, value in env_of(compose["services"]["worker"]).items():
        monkeypatch.setenv(var, value)
    settings = Settings()
    assert settings.bootstrap_servers == "kafka:9092"
    assert not settings.uses_local_kafka
    assert settings.effective_clickhouse_dsn.startswith("http://")
    assert not settings.is_embedded_clickhouse
    assert settings.worker_web_bind == "0.0.0.0"


def test_notify_service_runs_the_example_rules(compose):
    from spendstream.sinks.notify.config import parse_config

    notify = compose["services"]["notify"]
    assert notify["command"] == ["notify"] and notify["profiles"] == ["notify"]
    env = env_of(notify)
    rules = env["SPENDSTREAM_NOTIFY_RULES"]
    assert rules.startswith("/app/")
    text = (ROOT / rules.removeprefix("/app/")).read_text()
    # every variable the rules read is passed through from the host
    needed = set(re.findall(r"\$\{([A-Z_]+)\}", re.sub(r"#.*", "", text)))
    assert needed and needed <= set(env)
    fake = {"ALERTS_WEBHOOK_URL": "https://hooks.example/spend", "SLACK_WEBHOOK_URL":
            "https://hooks.slack.example/T/B/x", "ALERTS_WEBHOOK_SECRET": "x" * 32,
            "SMTP_HOST": "smtp.example", "SMTP_USER": "u", "SMTP_PASSWORD": "p"}  # fmt: skip
    config = parse_config(text, rules, env=fake)
    assert set(config.channels) == {"ops-webhook", "finance-slack", "oncall-email"}
    assert notify["depends_on"]["topics"]["condition"] == "service_completed_successfully"


# --- Prometheus and Grafana ----------------------------------------------------------------
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "spendstream.json"

#: The contract with the metrics the processes expose: every name a dashboard may query.
#: Histograms also appear as <name>_bucket, <name>_sum and <name>_count.
METRIC_CONTRACT = {
    "spendstream_events_consumed_total", "spendstream_events_priced_total",
    "spendstream_events_dead_lettered_total", "spendstream_events_duplicate_total",
    "spendstream_allocations_total", "spendstream_alerts_total",
    "spendstream_price_fallbacks_total", "spendstream_budgets", "spendstream_batch_size",
    "spendstream_batch_seconds", "spendstream_record_age_seconds", "spendstream_consumer_lag", "spendstream_sink_rows_total",
    "spendstream_sink_insert_seconds", "spendstream_sink_errors_total",
    "spendstream_sink_retries_total", "spendstream_notify_alerts_total",
    "spendstream_notify_deliveries_total", "spendstream_notify_digests_total",
}  # fmt: skip
HISTOGRAMS = {"spendstream_batch_size", "spendstream_batch_seconds", "spendstream_record_age_seconds",
              "spendstream_sink_insert_seconds"}  # fmt: skip
#: which setting holds the port each scraped service serves /metrics on
METRICS_PORT_SETTING = {"worker": "worker_web_port", "sink": "sink_metrics_port",
                        "notify": "notify_metrics_port"}  # fmt: skip
METRICS_BIND_SETTING = {"worker": "worker_web_bind", "sink": "sink_metrics_bind",
                        "notify": "notify_metrics_bind"}  # fmt: skip


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def provisioning(kind: str) -> list[dict[str, Any]]:
    folder = DEPLOY / "grafana" / "provisioning" / kind
    files = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    assert files, f"no {kind} provisioning in {folder}"
    return [yaml.safe_load(f.read_text()) for f in files]


def dashboard_targets(dashboard: dict[str, Any], ds_type: str) -> list[dict[str, Any]]:
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    panels += [c for p in dashboard["panels"] for c in p.get("panels", [])]
    return [
        t for p in panels for t in p.get("targets", [])
        if (t.get("datasource") or p.get("datasource") or {}).get("type") == ds_type
    ]  # fmt: skip


def service_settings(compose: dict[str, Any], name: str, monkeypatch) -> Settings:
    """The settings the service's container runs with (its environment, nothing else)."""
    for var in list(os.environ):
        if var.startswith("SPENDSTREAM_"):
            monkeypatch.delenv(var)
    for var, value in env_of(compose["services"][name]).items():
        if var.startswith("SPENDSTREAM_"):
            monkeypatch.setenv(var, value)
    return Settings()


def test_prometheus_and_grafana_services(compose):
    services = compose["services"]
    prom, grafana = services["prometheus"], services["grafana"]
    for service, image in ((prom, "prom/prometheus:"), (grafana, "grafana/grafana:")):
        assert service["image"].startswith(image)
        tag = service["image"].split(":", 1)[1]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{service['image']}: pin a version"
    assert "127.0.0.1:9090:9090" in prom["ports"]
    assert "127.0.0.1:3000:3000" in grafana["ports"]
    assert env_of(grafana)["GF_INSTALL_PLUGINS"] == "grafana-clickhouse-datasource"
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    # every file the two services mount exists in the repository
    for service in (prom, grafana):
        for volume in service["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume
            else:
                assert source in compose["volumes"], volume


def test_prometheus_scrapes_the_metrics_ports_of_existing_services(
    compose, prometheus, monkeypatch
):
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert set(jobs) == set(METRICS_PORT_SETTING)
    for name, job in jobs.items():
        assert job.get("metrics_path", "/metrics") == "/metrics"
        targets = [t for sc in job["static_configs"] for t in sc["targets"]]
        assert targets, name
        settings = service_settings(compose, name, monkeypatch)
        for target in targets:
            host, port = target.rsplit(":", 1)
            assert host in compose["services"], f"{target}: no service '{host}'"
            assert host == name
            assert int(port) == getattr(settings, METRICS_PORT_SETTING[name]), target
        # and the port is reachable from the Prometheus container, not only on loopback
        assert getattr(settings, METRICS_BIND_SETTING[name]) == "0.0.0.0", name


def test_grafana_datasources_are_provisioned(dashboard):
    sources = {s["uid"]: s for f in provisioning("datasources") for s in f["datasources"]}
    prom = next(s for s in sources.values() if s["type"] == "prometheus")
    assert prom["url"] == "http://prometheus:9090"
    ch = next(s for s in sources.values() if s["type"] == "grafana-clickhouse-datasource")
    assert ch["jsonData"]["host"] == "clickhouse"
    assert ch["jsonData"]["port"] == 8123 and ch["jsonData"]["protocol"] == "http"
    assert ch["jsonData"]["username"] == "spendstream"
    assert ch["secureJsonData"]["password"] == "spendstream"
    assert ch["jsonData"]["defaultDatabase"] == "spendstream"
    # every data source the dashboard names is one of these
    used = {(t["datasource"]["type"], t["datasource"]["uid"])
            for p in dashboard["panels"] for t in [p, *p.get("targets", [])]
            if isinstance(t.get("datasource"), dict)}  # fmt: skip
    assert used == {(s["type"], uid) for uid, s in sources.items()}


def test_grafana_loads_the_dashboard_folder(compose, dashboard):
    providers = [p for f in provisioning("dashboards") for p in f["providers"]]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    path = providers[0]["options"]["path"]
    mounts = dict(v.split(":")[:2][::-1] for v in compose["services"]["grafana"]["volumes"])
    assert mounts.get(path) == "./deploy/grafana/dashboards", f"{path} is not mounted"
    assert mounts.get("/etc/grafana/provisioning") == "./deploy/grafana/provisioning"
    home = env_of(compose["services"]["grafana"]).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home == f"{path}/{DASHBOARD.name}"
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


#: PromQL words that are not metric names (when not followed by "(")
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                   "unless", "offset", "bool", "inf", "nan"}  # fmt: skip


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: every identifier that is not a function,
    a keyword, a label (in {...} or by/without/on/ignoring (...)) or inside a string/range."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\b\d+(\.\d+)?[a-z]*\b", "", expr)  # numbers and durations (5m)
    names = set()
    for word, call in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", expr):
        if not call and word.lower() not in PROMQL_KEYWORDS:
            names.add(word)
    return names


def test_promql_metric_extraction():
    expr = ('histogram_quantile(0.99, sum by (le, stage) (rate(spendstream_batch_seconds_bucket'
            '{job="worker"}[$__rate_interval]))) / on (x) spendstream_budgets offset 5m')  # fmt: skip
    assert promql_metrics(expr) == {"spendstream_batch_seconds_bucket", "spendstream_budgets"}


def dashboard_metric_names(dashboard: dict[str, Any]) -> set[str]:
    targets = dashboard_targets(dashboard, "prometheus")
    assert targets and all(t.get("expr") for t in targets)
    return set().union(*(promql_metrics(t["expr"]) for t in targets))


def base_name(name: str) -> str:
    """A sample name without its counter/histogram suffix (what the code names a family)."""
    return re.sub(r"_(total|bucket|sum|count)$", "", name)


def test_dashboard_queries_only_metrics_of_the_contract(dashboard):
    used = dashboard_metric_names(dashboard)
    for name in used:
        histogram = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in METRIC_CONTRACT or histogram in HISTOGRAMS, f"{name}: not a known metric"
    # the panels the dashboard promises
    assert {"spendstream_events_priced_total", "spendstream_events_dead_lettered_total",
            "spendstream_consumer_lag", "spendstream_batch_seconds_bucket",
            "spendstream_sink_rows_total", "spendstream_sink_insert_seconds_bucket",
            "spendstream_alerts_total", "spendstream_notify_deliveries_total",
            "spendstream_record_age_seconds_bucket"} <= used  # fmt: skip


def exposed_metric_families() -> set[str]:
    """The metric family names the code builds (prometheus_client adds _total to counters
    and _bucket/_sum/_count to histograms): every "spendstream_..." literal of the modules
    that build metric families."""
    names: set[str] = set()
    for folder in ("streams", "sinks", "spendstream"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if "MetricFamily" in text or "histogram_family(" in text:
                names |= set(re.findall(r"\"(spendstream_[a-z0-9_]+)\"", text))
    return names


def test_dashboard_metrics_are_exposed_by_the_code(dashboard):
    exposed = exposed_metric_families()
    if not exposed:
        pytest.skip("no module builds metric families yet")
    exposed_bases = {base_name(n) for n in exposed}
    for name in dashboard_metric_names(dashboard):
        assert base_name(name) in exposed_bases, f"{name}: no code exposes it"


def expand_grafana_macros(sql: str, now: datetime) -> str:
    """The ClickHouse plugin's macros, expanded as it does (pkg/macros/macros.go) for the
    last day, with a one-minute interval; anything else starting with $ is left (and fails)."""
    start = now - timedelta(days=1)
    f, t = int(start.timestamp()), int(now.timestamp())
    fm, tm = f * 1000, t * 1000
    day = "toDate('{:%Y-%m-%d}')"
    rules: list[tuple[str, Any]] = [
        (r"\$__timeFilter_ms\(([^)]+)\)", lambda m: f"{m[1]} >= fromUnixTimestamp64Milli({fm})"
         f" AND {m[1]} <= fromUnixTimestamp64Milli({tm})"),
        (r"\$__timeFilter\(([^)]+)\)",
         lambda m: f"{m[1]} >= toDateTime({f}) AND {m[1]} <= toDateTime({t})"),
        (r"\$__dateFilter\(([^)]+)\)",
         lambda m: f"{m[1]} >= {day.format(start)} AND {m[1]} <= {day.format(now)}"),
        (r"\$__dateTimeFilter\(([^,]+),\s*([^)]+)\)|\$__dt\(([^,]+),\s*([^)]+)\)",
         lambda m: (lambda d, c: f"({d} >= {day.format(start)} AND {d} <= {day.format(now)}) "
                    f"AND ({c} >= toDateTime({f}) AND {c} <= toDateTime({t}))")(
             m[1] or m[3], m[2] or m[4])),
        (r"\$__timeInterval_ms\(([^)]+)\)",
         lambda m: f"toStartOfInterval(toDateTime64({m[1]}, 3), INTERVAL 60000 millisecond)"),
        (r"\$__timeInterval\(([^)]+)\)",
         lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL 60 second)"),
        (r"\$__fromTime_ms\b", lambda m: f"fromUnixTimestamp64Milli({fm})"),
        (r"\$__toTime_ms\b", lambda m: f"fromUnixTimestamp64Milli({tm})"),
        (r"\$__fromTime\b", lambda m: f"toDateTime({f})"),
        (r"\$__toTime\b", lambda m: f"toDateTime({t})"),
        (r"\$__interval_s\b", lambda m: "60"),
    ]  # fmt: skip
    for pattern, replace in rules:
        sql = re.sub(pattern, replace, sql)
    return sql


def clickhouse_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    panels = {id(t): p["title"] for p in dashboard["panels"] for t in p.get("targets", [])}
    return [(panels[id(t)], t["rawSql"])
            for t in dashboard_targets(dashboard, "grafana-clickhouse-datasource")]  # fmt: skip


def test_dashboard_has_spend_panels_over_the_stored_tables():
    dashboard = json.loads(DASHBOARD.read_text())
    queries = clickhouse_queries(dashboard)
    text = " ".join(sql for _, sql in queries)
    for table in ("priced_usage", "cost_allocations", "budget_alerts", "daily_spend"):
        assert re.search(rf"\b{table}\b", text), f"no panel reads {table}"
    for title, sql in queries:
        # money from the ReplacingMergeTree tables is summed with FINAL (README)
        for table in ("priced_usage", "cost_allocations", "budget_alerts"):
            for match in re.finditer(rf"FROM {table}\b(?: AS \w+)?(?P<final> FINAL)?", sql):
                assert match["final"], f"{title}: {table} without FINAL"


@pytest.fixture(scope="module")
def seeded_warehouse(chdb_dir):
    """The real schema (every migration) in chDB, with one row in each base table."""
    from spendstream.config import load_settings
    from spendstream.sinks.warehouse import connect, migrate

    settings = load_settings(data_dir=chdb_dir.parent, clickhouse_dsn=f"chdb://{chdb_dir}",
                             clickhouse_database=f"grafana_{uuid.uuid4().hex[:6]}")  # fmt: skip
    client = connect(settings)
    migrate(client)
    client.command(
        "INSERT INTO priced_usage (event_id, occurred_at, source, provider, model, team, "
        "project, cost, currency, priced) VALUES ('e-1', now64(6) - INTERVAL 1 HOUR, 'llm', "
        "'openai', 'gpt-4o', 'ml', 'support-bot', toDecimal128('1.234567891', 9), 'USD', 1)"
    )
    client.command(
        "INSERT INTO cost_allocations (allocation_id, event_id, budget_id, period_key, "
        "period_start, period_end, occurred_at, amount, currency, source) VALUES ('e-1/acme', "
        "'e-1', 'acme', '2026-11', now64(6) - INTERVAL 3 DAY, now64(6) + INTERVAL 20 DAY, "
        "now64(6) - INTERVAL 1 HOUR, toDecimal128('1.234567891', 9), 'USD', 'llm')"
    )
    client.command(
        "INSERT INTO budgets (budget_id, name, `limit`, currency, period, _offset) VALUES "
        "('acme', 'Acme', toDecimal128('100', 9), 'USD', 'month', 1)"
    )
    client.command(
        "INSERT INTO budget_alerts (alert_id, budget_id, kind, severity, threshold_percent, "
        "spent, `limit`, currency, message, triggered_at) VALUES ('acme:2026-11:threshold:50', "
        "'acme', 'threshold', 'warning', 50, 50, 100, 'USD', 'Acme: 50% spent', "
        "now64(6) - INTERVAL 1 HOUR)"
    )
    return client


@pytest.mark.parametrize(
    "title,sql",
    [pytest.param(title, sql, id=title) for title, sql in
     clickhouse_queries(json.loads(DASHBOARD.read_text()))],
)  # fmt: skip
def test_dashboard_sql_runs_on_the_real_schema(title, sql, seeded_warehouse):
    expanded = expand_grafana_macros(sql, datetime.now(UTC))
    assert "$" not in expanded, f"{title}: a macro or variable the test does not know"
    result = seeded_warehouse.query(expanded)
    assert result.result_rows, f"{title}: no rows although every table holds one"


def test_macro_expansion_matches_the_plugin():
    now = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    sql = expand_grafana_macros(
        "SELECT $__timeInterval(t) WHERE $__timeFilter(t) AND $__dateFilter(d) "
        "AND x < $__toTime AND y > $__fromTime_ms", now)  # fmt: skip
    f, t = int((now - timedelta(days=1)).timestamp()), int(now.timestamp())
    assert sql == (f"SELECT toStartOfInterval(toDateTime(t), INTERVAL 60 second) WHERE "
                   f"t >= toDateTime({f}) AND t <= toDateTime({t}) AND d >= "
                   f"toDate('2026-11-23') AND d <= toDate('2026-11-24') AND x < "
                   f"toDateTime({t}) AND y > fromUnixTimestamp64Milli({f * 1000})")  # fmt: skip
