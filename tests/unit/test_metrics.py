"""Prometheus metrics and health of the worker, the sink and `spendstream notify`, driven
without a broker: the exposition parses, holds the documented names, moves with the
counters it reads, and readiness says why a process is not ready."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections import Counter, namedtuple
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import TopicPartition as KafkaTP
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from spendstream.config import load_settings
from spendstream.metrics import (
    SECONDS_BUCKETS,
    Histogram,
    consumer_lags,
    registry_of,
    respond,
    start_health_server,
)
from spendstream.schemas.budget import BudgetDefinition
from spendstream.sinks.clickhouse_sink import SinkStats
from spendstream.sinks.health import WriterHealth
from spendstream.sinks.notify.config import parse_config
from spendstream.sinks.notify.dispatch import Dispatcher
from spendstream.sinks.notify.service import NotifyService
from spendstream.sinks.notify.service_config import NotifyConfig
from spendstream.sinks.service import SinkWatch
from spendstream.streams.app import Metrics, Worker
from spendstream.streams.budget_feed import BudgetFeed
from spendstream.streams.matching import BudgetRegistry
from spendstream.streams.observability import worker_families, worker_not_ready
from spendstream.streams.price_loop import InputRecord, PricedBatch, PriceLoop
from tests.unit.test_notify_dispatch import Box, Clock, alert, ok, rules
from tests.unit.test_price_loop import EchoStage, FakeConsumer, FakeProducer, Journal, Message

TP = namedtuple("TP", "topic partition")  # faust's and aiokafka's are such tuples


def scrape(registry: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, from the text a scrape returns."""
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: dict[Any, float]) -> set[str]:
    return {name for name, _ in samples}


# --- shared pieces -------------------------------------------------------------------------
def test_histogram_buckets_are_cumulative_with_le_inclusive_and_survive_json() -> None:
    hist = Histogram((1, 5, 10))
    for v in (0.5, 1, 5, 7, 50):
        hist.observe(v)
    assert hist.buckets() == [("1.0", 2.0), ("5.0", 3.0), ("10.0", 4.0), ("+Inf", 5.0)]
    assert (hist.count, hist.total) == (5, 63.5)
    back = Histogram.from_json((1, 5, 10), json.loads(json.dumps(hist.to_json())))
    assert back.buckets() == hist.buckets() and back.total == 63.5
    # a file written with other buckets is not misread
    assert Histogram.from_json((1, 5), hist.to_json()).count == 0


class LagConsumer(FakeConsumer):
    """The price loop's fake consumer, with the local offsets librdkafka keeps."""

    def assignment(self) -> list[KafkaTP]:
        return [KafkaTP("usage.llm", 0), KafkaTP("usage.llm", 1)]

    def position(self, parts: list[KafkaTP]) -> list[KafkaTP]:
        # partition 1 has no position yet: left out, not reported as 0
        return [KafkaTP("usage.llm", 0, 8), KafkaTP("usage.llm", 1, -1001)]

    def get_watermark_offsets(self, tp: KafkaTP, cached: bool = False) -> tuple[int, int]:
        assert cached, "a scrape must not ask the broker"
        return (0, 10)


def test_consumer_lag_is_high_watermark_minus_position_and_never_raises() -> None:
    assert consumer_lags(LagConsumer(Journal(), [])) == {("usage.llm", 0): 2}
    assert consumer_lags(object()) == {}  # a consumer without offsets (closing): nothing


# --- worker --------------------------------------------------------------------------------
class PricingStage(EchoStage):
    """Each batch: every record priced with two allocations, plus a duplicate, a dead
    letter and a fallback price, counted as the real stage counts them."""

    def process(self, records: list[InputRecord]) -> PricedBatch:
        batch = super().process(records)
        batch.counters.update(Counter(allocations=2 * len(records), duplicates=1, dlq=1,
                                      dlq_decode=1, price_fallback_family=1))  # fmt: skip
        return batch


class AiokafkaState:
    highwater = 10
    has_valid_position = True
    position = 9


def faust_app(assigned: set[TP], read: dict[TP, int]) -> SimpleNamespace:
    """The parts of a running faust app and its aiokafka consumer that the worker reads."""
    subscription = SimpleNamespace(assignment=SimpleNamespace(
        tps=set(assigned), state_value=lambda tp: AiokafkaState()))  # fmt: skip
    client = SimpleNamespace(_subscription=SimpleNamespace(subscription=subscription))
    consumer = SimpleNamespace(
        _thread=SimpleNamespace(_ensure_consumer=lambda: client),
        _read_offset=read,
        assignment=lambda: set(assigned),
    )
    return SimpleNamespace(_consumer=consumer, rebalancing=False)


@pytest.fixture
def worker(tmp_path: Path) -> tuple[Worker, PriceLoop]:
    settings = load_settings(data_dir=tmp_path)
    registry = BudgetRegistry()
    registry.put(BudgetDefinition(budget_id="b1", name="b1", limit="10"))
    registry.put(BudgetDefinition(budget_id="b2", name="b2", limit="20"))
    path = tmp_path / "price.json"
    allocations = TP("cost-allocations", 0)
    w = Worker(
        faust_app({allocations, TP("app-budget-spend-changelog", 0)}, {allocations: 6}),  # type: ignore[arg-type]
        registry, BudgetFeed(settings, registry, follow_status=True), Metrics(), path,
        input_topic="cost-allocations", group="app", price_group="app-price",
    )  # fmt: skip
    price = PriceLoop(PricingStage(), LagConsumer(Journal(), []),  # type: ignore[arg-type]
                      FakeProducer(Journal()),  # type: ignore[arg-type]
                      sources=["usage.llm"], load_changelog=lambda pairs: {},
                      metrics_path=path)  # fmt: skip
    return w, price


def test_worker_exposition_parses_holds_the_names_and_moves_with_both_stages(worker) -> None:
    w, price = worker
    registry = registry_of(lambda: worker_families(w))
    price.consumer.messages = [Message("usage.llm", 0, o) for o in (5, 6, 7)]
    price.step()
    price.write_metrics(force=True)
    w.metrics.update(aggregate_consumed=2, aggregated=6, dlq=1, alerts_threshold=2)
    w.batch_size.observe(2)
    w.batch_seconds.observe(0.004)
    w.record_age.observe(0.2)

    samples = scrape(registry)
    assert {
        "spendstream_events_consumed_total", "spendstream_events_priced_total",
        "spendstream_events_dead_lettered_total", "spendstream_events_duplicate_total",
        "spendstream_allocations_total", "spendstream_alerts_total",
        "spendstream_price_fallbacks_total", "spendstream_budgets",
        "spendstream_unknown_service_tiers_total",
        "spendstream_batch_calls_without_batch_rates_total",
        "spendstream_batch_size_bucket", "spendstream_batch_size_sum",
        "spendstream_batch_size_count", "spendstream_batch_seconds_bucket",
        "spendstream_batch_seconds_count", "spendstream_consumer_lag",
    } <= names(samples)  # fmt: skip
    assert value(samples, "spendstream_events_priced_total") == 3
    assert value(samples, "spendstream_events_consumed_total", stage="price") == 3
    assert value(samples, "spendstream_events_consumed_total", stage="aggregate") == 2
    assert value(samples, "spendstream_allocations_total") == 6
    assert value(samples, "spendstream_events_duplicate_total") == 1
    # the price stage's decode rejects and the aggregator's undecodable record
    assert value(samples, "spendstream_events_dead_lettered_total", reason="decode") == 2
    assert value(samples, "spendstream_alerts_total", kind="threshold") == 2
    assert value(samples, "spendstream_alerts_total", kind="exceeded") == 0
    assert value(samples, "spendstream_price_fallbacks_total") == 1
    assert value(samples, "spendstream_unknown_service_tiers_total") == 0
    assert value(samples, "spendstream_budgets") == 2
    assert value(samples, "spendstream_batch_size_count", stage="price") == 1
    assert value(samples, "spendstream_batch_size_sum", stage="price") == 3
    assert value(samples, "spendstream_batch_size_bucket", stage="price", le="5.0") == 1
    assert value(samples, "spendstream_batch_size_bucket", stage="price", le="1.0") == 0
    assert value(samples, "spendstream_batch_seconds_count", stage="aggregate") == 1
    assert value(samples, "spendstream_batch_seconds_bucket", stage="aggregate", le="0.005") == 1
    # the fake records were produced in 2023: the price batch's age is past every bound
    assert value(samples, "spendstream_record_age_seconds_count", stage="price") == 1
    assert value(samples, "spendstream_record_age_seconds_bucket", stage="price", le="60.0") == 0
    assert value(samples, "spendstream_record_age_seconds_bucket", stage="aggregate",
                 le="0.25") == 1  # fmt: skip
    assert value(samples, "spendstream_consumer_lag", group="app-price", topic="usage.llm",
                 partition="0") == 2  # fmt: skip
    # aggregator: high watermark 10, last record handed to the agent 6; changelogs left out
    assert value(samples, "spendstream_consumer_lag", group="app", topic="cost-allocations",
                 partition="0") == 3  # fmt: skip
    assert not any(dict(labels).get("topic", "").endswith("changelog") for _, labels in samples)

    # the next price batch moves the counters the next scrape shows
    price.consumer.messages = [Message("usage.llm", 0, o) for o in (8, 9)]
    price.step()
    price.write_metrics(force=True)
    w.registry.delete("b2")
    samples = scrape(registry)
    assert value(samples, "spendstream_events_priced_total") == 5
    assert value(samples, "spendstream_batch_size_count", stage="price") == 2
    assert value(samples, "spendstream_budgets") == 1

    # /metrics.json keeps today's flat counters, without what is there for Prometheus only
    flat = w.all_metrics()
    assert flat["priced"] == 5 and flat["aggregated"] == 6 and flat["budgets"] == 1
    assert not {"histograms", "lag", "assigned", "written_at"} & set(flat)


def test_worker_is_not_ready_until_the_budget_feed_caught_up(worker) -> None:
    w, price = worker
    price.write_metrics(force=True)
    registry = registry_of(lambda: worker_families(w))

    def readyz() -> tuple[int, dict[str, Any]]:
        status, ctype, body = respond("/readyz", registry, lambda: worker_not_ready(w)) or ()
        assert ctype == "application/json"
        return status, json.loads(body)

    status, body = readyz()
    assert status == 503 and body["ready"] is False
    assert body["reasons"] == ["budget feed has not caught up (budgets, statuses, alert actions)"]

    w.feed.caught_up.set()
    assert readyz() == (200, {"ready": True})
    assert respond("/healthz", registry, lambda: ["anything"]) == (
        200, "application/json", b'{"ok": true}')  # fmt: skip

    # the aggregator lost its input partitions; the price stage stopped writing
    w.app._consumer.assignment = lambda: {TP("app-budget-spend-changelog", 0)}  # type: ignore[attr-defined]
    reasons = worker_not_ready(w, now=time.time() + 300)
    assert reasons == ["aggregator has no cost-allocations partitions assigned",
                       "price stage silent for 300s"]  # fmt: skip
    w.feed.error = "budgets topic 'budgets' not found"
    assert "budget feed: budgets topic 'budgets' not found" in worker_not_ready(w)


# --- sink ----------------------------------------------------------------------------------
def stub_sink() -> SimpleNamespace:
    """The parts of a ClickHouseSink its metrics and readiness read."""
    return SimpleNamespace(
        stats=SinkStats(), health=WriterHealth(), assigned=set(), lags={},
        topic_table={"usage.priced": "priced_usage", "cost-allocations": "cost_allocations"},
        consumer_group="spendstream-sink",
    )  # fmt: skip


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_sink_metrics_port_serves_metrics_health_and_readiness(tmp_path: Path) -> None:
    sink = stub_sink()
    watch = SinkWatch(load_settings(data_dir=tmp_path))
    server = start_health_server(registry_of(watch.families), watch.not_ready, 0,
                                 "127.0.0.1", "the sink")  # fmt: skip
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert json.loads(get(f"{base}/readyz")[2]) == {
            "ready": False, "reasons": ["connecting to ClickHouse"]}  # fmt: skip
        watch.sink = sink  # type: ignore[assignment]
        status, ctype, body = get(f"{base}/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        samples = scrape(registry_of(watch.families))
        assert {"spendstream_sink_rows_total", "spendstream_sink_errors_total",
                "spendstream_sink_retries_total"} <= names(samples)  # fmt: skip
        assert value(samples, "spendstream_sink_rows_total", table="priced_usage") == 0

        sink.stats.rows["priced_usage"] += 40
        sink.stats.insert_failures += 2
        sink.stats.retries += 2
        sink.stats.insert_seconds["priced_usage"] = Histogram(SECONDS_BUCKETS)
        sink.stats.insert_seconds["priced_usage"].observe(0.2)
        sink.lags = {("usage.priced", 3): 17}
        text = get(f"{base}/metrics")[2].decode()
        samples = {(s.name, frozenset(s.labels.items())): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip
        assert value(samples, "spendstream_sink_rows_total", table="priced_usage") == 40
        assert value(samples, "spendstream_sink_errors_total") == 2
        assert value(samples, "spendstream_sink_retries_total") == 2
        assert value(samples, "spendstream_sink_insert_seconds_count", table="priced_usage") == 1
        assert value(samples, "spendstream_sink_insert_seconds_bucket", table="priced_usage",
                     le="0.25") == 1  # fmt: skip
        assert value(samples, "spendstream_consumer_lag", group="spendstream-sink",
                     topic="usage.priced", partition="3") == 17  # fmt: skip

        assert get(f"{base}/healthz")[:2] == (200, "application/json")
        sink.health.failed("Connection refused")
        status, _, body = get(f"{base}/readyz")
        reasons = json.loads(body)["reasons"]
        assert status == 503 and len(reasons) == 2
        assert reasons[0].startswith("ClickHouse inserts failing since ")
        assert reasons[0].endswith(": Connection refused")
        assert reasons[1] == "no partitions assigned"
        sink.health.succeeded()
        sink.assigned.add(("usage.priced", 0))
        assert get(f"{base}/readyz")[:1] == (200,)
        assert get(f"{base}/nothing")[0] == 404
    finally:
        server.stop()


def test_a_busy_metrics_port_falls_back_to_a_free_one() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_health_server(registry_of(list), lambda: [], port, "127.0.0.1", "test")
        try:
            assert server.port not in (0, port)
            assert get(f"http://127.0.0.1:{server.port}/readyz")[0] == 200
        finally:
            server.stop()


# --- notify --------------------------------------------------------------------------------
def test_notify_exposes_the_dispatcher_stats_and_readiness(tmp_path: Path) -> None:
    config = NotifyConfig.from_settings(load_settings(data_dir=tmp_path))
    service = NotifyService(config, parse_config(rules()), senders={})
    registry = registry_of(service.families)
    assert service.not_ready() == ["delivery log not read yet", "no alerts partitions assigned"]
    samples = scrape(registry)
    assert {"spendstream_notify_alerts_total", "spendstream_notify_deliveries_total",
            "spendstream_notify_digests_total"} <= names(samples)  # fmt: skip
    assert value(samples, "spendstream_notify_deliveries_total", outcome="unrouted") == 0

    clock = Clock()
    service.dispatcher = Dispatcher(service.rules, Box(), now=clock, wall_us=lambda: 1)
    service.assigned.add(("budget-alerts", 0))
    assert service.not_ready() == []
    dispatcher = service.dispatcher
    dispatcher.offer(("budget-alerts", 0), 0, alert(1), b"raw")
    dispatcher.offer(("budget-alerts", 0), 1, alert(2), b"raw")
    first, second = dispatcher.ready()
    dispatcher.finished(first, ok())
    samples = scrape(registry)
    assert value(samples, "spendstream_notify_alerts_total") == 2
    assert value(samples, "spendstream_notify_deliveries_total", outcome="delivered") == 1
    assert value(samples, "spendstream_notify_deliveries_total", outcome="failed") == 0
    assert dispatcher.stats["delivered"] == 1  # read, never changed


def test_price_loop_ships_histograms_and_lag_in_its_metrics_file(tmp_path: Path) -> None:
    """The price stage runs in its own process: what the worker's /metrics shows of it comes
    through this file, observed once per batch."""
    path = tmp_path / "price.json"
    price = PriceLoop(PricingStage(), LagConsumer(Journal(), [Message("usage.llm", 0, 1)]),  # type: ignore[arg-type]
                      FakeProducer(Journal()),  # type: ignore[arg-type]
                      sources=["usage.llm"], load_changelog=lambda pairs: {},
                      metrics_path=path)  # fmt: skip
    price.step()
    price.write_metrics(force=True)
    data = json.loads(path.read_text())
    assert data["consumed"] == 1 and data["assigned"] == 1
    assert data["lag"] == [["usage.llm", 0, 2]]
    assert sum(data["histograms"]["batch_size"]["counts"]) == 1
    assert data["histograms"]["batch_size"]["sum"] == 1


def test_sink_counts_the_rows_of_a_batch_record_from_its_header() -> None:
    """SinkStats.rows counts rows: a price-stage batch record says how many it holds, so
    the native path never decodes it; without the header it is counted by decoding."""
    from spendstream.schemas import batches
    from spendstream.sinks.clickhouse_sink import _batch_rows

    row = ["ev", "b", "scope", "2026-11", 0, 1, 0, 5, "USD", "llm", "", "", "", "", "", "",
           "", "", {"k": "x],["}, "usage.llm", 0, 1]  # fmt: skip
    value = batches.encode(batches.ALLOCATIONS_V1, [row, row, row])
    with_header = SimpleNamespace(headers=lambda: [("origin", b"x"), ("rows", b"3")])
    without = SimpleNamespace(headers=lambda: None)
    assert _batch_rows(with_header, b"not read", filtered=False) == 3
    assert _batch_rows(without, value, filtered=False) == 3
    assert _batch_rows(with_header, value[:-10], filtered=True) == 0  # corrupt: refused later
