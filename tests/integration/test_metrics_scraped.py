"""/metrics, /healthz and /readyz of a running worker and sink on the real broker and
chDB: after events flowed, the counters equal what was published."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spendstream.processes import wait_for, worker_metrics
from spendstream.producer import UsagePublisher, publish_budgets
from spendstream.schemas.budget import BudgetDefinition
from spendstream.topics import ensure_topics, price_group, sink_group, worker_group
from tests.integration.test_pipeline import known_events, start_pipeline

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def scrape(base: str) -> Samples:
    status, ctype, body = get(f"{base}/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}  # fmt: skip


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def lag_total(samples: Samples, group: str) -> float | None:
    lags = [v for (n, labels), v in samples.items()
            if n == "spendstream_consumer_lag" and dict(labels)["group"] == group]  # fmt: skip
    return sum(lags) if lags else None


def test_worker_and_sink_metrics_and_readiness_after_events_flowed(settings, services):
    ensure_topics(settings)
    publish_budgets(settings, [BudgetDefinition(budget_id="all", name="all", limit="1000",
                                                scope={"source": "llm"})])  # fmt: skip
    warehouse = start_pipeline(settings, services)
    worker = f"http://127.0.0.1:{settings.worker_web_port}"
    sink = f"http://127.0.0.1:{settings.sink_metrics_port}"

    def alive(base: str) -> dict[str, Any] | None:
        try:
            status, ctype, body = get(f"{base}/healthz")
        except urllib.error.URLError:  # not listening yet
            return None
        return json.loads(body) if (status, ctype) == (200, "application/json") else None

    assert wait_for("worker alive", lambda: alive(worker), 90, services) == {"ok": True}
    assert wait_for("sink alive", lambda: alive(sink), 30, services) == {"ok": True}

    events, _ = known_events(40, "metrics")
    with UsagePublisher(settings) as publisher:
        publisher.publish_many(events)
        for e in events[:4]:  # the same event ids again
            publisher.publish(e)
        publisher.publish_raw(settings.topics.llm, b"bad", b"not avro at all")
        publisher.flush()
    published = len(events) + 4 + 1

    def worker_done() -> Samples | None:
        s = scrape(worker)
        done = value(s, "spendstream_events_consumed_total", stage="price") == published
        return s if done and value(s, "spendstream_allocations_aggregated_total") == 40 else None

    w = wait_for("the worker's /metrics to count every event", worker_done, 120, services)
    assert value(w, "spendstream_events_priced_total") == len(events)
    assert value(w, "spendstream_events_duplicate_total") == 4
    assert value(w, "spendstream_events_dead_lettered_total", reason="decode") == 1
    assert value(w, "spendstream_allocations_total") == 40
    assert value(w, "spendstream_budgets") == 1
    assert value(w, "spendstream_alerts_total", kind="threshold") == 0
    assert (value(w, "spendstream_batch_size_sum", stage="price") or 0) == published
    assert (value(w, "spendstream_batch_size_count", stage="aggregate") or 0) >= 1
    assert (value(w, "spendstream_batch_seconds_count", stage="price") or 0) >= 1
    # the JSON counters stay at /metrics.json (benchmarks and `spendstream status` read it)
    assert (worker_metrics(settings.worker_web_port) or {}).get("priced") == len(events)

    def drained(base: str, group: str) -> Samples | None:
        s = scrape(base)
        return s if lag_total(s, group) == 0 else None

    w = wait_for("worker lag 0 (price stage)", lambda: drained(worker, price_group(settings)),
                 60, services)  # fmt: skip
    wait_for("worker lag 0 (aggregator)", lambda: drained(worker, worker_group(settings)), 60,
             services)  # fmt: skip

    def sink_done() -> Samples | None:
        s = scrape(sink)
        rows = [value(s, "spendstream_sink_rows_total", table=t)
                for t in ("priced_usage", "cost_allocations", "dead_letters")]  # fmt: skip
        return s if rows == [40, 40, 1] else None

    k = wait_for("the sink's /metrics to count every row", sink_done, 120, services)
    assert warehouse.query("SELECT count() FROM priced_usage FINAL").scalar() == 40
    assert (value(k, "spendstream_sink_insert_seconds_count", table="cost_allocations") or 0) >= 1
    assert value(k, "spendstream_sink_errors_total") == 0  # the native path took every batch
    assert value(k, "spendstream_sink_retries_total") == 0
    wait_for("sink lag 0", lambda: drained(sink, sink_group(settings)), 60, services)

    def ready(base: str) -> dict[str, Any] | None:
        status, _, body = get(f"{base}/readyz")
        return json.loads(body) if status == 200 else None

    assert wait_for("worker ready", lambda: ready(worker), 60, services) == {"ready": True}
    assert wait_for("sink ready", lambda: ready(sink), 60, services) == {"ready": True}
