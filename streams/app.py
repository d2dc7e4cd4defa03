"""The aggregating worker on faust: spend per budget and period, alerts, status, and the
HTTP API. Thin wiring of ``AggregateStage`` (aggregate_stage.py) to Kafka and a table.

  aggregate: cost-allocations -> budget-spend table, budget-alerts, budget-status

The price stage (raw usage -> usage.priced, cost-allocations, usage.dlq) runs in its own
process on librdkafka's batch consumer (price_loop.py, price_worker.py); ``spendstream
worker`` supervises both. faust stays the runtime here because this is the stateful part:
a table with a changelog, recovered and moved on rebalances.

Micro-batches (``stream.take``) of batch records; each table key is written at most once
per checkpoint (checkpoint.py). Processing is idempotent (per-origin watermarks in the
state), so at-least-once delivery gives an exactly-once effect. A batch that fails for any reason other than bad input ends the
process before faust can ack it (crash-only): on restart the batch is replayed and the
idempotent state absorbs it. ``Checkpoint.commit`` (checkpoint.py) is the order of the
writes: states and statuses once per interval, then the offsets.

Configured by an ``AggregatorConfig`` (configs.py) that the caller builds from the
settings; nothing here reads them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import faust

from spendstream.metrics import SECONDS_BUCKETS, SIZE_BUCKETS, Histogram
from spendstream.processes import RECOVERY_STUCK
from spendstream.schemas import batches
from spendstream.schemas.avro import AvroDecodeError, codec, ensure_registry, framed_codec
from spendstream.schemas.models import SourcePosition
from spendstream.topics import committed_or_start, has_records, price_group, worker_group

from .aggregate_stage import AggregateStage, allocation_row
from .api import BudgetApi, jsonable, mount
from .budget_feed import PROGRESS_HEADER, BudgetFeed, progress_header
from .checkpoint import Checkpoint
from .configs import AggregatorConfig, WarehouseOpener
from .dashboard import mount_dashboard
from .matching import BudgetRegistry
from .observability import PRICE_INTERNAL, mount_metrics
from .offset_guard import OffsetGuard
from .output import ALERT_LINGER_MS, OUTPUT_LINGER_MS, OutputProducer
from .pricing import Catalog, Pricer
from .processor import dead_letter
from .spend_table import SpendTable

log = logging.getLogger("spendstream.worker")

#: the faust table of spend per "budget|period" (its changelog is created before faust
#: starts, with the topics' partition count: topics.worker_topics)
SPEND_TABLE = "budget-spend"


def _enc(name: str, model: Any, topic: str) -> bytes:
    return framed_codec(name, topic).encode(model.to_avro())


class Metrics(Counter[str]):
    """Counters served on the worker's /metrics (Prometheus) and /metrics.json endpoints."""


class WorkerApp(faust.App):
    """A faust app whose consumer commits only offsets of processed records, in order
    (offset_guard.py)."""

    def __init__(self, app_id: str, *, offset_guard: OffsetGuard, **options: Any) -> None:
        self.spendstream_offset_guard = offset_guard
        #: run first when the app stops (the final checkpoint)
        self.spendstream_before_stop: Callable[[], Awaitable[None]] | None = None
        super().__init__(app_id, **options)

    async def on_stop(self) -> None:
        """Write the open checkpoint before faust stops its consumer: faust waits for every
        record taken to be acked, and ours are acked by the checkpoint, whose timer no
        longer runs once stopping began (a SIGTERM inside a checkpoint interval hung the
        worker until it was killed)."""
        if self.spendstream_before_stop is not None:
            try:
                await asyncio.wait_for(self.spendstream_before_stop(), FINAL_CHECKPOINT_S)
            except Exception:  # stopping goes on: what is not written is replayed
                log.warning("final checkpoint failed; its records will be replayed",
                            exc_info=True)  # fmt: skip
        await super().on_stop()

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        self.spendstream_offset_guard.install(consumer)
        shorten_fetch_wait(consumer, FETCH_MAX_WAIT_MS)
        return consumer


#: how long the broker may hold the aggregator's fetch when it finds nothing new
FETCH_MAX_WAIT_MS = 50
#: the most a stopping worker spends writing its last checkpoint
FINAL_CHECKPOINT_S = 15.0


def shorten_fetch_wait(consumer: Any, wait_ms: int) -> None:
    """faust 0.15 creates its aiokafka consumer with ``fetch_max_wait_ms=1500``. aiokafka
    leaves out of a fetch the partitions that still hold undelivered records, so records
    arriving on those meanwhile waited for that fetch to time out: at a paced 2,000
    events/s the aggregator sat idle for 1-1.4 s every few seconds (py-spy: the loop in
    select; the price stage kept up). The consumer is created in faust's consumer thread
    at start; its fetcher takes the wait from this attribute then."""
    thread = consumer._thread
    create = thread._create_worker_consumer

    def create_with_short_wait(transport: Any) -> Any:
        client = create(transport)
        client._fetch_max_wait_ms = wait_ms
        return client

    thread._create_worker_consumer = create_with_short_wait


@dataclass
class Worker:
    """The aggregating worker: its faust app and what the CLI and tests reach into."""

    app: WorkerApp
    registry: BudgetRegistry
    feed: BudgetFeed
    metrics: Metrics
    price_metrics: Path
    #: wall-clock time of the last batch that counted something (benchmarks time to it)
    last_aggregated_at: float | None = None
    #: the aggregator's input topic and consumer groups (observability.py: lag, readiness)
    input_topic: str = ""
    group: str = ""
    price_group: str = ""
    #: the aggregator's batches: records in each, seconds to process each
    batch_size: Histogram = field(default_factory=lambda: Histogram(SIZE_BUCKETS))
    batch_seconds: Histogram = field(default_factory=lambda: Histogram(SECONDS_BUCKETS))
    #: seconds from the produce time of a batch's oldest record to the batch's start
    record_age: Histogram = field(default_factory=lambda: Histogram(SECONDS_BUCKETS))

    def start_feed(self) -> None:
        """Read every budget before faust starts: an agent that waits for budgets inside
        its stream can miss its partitions when a rebalance lands meanwhile (found by the
        fault suite: a third worker joining left two partitions unconsumed)."""
        if not self.feed.is_alive():
            self.feed.start()
        if not self.feed.ready.wait(120):
            raise RuntimeError(
                f"budgets topic {self.feed.kafka.topics.budgets} not read within 120 s; "
                "is Kafka reachable?"
            )
        if self.feed.error:
            log.error("budget feed: %s", self.feed.error)
        log.info("budget feed ready: %d budgets", len(self.registry))

    def all_metrics(self) -> dict[str, Any]:
        """This process's counters plus the price stage's (its own process writes them):
        ``/metrics.json``."""
        import json

        try:
            price = json.loads(self.price_metrics.read_text())
        except (OSError, ValueError):
            price = {}
        for key in PRICE_INTERNAL:
            price.pop(key, None)
        return {**price, **self.metrics, "budgets": len(self.registry),
                "aggregated_last_at": self.last_aggregated_at}  # fmt: skip


def create_worker(config: AggregatorConfig) -> Worker:
    """The aggregator's process: the registry its config names (configured once for the
    process: the CLI did, or this does), the faust app and everything wired to it."""
    kafka = config.kafka
    topics = kafka.topics
    ensure_registry(config.schema_registry_url or None)
    datadir = config.data_dir
    datadir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    group = worker_group(kafka)
    offset_guard = OffsetGuard(
        [topics.allocations],
        metrics,
        start_of=lambda topic, partition: committed_or_start(kafka, group, topic, partition),
        has_records=lambda topic, partition, start, end: has_records(
            kafka, topic, partition, start, end
        ),
        generation=lambda: app.consumer_generation_id,
    )
    app = WorkerApp(
        group,
        offset_guard=offset_guard,
        broker=f"kafka://{kafka.bootstrap_servers}",
        store="memory://",
        autodiscover=False,
        datadir=str(datadir),
        topic_partitions=config.topic_partitions,
        topic_replication_factor=config.topic_replication,
        topic_allow_declare=True,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=1000,
        broker_session_timeout=float(config.session_timeout_s),
        broker_heartbeat_interval=min(3.0, config.session_timeout_s / 3),
        broker_commit_interval=1.0,
        web_enabled=True,
        web_bind=config.web_bind,
        web_port=config.web_port,
        web_in_thread=False,
        stream_wait_empty=True,
        table_standby_replicas=0,
        logging_config=None,
    )
    registry = BudgetRegistry()
    feed = BudgetFeed(kafka, registry, follow_status=True)
    pricer = Pricer(Catalog.for_settings(config.price_catalog))
    policy = config.alerts
    stage = AggregateStage(registry, policy, feed.fx)
    from spendstream.producer import producer_config

    # 20 ms: a checkpoint's states and statuses (produced a slice at a time) go out in a
    # few requests, not one per slice and partition (124 status requests a second at 2 ms,
    # 30 at 20: the broker's CPU goes by requests). Its drain sends at once what is left.
    out = OutputProducer(producer_config(kafka, **{"linger.ms": OUTPUT_LINGER_MS}))
    # alerts go out through a producer of their own: a threshold alert neither waits the
    # 20 ms linger nor queues behind a checkpoint's thousand states and statuses
    alerts_out = OutputProducer(producer_config(kafka, **{"linger.ms": ALERT_LINGER_MS}))
    alloc_topic = app.topic(topics.allocations, key_serializer="raw", value_serializer="raw")
    # State as a JSON string: faust's changelog recovery cannot rebuild a dict value_type.
    spend = app.Table(SPEND_TABLE, default=None, key_type=str, value_type=str)
    table = SpendTable(spend, out.send)  # its changelog goes out through ``out``
    single = codec("CostAllocation")

    def micro_batches(stream: faust.StreamT) -> Any:
        """Micro-batches of records (their acks wait for the checkpoint holding them)."""
        return cast(Any, stream).take_events(config.batch_size, config.linger_s)

    async def run_batch(events: list[faust.EventT], process: Any) -> None:
        """Admit the batch's events in order (offset_guard.py) and process them; their
        offsets may commit once the checkpoint holding them is written. Finish even if
        cancelled; crash (not ack) if it fails: nothing of it is committed then."""

        async def body() -> None:
            admitted = await offset_guard.admit(events)
            if admitted:
                await process(admitted)

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

    @app.agent(alloc_topic)
    async def aggregate(stream: faust.StreamT) -> None:
        async for events in micro_batches(stream):
            await run_batch(events, aggregate_batch)

    def decoded(events: list[faust.EventT]) -> list[tuple[faust.EventT, list[list[Any]]]]:
        """Each record's allocation rows; a record that is not ours goes to the DLQ (an
        undecodable record on an internal topic must not stop the aggregation)."""
        records = []
        for event in events:
            msg = event.message
            try:
                if batches.is_batch(msg.value):
                    version, rows = batches.decode(msg.value)
                    if version not in batches.ALLOCATIONS:
                        raise batches.BatchFormatError(f"a {version} record")
                else:
                    rows = [allocation_row(single.decode(msg.value))]
            except (AvroDecodeError, batches.BatchFormatError) as exc:
                pos = SourcePosition(topic=msg.topic, partition=msg.partition, offset=msg.offset)
                dead = dead_letter("decode", f"not a cost allocation: {exc}", pos,
                                   key=msg.key, value=msg.value)  # fmt: skip
                out.send(topics.dlq, msg.key, _enc("DeadLetter", dead, topics.dlq))
                metrics["dlq"] += 1
                continue
            records.append((event, rows))
        return records

    lock = asyncio.Lock()  # batches, checkpoints and revocations, one at a time

    async def aggregate_batch(events: list[faust.EventT]) -> None:
        async with lock:
            started = time.perf_counter()
            oldest = min((e.message.timestamp for e in events), default=0.0)
            if oldest > 0:
                worker.record_age.observe(max(0.0, time.time() - oldest))
            metrics["aggregate_consumed"] += len(events)
            now = datetime.now(UTC)
            result = stage.process(decoded(events), lambda k: checkpoint.load(k, table.get), now)
            await checkpoint.batch(result, events)
            metrics.update(result.counters)
            metrics["alerts"] += len(result.alerts)
            if result.counters["aggregated"]:
                worker.last_aggregated_at = time.time()
            if config.trace_batches:
                log.info("batch aggregate %s", offset_spans(events))
            worker.batch_size.observe(len(events))
            worker.batch_seconds.observe(time.perf_counter() - started)

    #: one checkpoint write at a time, and no revocation while one is written (its states
    #: must reach the changelog before another worker may restore them)
    writing = asyncio.Lock()

    async def commit(*, only_if_due: bool) -> bool:
        """Take a checkpoint under the aggregation lock, a slice of states at a time, and
        write it outside (batches go on while it waits for the broker; checkpoint.py).
        Crash if it fails: nothing of it is committed then, and its batches are replayed."""
        async with writing:
            async with lock:
                if not (checkpoint.due() if only_if_due else checkpoint.waiting
                        or checkpoint.dirty):  # fmt: skip
                    return False
                taking = checkpoint.begin(datetime.now(UTC))
            try:
                taken = False
                while not taken:  # a slice at a time: batches run between slices
                    await asyncio.sleep(0)  # a free lock is taken without yielding
                    async with lock:
                        taken = taking.step()
                written = await checkpoint.write(taking.snapshot)
            except Exception:
                log.critical("checkpoint failed; exiting so its batches are replayed",
                             exc_info=True)  # fmt: skip
                logging.shutdown()
                os._exit(70)
        metrics["checkpoints"] += 1
        metrics["states_written"] += written
        return True

    @app.timer(interval=config.checkpoint_interval_s / 4)
    async def checkpoint_timer() -> None:
        await commit(only_if_due=True)

    async def final_checkpoint() -> None:
        if await commit(only_if_due=False):
            log.info("final checkpoint written")

    app.spendstream_before_stop = final_checkpoint

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        async with writing, lock:
            checkpoint.forget(lambda event: event.message.tp in revoked)

    async def drain() -> None:
        await asyncio.gather(alerts_out.drain(), out.drain())

    def write_state(key: str, value: str, source: faust.EventT) -> None:
        table.put(key, value, source.message.partition)

    def send_alert(alert: Any) -> None:
        metrics[f"alerts_{alert.kind}"] += 1
        alerts_out.send(topics.alerts, alert.budget_id.encode(),
                        _enc("BudgetAlert", alert, topics.alerts))  # fmt: skip

    checkpoint: Checkpoint[faust.EventT] = Checkpoint(
        registry, policy,
        write_state=write_state,
        send_alert=send_alert,
        send_status=lambda key, record: out.send(
            topics.status, key.encode(), framed_codec("BudgetStatus", topics.status).encode(record),
            headers={PROGRESS_HEADER: progress_header(record)}),
        drain=drain, finish=offset_guard.finish, resolved=feed.resolved,
        interval_s=config.checkpoint_interval_s,
        send_conversions=lambda rows: out.send(
            topics.conversions, None, batches.encode(batches.CONVERSIONS_V1, rows)),
    )  # fmt: skip

    released_at = [feed.fx.version]

    @app.timer(interval=1.0)
    async def release_held() -> None:
        """New exchange rates: count the held allocations they convert (states of this
        worker's partitions; the checkpoint writes them like a batch's)."""
        version = feed.fx.version
        if version == released_at[0] or app.rebalancing:
            return
        async with lock:
            assigned = {tp.partition for tp in app.assignor.assigned_actives()
                        if tp.topic == topics.allocations}  # fmt: skip
            held = []
            for key in held_keys(checkpoint.states, spend):
                state = checkpoint.load(key, table.get)
                if state.held and state.partition in assigned:
                    held.append((key, state, PartitionRef(topics.allocations, state.partition)))
            now = datetime.now(UTC)
            result = stage.release(held, now)
            await checkpoint.batch(result, [])
            metrics.update(result.counters)
            metrics["alerts"] += len(result.alerts)
            released_at[0] = version
            if result.counters["fx_released"]:
                log.info("exchange rates released %d held allocations",
                         result.counters["fx_released"])  # fmt: skip

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
        elif now - since > config.recovery_timeout_s:
            log.critical("rebalance/recovery made no headway for %.0fs; exiting to start "
                         "again (code %d)", now - since, RECOVERY_STUCK)  # fmt: skip
            logging.shutdown()
            os._exit(RECOVERY_STUCK)

    worker = Worker(app, registry, feed, metrics, config.price_metrics_path,
                    input_topic=topics.allocations, group=group,
                    price_group=price_group(kafka))  # fmt: skip
    mount_metrics(app, worker)  # /metrics, /metrics.json, /healthz, /readyz

    mount(app, make_api(config, feed, pricer), config.web_bind)
    mount_dashboard(app, feed, config.open_warehouse, config.web_bind)

    def close_output(app: Any, *args: Any, **kwargs: Any) -> None:
        alerts_out.close()
        out.close()

    app.on_before_shutdown.connect(close_output)  # type: ignore[arg-type]
    return worker


class PartitionRef:
    """Where a state lives when no input record changed it (a release of held
    allocations): what the table write (``message.topic``, ``message.partition``) and a
    revocation (``message.tp``) read of a faust event."""

    def __init__(self, topic: str, partition: int) -> None:
        from faust.types import TP

        self.message = _Message(topic, partition, TP(topic, partition))


@dataclass(frozen=True)
class _Message:
    topic: str
    partition: int
    tp: Any


def held_keys(states: dict[str, Any], table: Any) -> set[str]:
    """Keys of states holding allocations that wait for an exchange rate: in memory, or
    in the table (a worker that restarted has not loaded them)."""
    keys = {k for k, state in states.items() if state.held}
    for key, value in list(table.items()):
        if key not in states and value and '"held":[[' in value:
            keys.add(key)
    return keys


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


def make_api(config: AggregatorConfig, feed: BudgetFeed, pricer: Pricer) -> BudgetApi:
    """The HTTP API with writers to the compacted topics and usage read from ClickHouse."""
    from spendstream.producer import publish_alert_action, publish_budgets

    kafka = config.kafka

    def write_budget(budget: Any, budget_id: str, actor: str, note: str | None) -> None:
        if budget is None:
            publish_budgets(kafka, [], delete=[budget_id], actor=actor, note=note)
        else:
            publish_budgets(kafka, [budget], actor=actor, note=note)

    return BudgetApi(
        feed,
        pricer,
        config.api_tokens,
        write_budget,
        lambda action: publish_alert_action(kafka, action),
        lambda budget_id, limit: recent_usage(config.open_warehouse, budget_id, limit),
    )


def recent_usage(
    open_warehouse: WarehouseOpener, budget_id: str, limit: int
) -> list[dict[str, Any]] | None:
    """Newest allocations of a budget, from the running sink (embedded ClickHouse) or the
    server; None when neither answers. Rows are JSON-ready, money as exact decimal strings."""
    try:
        warehouse = open_warehouse()
        if warehouse is None:
            return None
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
