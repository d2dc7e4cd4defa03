"""The worker's ``/metrics`` (Prometheus text), ``/metrics.json``, ``/healthz`` and
``/readyz``, served by the aggregator's faust web server.

The metric families are computed at scrape time from the counters that already exist: the
aggregator's ``Metrics`` counter and histograms, and the price stage's counters, histograms
and lag, which its own process writes to a JSON file about four times a second
(``price_loop.py``, ``price_metrics_path``). Nothing is counted twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from spendstream.metrics import (
    SECONDS_BUCKETS,
    SIZE_BUCKETS,
    Histogram,
    Lags,
    histogram_family,
    lag_family,
    registry_of,
    respond,
)

if TYPE_CHECKING:
    from .budget_feed import BudgetFeed


class WorkerView(Protocol):
    """What these metrics read from the aggregating worker (``app.Worker``, which mounts
    them): a protocol, so this module needs nothing from app.py."""

    @property
    def app(self) -> Any: ...
    @property
    def feed(self) -> BudgetFeed: ...
    @property
    def registry(self) -> Sized: ...
    @property
    def metrics(self) -> Mapping[str, Any]: ...
    @property
    def price_metrics(self) -> Path: ...
    @property
    def input_topic(self) -> str: ...
    @property
    def group(self) -> str: ...
    @property
    def price_group(self) -> str: ...
    @property
    def batch_size(self) -> Histogram: ...
    @property
    def batch_seconds(self) -> Histogram: ...
    @property
    def record_age(self) -> Histogram: ...
    def all_metrics(self) -> dict[str, Any]: ...


#: alert kinds (README, "Alerts"): each is exposed, at 0 until one fires
ALERT_KINDS = ("threshold", "exceeded", "forecast", "anomaly")
#: a price stage whose metrics file is older than this is not running (it writes ~4/s)
PRICE_SILENT_S = 60.0
#: keys of the price metrics file that are for Prometheus only, not for /metrics.json
PRICE_INTERNAL = ("written_at", "assigned", "lag", "histograms")


def read_price(worker: WorkerView) -> dict[str, Any]:
    """What the price stage last wrote ({} before it first wrote)."""
    try:
        data = json.loads(worker.price_metrics.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _int(counters: Mapping[str, Any], key: str) -> float:
    value = counters.get(key) or 0
    return float(value) if isinstance(value, (int, float)) else 0.0


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def aggregator_lags(consumer: Any, topic: str) -> Lags:
    """Lag of the aggregator's partitions of ``topic``: the high watermark of aiokafka's last
    fetch minus the offset after the last record faust handed to the agent (or, before any,
    the fetch position). Local values only; a consumer not started yet gives {}."""
    lags: Lags = {}
    try:
        client = consumer._thread._ensure_consumer()
        assignment = client._subscription.subscription.assignment
        read = consumer._read_offset
        for tp in list(assignment.tps):
            if tp.topic != topic:
                continue
            state = assignment.state_value(tp)
            if state is None or state.highwater is None:
                continue
            last = read.get(tp)
            if last is not None:
                done = last + 1
            elif state.has_valid_position:
                done = state.position
            else:
                continue
            lags[(tp.topic, tp.partition)] = max(int(state.highwater) - int(done), 0)
    except Exception:  # not started, stopping, or mid-rebalance: no figure this scrape
        return lags
    return lags


def assigned_inputs(worker: WorkerView) -> list[tuple[str, int]] | None:
    """The aggregator's partitions of its input topic; None while its consumer is not up."""
    consumer = getattr(worker.app, "_consumer", None)
    if consumer is None:
        return None
    try:
        tps = consumer.assignment()
    except Exception:
        return None
    return sorted((tp.topic, tp.partition) for tp in tps if tp.topic == worker.input_topic)


def worker_families(worker: WorkerView) -> list[Metric]:
    price = read_price(worker)
    agg = worker.metrics
    consumed = CounterMetricFamily(
        "spendstream_events_consumed", "Records the worker's stages read: usage events "
        "(price) and cost-allocation batch records (aggregate).", labels=["stage"],
    )  # fmt: skip
    consumed.add_metric(["price"], _int(price, "consumed"))
    consumed.add_metric(["aggregate"], _int(agg, "aggregate_consumed"))
    dead = CounterMetricFamily(
        "spendstream_events_dead_lettered", "Records sent to usage.dlq, by error code.",
        labels=["reason"],
    )  # fmt: skip
    reasons: dict[str, float] = {}
    for key in price:
        if key.startswith("dlq_"):
            reasons[key[4:]] = reasons.get(key[4:], 0.0) + _int(price, key)
    if agg.get("dlq"):  # the aggregator dead-letters records it cannot decode
        reasons["decode"] = reasons.get("decode", 0.0) + float(agg["dlq"])
    for reason, n in sorted(reasons.items()):
        dead.add_metric([reason], n)
    alerts = CounterMetricFamily(
        "spendstream_alerts", "Budget alerts the aggregator published, by kind.", labels=["kind"]
    )
    kinds = {k[len("alerts_") :] for k in agg if k.startswith("alerts_")} | set(ALERT_KINDS)
    for kind in sorted(kinds):
        alerts.add_metric([kind], _int(agg, f"alerts_{kind}"))
    fallbacks = sum(_int(price, k) for k in price if k.startswith("price_fallback_"))
    hist = price.get("histograms") or {}
    sizes = {"price": Histogram.from_json(SIZE_BUCKETS, hist.get("batch_size")),
             "aggregate": worker.batch_size}  # fmt: skip
    seconds = {"price": Histogram.from_json(SECONDS_BUCKETS, hist.get("batch_seconds")),
               "aggregate": worker.batch_seconds}  # fmt: skip
    ages = {"price": Histogram.from_json(SECONDS_BUCKETS, hist.get("record_age")),
            "aggregate": worker.record_age}  # fmt: skip
    price_lags: Lags = {}
    for row in price.get("lag") or []:
        if isinstance(row, list) and len(row) == 3:
            price_lags[(str(row[0]), int(row[1]))] = int(row[2])
    consumer = getattr(worker.app, "_consumer", None)
    agg_lags = aggregator_lags(consumer, worker.input_topic) if consumer is not None else {}
    return [
        consumed,
        _counter("spendstream_events_priced", "Usage events priced.", _int(price, "priced")),
        dead,
        _counter("spendstream_events_duplicate",
                 "Usage events dropped as duplicates of an earlier event id.",
                 _int(price, "duplicates")),
        _counter("spendstream_allocations", "Cost allocations (event x budget) the price "
                 "stage produced.", _int(price, "allocations")),
        _counter("spendstream_allocations_aggregated", "Cost allocations counted into "
                 "budget spend by the aggregator (replays excluded).", _int(agg, "aggregated")),
        alerts,
        fx_family(agg),
        GaugeMetricFamily("spendstream_fx_held_allocations", "Allocations in another "
                          "currency than their budget's waiting for their day's exchange "
                          "rate (all budgets, from the latest statuses).",
                          value=float(held_allocations(worker))),
        GaugeMetricFamily("spendstream_fx_rates", "Reference exchange rates known.",
                          value=float(len(worker.feed.fx))),
        _counter("spendstream_price_fallbacks", "Events priced by a fallback rule (not an "
                 "exact catalog entry).", fallbacks),
        _counter("spendstream_unknown_service_tiers", "LLM calls whose service tier has no "
                 "known rates: priced at the standard rates, price_source ends in "
                 "+unknown_tier:<tier>.", _int(price, "unknown_tier")),
        _counter("spendstream_batch_calls_without_batch_rates", "Batch LLM calls with no "
                 "batch rates known: priced at the standard rates, price_source ends in "
                 "+no_batch_rate.", _int(price, "no_batch_rate")),
        GaugeMetricFamily("spendstream_budgets", "Budgets this worker knows.",
                          value=float(len(worker.registry))),
        GaugeMetricFamily("spendstream_dedupe_ids", "Event ids the price stage holds for "
                          "deduplication.", value=_int(price, "dedupe_ids")),
        histogram_family("spendstream_batch_size", "Records per batch.", "stage", sizes),
        histogram_family("spendstream_batch_seconds", "Seconds to process a batch.", "stage",
                         seconds),
        histogram_family("spendstream_record_age_seconds", "Seconds from the produce time "
                         "of a batch's oldest record to the start of its processing: how "
                         "long input waited for the stage.", "stage", ages),
        lag_family([(worker.price_group, price_lags), (worker.group, agg_lags)]),
    ]  # fmt: skip


def fx_family(agg: Mapping[str, Any]) -> CounterMetricFamily:
    """Allocations the aggregator converted to their budget's currency: on arrival, or
    released from hold when their rate was published; and how many it held."""
    family = CounterMetricFamily(
        "spendstream_fx_allocations", "Cross-currency allocations by what happened: "
        "converted on arrival, held for a missing rate, released from hold.",
        labels=["outcome"],
    )  # fmt: skip
    for outcome, key in (("converted", "fx_converted"), ("held", "fx_held"),
                         ("released", "fx_released")):  # fmt: skip
        family.add_metric([outcome], _int(agg, key))
    return family


def held_allocations(worker: WorkerView) -> int:
    return sum(getattr(s, "held_allocations", 0) or 0 for s in worker.feed.statuses.values())


def worker_not_ready(worker: WorkerView, now: float | None = None) -> list[str]:
    """Why this worker is not ready (empty: ready): the budget feed has not read budgets,
    statuses and alert actions to their end, the aggregator has no input partitions or is
    rebalancing, or the price stage is not running with partitions."""
    reasons = []
    feed = worker.feed
    if feed.error:
        reasons.append(f"budget feed: {feed.error}")
    elif not feed.caught_up.is_set():
        reasons.append("budget feed has not caught up (budgets, statuses, alert actions)")
    if feed.ident is not None and not feed.is_alive():
        reasons.append("budget feed stopped")
    assigned = assigned_inputs(worker)
    if assigned is None:
        reasons.append("aggregator consumer not started")
    elif not assigned:
        reasons.append(f"aggregator has no {worker.input_topic} partitions assigned")
    if getattr(worker.app, "rebalancing", False):
        reasons.append("aggregator is rebalancing or recovering its table")
    price = read_price(worker)
    if not price:
        reasons.append("price stage has not reported yet")
    else:
        age = (time.time() if now is None else now) - float(price.get("written_at") or 0)
        if age > PRICE_SILENT_S:
            reasons.append(f"price stage silent for {age:.0f}s")
        elif not price.get("assigned"):
            reasons.append("price stage has no input partitions assigned")
    return reasons


def mount_metrics(app: Any, worker: WorkerView) -> None:
    """``/metrics``, ``/metrics.json``, ``/healthz`` and ``/readyz`` on the faust web server."""
    registry = registry_of(lambda: worker_families(worker))

    def reply(web: Any, path: str) -> Any:
        found = respond(path, registry, lambda: worker_not_ready(worker))
        assert found is not None
        status, ctype, body = found
        # aiohttp refuses a charset inside ``content_type``: pass the header as it is
        return web.bytes(body, status=status, headers={"Content-Type": ctype})

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return reply(web, "/metrics")

    @app.page("/metrics.json")
    async def metrics_json(web: Any, request: Any) -> Any:
        return web.json(worker.all_metrics())

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return reply(web, "/healthz")

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        return reply(web, "/readyz")
