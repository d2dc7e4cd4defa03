"""`spendstream notify` on the real broker, delivering to a real HTTP receiver on loopback:
signatures, retries, Retry-After, final answers to alerts.dlq, the delivery log in Kafka
and ClickHouse, replay without re-sending, and kill -9 mid-delivery."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from spendstream.config import Settings
from spendstream.processes import ProcessGroup, wait_for
from spendstream.readback import read_topic
from spendstream.schemas.avro import codec
from spendstream.schemas.models import BudgetAlert
from spendstream.sinks.clickhouse_sink import ClickHouseSink
from spendstream.sinks.notify.channels import verify_signature
from spendstream.sinks.notify.config import load_config
from spendstream.sinks.notify.service import NotifyService
from spendstream.sinks.notify.service_config import NotifyConfig
from spendstream.sinks.warehouse import connect
from spendstream.topics import ensure_topics, notify_group, topic_lags

pytestmark = pytest.mark.integration

SECRET = "whsec-" + uuid.uuid4().hex


class Receiver:
    """An HTTP receiver that answers each alert id from a script (default 200) and keeps
    every request it got."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.script: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.requests: list[dict[str, Any]] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                key = self.headers["Idempotency-Key"]
                with receiver.lock:
                    steps = receiver.script.get(key) or []
                    status, headers = steps.pop(0) if steps else (200, {})
                    receiver.requests.append({"at": time.monotonic(), "key": key, "body": body,
                                              "headers": dict(self.headers), "status": status})  # fmt: skip
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/spend"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def keys(self) -> list[str]:
        with self.lock:
            return [r["key"] for r in self.requests]

    def of(self, key: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["key"] == key]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def rules_file(tmp_path: Path, url: str, attempts: int = 4) -> Path:
    path = tmp_path / "notify.yaml"
    path.write_text(f"""
channels:
  hook:
    type: webhook
    url: {url}
    secret: ${{TEST_HOOK_SECRET}}
    retry: {{attempts: {attempts}, initial_s: 0.2, max_s: 1}}
rules:
  - default: true
    channels: [hook]
""")
    return path


def make_alert(n: int, budget: str = "team-a") -> BudgetAlert:
    return BudgetAlert(
        alert_id=f"{budget}:2026-11:threshold:{n}", budget_id=budget, budget_name=budget.upper(),
        period_key="2026-11", kind="threshold", threshold_percent=Decimal(n),
        severity="warning", spent=Decimal("812.123456789"), limit=Decimal(1000),
        currency="USD", message=f"{budget} crossed {n}%", projected_total=Decimal("1240.5"),
        triggered_at=datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
    )  # fmt: skip


def produce(settings: Settings, alerts: list[BudgetAlert]) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for a in alerts:
        producer.produce(settings.topics.alerts, key=a.budget_id.encode(),
                         value=codec("BudgetAlert").encode(a.to_avro()))  # fmt: skip
    assert producer.flush(30) == 0


def committed_lag(settings: Settings) -> int:
    """Alerts the notify group has not committed."""
    return sum(
        v or 0
        for v in topic_lags(settings, notify_group(settings), [settings.topics.alerts]).values()
    )


def run_until(service: NotifyService, done: Any, timeout: float = 60) -> dict[str, int]:
    """Run ``service`` in a thread until ``done()``; then stop it and return its stats."""
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(stats=service.run()))
    thread.start()
    try:
        wait_for("notify to deliver", done, timeout)
    finally:
        service.stop_event.set()
        thread.join(30)
    assert not thread.is_alive()
    return dict(out["stats"])


@pytest.fixture
def notify_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("TEST_HOOK_SECRET", SECRET)
    ensure_topics(settings)
    return settings


def test_webhook_retries_retry_after_final_answers_and_the_delivery_log(
    notify_settings: Settings, receiver: Receiver, tmp_path: Path, chdb_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    s = notify_settings
    caplog.set_level(logging.DEBUG)
    ok, flaky, gone, busy, never = (make_alert(n) for n in (50, 80, 90, 95, 99))
    receiver.script = {
        flaky.alert_id: [(500, {}), (500, {})],  # then 200
        gone.alert_id: [(410, {})],  # final: not retried
        busy.alert_id: [(429, {"Retry-After": "2"})],  # then 200, not before 2 s
        never.alert_id: [(503, {})] * 10,  # every attempt fails: given up after 4
    }
    alerts = [ok, flaky, gone, busy, never]
    produce(s, alerts)
    config = load_config(rules_file(tmp_path, receiver.url))
    scraped: dict[str, Any] = {}

    def delivered() -> bool:
        if len(receiver.requests) < 1 + 3 + 1 + 2 + 4 or committed_lag(s) != 0:
            return False
        # while it runs, its metrics port says so (README, "Metrics and health")
        base = f"http://127.0.0.1:{s.notify_metrics_port}"
        with urllib.request.urlopen(f"{base}/readyz", timeout=10) as resp:
            scraped["ready"] = (resp.status, json.loads(resp.read()))
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
            scraped["metrics"] = {
                (m.name, m.labels.get("outcome")): m.value
                for f in text_string_to_metric_families(resp.read().decode()) for m in f.samples
            }  # fmt: skip
        return True

    stats = run_until(NotifyService(NotifyConfig.from_settings(s), config), delivered)
    assert scraped["ready"] == (200, {"ready": True})
    metrics = scraped["metrics"]
    assert metrics[("spendstream_notify_alerts_total", None)] == len(alerts)
    assert metrics[("spendstream_notify_deliveries_total", "delivered")] == 3
    assert metrics[("spendstream_notify_deliveries_total", "failed")] == 2
    assert metrics[("spendstream_notify_deliveries_total", "retried")] == stats["retried"] >= 6

    # every request is signed; the body is the alert with money as exact strings
    for r in receiver.requests:
        h = r["headers"]
        assert verify_signature(SECRET, h["X-Spendstream-Timestamp"], r["body"],
                                h["X-Spendstream-Signature"])  # fmt: skip
        assert not verify_signature(SECRET, h["X-Spendstream-Timestamp"], r["body"] + b" ",
                                    h["X-Spendstream-Signature"])  # fmt: skip
    body = json.loads(receiver.of(ok.alert_id)[0]["body"])
    assert body["alert_id"] == ok.alert_id and body["spent"] == "812.123456789"
    assert body["projected_total"] == "1240.5"
    # 500 twice then 200: delivered on the third attempt; 410 once; 503 four times
    assert [r["status"] for r in receiver.of(flaky.alert_id)] == [500, 500, 200]
    assert len(receiver.of(ok.alert_id)) == 1 and len(receiver.of(gone.alert_id)) == 1
    assert [r["status"] for r in receiver.of(never.alert_id)] == [503] * 4
    first, second = receiver.of(busy.alert_id)
    assert second["at"] - first["at"] >= 2.0  # Retry-After honoured
    assert stats["delivered"] == 3 and stats["failed"] == 2

    # the 410 and the exhausted alert are on alerts.dlq with channel and reason
    dead = {
        r["alert_id"]: r
        for _, r in read_topic(s, s.topics.alerts_dlq, codec("AlertDeadLetter").decode)
    }
    assert set(dead) == {gone.alert_id, never.alert_id}
    assert dead[gone.alert_id]["status_code"] == 410 and dead[gone.alert_id]["attempts"] == 1
    assert dead[never.alert_id]["attempts"] == 4 and "503" in dead[never.alert_id]["reason"]
    assert dead[gone.alert_id]["channel"] == "hook"
    assert BudgetAlert.from_avro(codec("BudgetAlert").decode(dead[gone.alert_id]["value"])) == gone

    # the delivery log: every attempt, with outcome and status
    log = [r for _, r in read_topic(s, s.topics.alert_deliveries, codec("AlertDelivery").decode)]
    by_alert = {a.alert_id: [(r["attempt"], r["outcome"], r["status_code"])
                             for r in sorted(log, key=lambda r: r["attempt"]) if r["alert_id"] == a.alert_id]
                for a in alerts}  # fmt: skip
    assert by_alert[flaky.alert_id] == [
        (1, "retrying", 500),
        (2, "retrying", 500),
        (3, "delivered", 200),
    ]
    assert by_alert[gone.alert_id] == [(1, "failed", 410)]
    assert by_alert[never.alert_id][-1] == (4, "failed", 503)

    # no secret anywhere: not in the log, the dead letters, or the service's log lines
    everything = json.dumps(log, default=str) + json.dumps(list(dead.values()), default=str)
    assert SECRET not in everything and SECRET not in caplog.text

    # a replay (a new consumer group reading from the start) sends nothing again
    before = len(receiver.requests)
    replay_settings = s.model_copy(update={"notify_group": "replay-" + uuid.uuid4().hex[:6]})
    replay = NotifyService(NotifyConfig.from_settings(replay_settings), config)
    assert replay.run(idle_exit_s=2)["skipped"] == len(alerts)
    assert len(receiver.requests) == before

    # the sink lands the delivery log in ClickHouse
    sink_s = s.model_copy(update={"clickhouse_dsn": f"chdb://{chdb_dir}",
                                  "clickhouse_database": f"n_{uuid.uuid4().hex[:8]}"})  # fmt: skip
    client = connect(sink_s)
    ClickHouseSink.from_settings(sink_s, client).run(idle_exit_s=3)
    rows = client.query("SELECT alert_id, last_outcome, attempts FROM alert_delivery_status "
                        "ORDER BY alert_id").result_rows  # fmt: skip
    assert {r[0]: (r[1], r[2]) for r in rows} == {
        ok.alert_id: ("delivered", 1), flaky.alert_id: ("delivered", 3),
        gone.alert_id: ("failed", 1), busy.alert_id: ("delivered", 2),
        never.alert_id: ("failed", 4),
    }  # fmt: skip
    stored = client.query("SELECT count() FROM alert_deliveries FINAL").result_rows[0][0]
    assert stored == len(log)
    projected = client.query(f"SELECT projected_total FROM budget_alerts FINAL "
                             f"WHERE alert_id = '{ok.alert_id}'").result_rows  # fmt: skip
    assert projected == [(Decimal("1240.5"),)]


def test_kill_9_mid_delivery_loses_nothing(
    notify_settings: Settings, tmp_path: Path, services: ProcessGroup
) -> None:
    s = notify_settings
    receiver = Receiver(delay_s=0.15)  # slow: the kill lands while sends are running
    try:
        alerts = [make_alert(n, f"team-{n % 5}") for n in range(40)]
        produce(s, alerts)
        rules = rules_file(tmp_path, receiver.url)
        env = {"TEST_HOOK_SECRET": SECRET, "SPENDSTREAM_NOTIFY_WORKERS": "2"}
        services.start("notify", "notify", "--rules", str(rules), **env)
        wait_for("some deliveries", lambda: len(receiver.requests) >= 10, 60, services)
        services.kill("notify")
        got = set(receiver.keys())
        assert len(got) < len(alerts)  # really killed mid-way
        services.start("notify-2", "notify", "--rules", str(rules), **env)
        wanted = {a.alert_id for a in alerts}
        wait_for("every alert delivered", lambda: set(receiver.keys()) >= wanted, 90, services)
        wait_for("offsets committed", lambda: committed_lag(s) == 0, 30, services)
        assert set(receiver.keys()) == wanted  # distinct idempotency keys == alerts on the topic
        services.stop("notify-2")
    finally:
        receiver.server.shutdown()
