"""The faust worker: thin wiring of the pure stages to Kafka topics and tables.

Two agents:
  price:     usage.* (raw bytes)  -> usage.priced, cost-allocations, usage.dlq
  aggregate: cost-allocations     -> spend table, budget-alerts, budget-status

Raw bytes are consumed and decoded inside the agent, so a bad record reaches the DLQ
before its offset is committed. Micro-batches (``stream.take``) write each table key at
most once per batch. Processing is idempotent (see aggregation.py and the dedupe note
below), so at-least-once delivery gives an exactly-once effect. A batch that fails for
any reason other than bad input ends the process before faust can ack it (crash-only):
on restart the batch is replayed and the idempotent state absorbs it. Outputs go through
librdkafka (output.py) and are flushed before a batch returns, i.e. before faust acks it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import faust

from spendstream.config import Settings
from spendstream.processes import RECOVERY_STUCK
from spendstream.schemas.avro import codec, configure_registry, framed_codec
from spendstream.schemas.models import BudgetAlert, CostAllocation, DeadLetter, SourcePosition
from spendstream.topics import committed_or_start, has_records

from .aggregation import AlertPolicy, PeriodState, due_alerts, state_key, status_of
from .api import BudgetApi, jsonable, mount
from .budget_feed import BudgetFeed
from .matching import BudgetRegistry
from .offset_guard import OffsetGuard
from .output import OutputProducer
from .pricing import Catalog, Pricer
from .processor import MismatchLog, UsageProcessor

log = logging.getLogger("spendstream.worker")


def _enc(name: str, model: Any, topic: str) -> bytes:
    return framed_codec(name, topic).encode(model.to_avro())


class Metrics(Counter[str]):
    """Counters served on the worker's /metrics endpoint."""


class WorkerApp(faust.App):
    """A faust app whose consumer commits only offsets of processed records, in order
    (offset_guard.py)."""

    def __init__(self, app_id: str, *, offset_guard: OffsetGuard, **options: Any) -> None:
        self.spendstream_offset_guard = offset_guard
        super().__init__(app_id, **options)

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        self.spendstream_offset_guard.install(consumer)
        return consumer


def create_app(settings: Settings) -> faust.App:
    topics = settings.topics
    configure_registry(settings.schema_registry_url or None)
    datadir = settings.worker_dir / f"w{settings.worker_web_port}"
    datadir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    group = f"{settings.topic_prefix}{settings.app_id}"
    offset_guard = OffsetGuard(
        [*topics.sources, topics.allocations],
        metrics,
        start_of=lambda topic, partition: committed_or_start(settings, group, topic, partition),
        has_records=lambda topic, partition, start, end: has_records(
            settings, topic, partition, start, end
        ),
        generation=lambda: app.consumer_generation_id,
    )
    app = WorkerApp(
        group,
        offset_guard=offset_guard,
        broker=f"kafka://{settings.bootstrap_servers}",
        store="memory://",
        autodiscover=False,
        datadir=str(datadir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=1000,
        broker_session_timeout=float(settings.worker_session_timeout_s),
        broker_heartbeat_interval=min(3.0, settings.worker_session_timeout_s / 3),
        broker_commit_interval=1.0,
        web_enabled=True,
        web_bind=settings.worker_web_bind,
        web_port=settings.worker_web_port,
        web_in_thread=False,
        stream_wait_empty=True,
        table_standby_replicas=0,
        logging_config=None,
    )
    registry = BudgetRegistry()
    feed = BudgetFeed(settings, registry, follow_status=True)
    pricer = Pricer(Catalog.for_settings(settings.price_catalog))
    processor = UsageProcessor(
        pricer,
        registry,
        max_skew=timedelta(seconds=settings.max_clock_skew_s),
        unknown_price=settings.unknown_price,
        late_periods=settings.late_periods,
    )
    policy = AlertPolicy.from_settings(settings)
    mismatches = MismatchLog()
    from spendstream.producer import producer_config

    out = OutputProducer(producer_config(settings, **{"linger.ms": 2}))

    def raw_topic(*names: str) -> faust.TopicT:
        return app.topic(*names, key_serializer="raw", value_serializer="raw")

    sources = raw_topic(*topics.sources)
    alloc_topic = raw_topic(topics.allocations)

    # event_id -> "topic:partition:offset|unix time" of its first sighting, remembered for
    # one to two dedupe windows (tumbling windows, expired by faust). A replay of the same
    # record (same position) is processed again; only a different position is a duplicate,
    # so marking an id never hides a record whose outputs were not written yet.
    window = float(settings.dedupe_window_s)
    seen = (
        app.Table("seen-events", default=str, key_type=str, value_type=str)
        .tumbling(window, expires=2 * window)
        .relative_to_now()
    )
    # State as a JSON string: faust's changelog recovery cannot rebuild a dict value_type.
    spend = app.Table("budget-spend", default=None, key_type=str, value_type=str)

    def start_budget_feed() -> None:
        """Read every budget before faust starts: an agent that waits for budgets inside
        its stream can miss its partitions when a rebalance lands meanwhile (found by the
        fault suite: a third worker joining left two partitions unconsumed)."""
        if not feed.is_alive():
            feed.start()
        if not feed.ready.wait(120):
            raise RuntimeError(
                f"budgets topic {topics.budgets} not read within 120 s; is Kafka reachable?"
            )
        if feed.error:
            log.error("budget feed: %s", feed.error)
        log.info("budget feed ready: %d budgets", len(registry))

    def batches(stream: faust.StreamT) -> Any:
        """Micro-batches of events (acked by faust after the batch body returns)."""
        return cast(Any, stream).take_events(settings.batch_size, settings.batch_linger_ms / 1000)

    async def run_batch(events: list[faust.EventT], process: Any) -> None:
        """Admit the batch's events in order (offset_guard.py), process them, and mark them
        finished. Finish even if cancelled; crash (not ack) if it fails. An abandoned batch
        is never marked finished, so its offsets are not committed."""

        async def body() -> None:
            admitted = await offset_guard.admit(events)
            if admitted:
                await process(admitted)
            offset_guard.completed(admitted)

        task = asyncio.ensure_future(body())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise
        except Exception:
            log.critical("batch failed; exiting so it is replayed, not acked", exc_info=True)
            logging.shutdown()
            os._exit(70)

    @app.agent(sources)
    async def price(stream: faust.StreamT) -> None:
        async for events in batches(stream):
            await run_batch(events, price_batch)

    async def price_batch(events: list[faust.EventT]) -> None:
        now = datetime.now(UTC)
        now_tag = str(int(time.time()))
        for event in events:
            msg = event.message
            pos = SourcePosition(topic=msg.topic, partition=msg.partition, offset=msg.offset)
            here = f"{pos.topic}:{pos.partition}:{pos.offset}"
            decoded = processor.decode(msg.key, msg.value, pos, now)
            if isinstance(decoded, DeadLetter):
                metrics["dlq"] += 1
                out.send(topics.dlq, msg.key, _enc("DeadLetter", decoded, topics.dlq), here)
                continue
            usage = decoded
            first = with_event(event, lambda k=usage.event_id: first_sighting(k))
            if first and first.split("|", 1)[0] != here:
                metrics["duplicates"] += 1
                continue
            arrived = datetime.fromtimestamp(msg.timestamp, UTC) if msg.timestamp else None
            outcome = processor.process(usage, pos, now, raw=msg.value, arrived=arrived)
            if outcome.dead is not None:
                metrics["dlq"] += 1
                out.send(topics.dlq, msg.key, _enc("DeadLetter", outcome.dead, topics.dlq), here)
                if outcome.priced is None:
                    continue
                metrics["too_late"] += 1  # priced and stored, counted toward no budget
            assert outcome.priced is not None
            report_skipped(usage.event_id, outcome.priced.currency, outcome.skipped_budgets)
            out.send(
                topics.priced,
                usage.event_id.encode(),
                _enc("PricedUsage", outcome.priced, topics.priced),
                here,
            )
            for alloc in outcome.allocations:
                out.send(
                    topics.allocations,
                    alloc.budget_id.encode(),
                    _enc("CostAllocation", alloc, topics.allocations),
                    here,
                )
            metrics["priced"] += 1
            metrics["allocations"] += len(outcome.allocations)
            if not first:
                mark = f"{here}|{now_tag}"
                with_event(event, lambda k=usage.event_id, v=mark: seen.__setitem__(k, v))
        # every output of the batch is stored before faust may commit its input offsets
        await out.drain()
        if settings.worker_trace_batches:
            log.info("batch price %s", offset_spans(events))

    @app.agent(alloc_topic)
    async def aggregate(stream: faust.StreamT) -> None:
        async for events in batches(stream):
            await run_batch(events, aggregate_batch)

    async def aggregate_batch(events: list[faust.EventT]) -> None:
        now = datetime.now(UTC)
        states: dict[str, PeriodState] = {}
        last_event: dict[str, faust.EventT] = {}
        alerts: list[BudgetAlert] = []
        for event in events:
            alloc = CostAllocation.from_avro(codec("CostAllocation").decode(event.message.value))
            budget = registry.get(alloc.budget_id)
            key = state_key(alloc.budget_id, alloc.period_key)
            state = states.get(key)
            if state is None:
                state = PeriodState.loads(spend.get(key))
                states[key] = state
            if not state.apply(alloc):
                metrics["replayed_allocations"] += 1
                continue
            metrics["aggregated"] += 1
            last_event[key] = event
            if budget is not None:
                alerts.extend(
                    due_alerts(budget, alloc.period_key, state, now, alloc.event_id, policy)
                )
        # Alerts are delivered before the state that records them is written: a crash in
        # between re-sends an alert with the same alert_id rather than losing it.
        for a in alerts:
            out.send(topics.alerts, a.budget_id.encode(), _enc("BudgetAlert", a, topics.alerts))
        await out.drain()
        metrics["alerts"] += len(alerts)
        if settings.worker_trace_batches:
            log.info("batch aggregate %s", offset_spans(events))
        for key, state in states.items():
            if key not in last_event:
                continue
            with_event(last_event[key], lambda k=key, s=state: spend.__setitem__(k, s.dumps()))
            budget_id, period_key = key.split("|", 1)
            budget = registry.get(budget_id)
            if budget is not None:
                status = status_of(budget, period_key, state, now, feed.resolved())
                out.send(topics.status, key.encode(), _enc("BudgetStatus", status, topics.status))
        await out.drain()

    def report_skipped(event_id: str, currency: str, budget_ids: list[str]) -> None:
        """Count every event a budget skips for its currency; log each pair once."""
        for budget_id in budget_ids:
            metrics["skipped_currency_mismatch"] += 1
            if mismatches.first(budget_id, currency):
                budget = registry.get(budget_id)
                log.warning(
                    "budget '%s' is in %s: %s spend (first: event %s) does not count toward "
                    "it, amounts are never converted; /metrics skipped_currency_mismatch "
                    "counts every such event (logged once per budget and currency)",
                    budget_id, budget.currency if budget else "?", currency, event_id,
                )  # fmt: skip

    def first_sighting(event_id: str) -> str:
        windows = seen[event_id]
        return cast(str, windows.now() or windows.delta(window))

    def with_event(event: faust.EventT, action: Any) -> Any:
        """Run a table access in the context of ``event`` so it uses that event's partition."""
        from faust.streams import _current_event

        token = _current_event.set(weakref.ref(event))
        try:
            return action()
        finally:
            _current_event.reset(token)

    @app.timer(interval=2.0)
    async def heal_offsets() -> None:
        await offset_guard.heal()

    rebalancing_since: list[float | None] = [None]

    @app.timer(interval=5.0)
    async def recovery_watchdog() -> None:
        """faust 0.15 can wait forever for changelog records of a partition that came
        back to this worker ("No event received for active tp"): restart instead."""
        if not app.rebalancing:
            rebalancing_since[0] = None
            return
        now = time.monotonic()
        since = rebalancing_since[0]
        if since is None:
            rebalancing_since[0] = now
        elif now - since > settings.worker_recovery_timeout_s:
            log.critical("rebalance/recovery made no headway for %.0fs; exiting to start "
                         "again (code %d)", now - since, RECOVERY_STUCK)  # fmt: skip
            logging.shutdown()
            os._exit(RECOVERY_STUCK)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.json({**metrics, "budgets": len(registry)})

    mount(app, make_api(settings, feed, pricer), settings.worker_web_bind)

    def close_output(app: Any, *args: Any, **kwargs: Any) -> None:
        out.close()

    app.on_before_shutdown.connect(close_output)  # type: ignore[arg-type]

    app.spendstream_start_feed = start_budget_feed  # type: ignore[attr-defined]
    app.spendstream_registry = registry  # type: ignore[attr-defined]
    app.spendstream_metrics = metrics  # type: ignore[attr-defined]
    return app


def offset_spans(events: list[Any]) -> str:
    """Per input partition of a batch, its offsets as runs: topic:partition=0-20,22-40."""
    offsets: dict[str, list[int]] = {}
    for e in events:
        m = e.message
        offsets.setdefault(f"{m.topic}:{m.partition}", []).append(m.offset)
    parts = []
    for key, values in sorted(offsets.items()):
        values = sorted(set(values))
        runs, start = [], values[0]
        for prev, cur in zip(values, values[1:], strict=False):
            if cur != prev + 1:
                runs.append(f"{start}-{prev}")
                start = cur
        runs.append(f"{start}-{values[-1]}")
        parts.append(f"{key}={','.join(runs)}")
    return " ".join(parts)


def make_api(settings: Settings, feed: BudgetFeed, pricer: Pricer) -> BudgetApi:
    """The HTTP API with writers to the compacted topics and usage read from ClickHouse."""
    from spendstream.producer import publish_alert_action, publish_budgets

    def write_budget(budget: Any, budget_id: str) -> None:
        if budget is None:
            publish_budgets(settings, [], delete=[budget_id])
        else:
            publish_budgets(settings, [budget])

    return BudgetApi(
        feed,
        pricer,
        settings.api_token.get_secret_value(),
        write_budget,
        lambda action: publish_alert_action(settings, action),
        lambda budget_id, limit: recent_usage(settings, budget_id, limit),
    )


def recent_usage(settings: Settings, budget_id: str, limit: int) -> list[dict[str, Any]] | None:
    """Newest allocations of a budget, from the running sink (embedded ClickHouse) or the
    server; None when neither answers. A worker never opens the chDB directory itself:
    the sink holds it. Rows are JSON-ready, money as exact decimal strings."""
    from spendstream.sinks.warehouse import (
        DirectWarehouse,
        Warehouse,
        connect,
        sink_warehouse,
    )

    warehouse: Warehouse
    try:
        if settings.is_embedded_clickhouse:
            through_sink = sink_warehouse(settings)
            if through_sink is None:
                return None
            warehouse = through_sink
        else:
            warehouse = DirectWarehouse(connect(settings, create_database=False))
        try:
            result = warehouse.query(
                "SELECT event_id, occurred_at, period_key, amount, currency, source, provider, "
                "model, team, project, user FROM cost_allocations FINAL "
                "WHERE budget_id = {b:String} ORDER BY occurred_at DESC LIMIT {n:UInt32}",
                parameters={"b": budget_id, "n": limit},
            )
        finally:
            warehouse.close()
    except Exception as exc:
        log.warning("recent usage for %s unavailable: %s", budget_id, exc)
        return None
    return [jsonable(row) for row in result.as_dicts()]
