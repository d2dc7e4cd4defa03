"""Run the price stage as a process: the budget feed, the stage, and the librdkafka
consumer and producer around it (``spendstream worker`` starts it beside the faust
aggregator)."""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import cache

from confluent_kafka import Consumer, Producer

from spendstream.config import Settings
from spendstream.producer import producer_config
from spendstream.schemas.avro import configure_registry
from spendstream.topics import price_group, seen_topic

from .budget_feed import BudgetFeed
from .compiled_pricing import CompiledPricer
from .dedupe import DedupeState
from .matching import BudgetRegistry
from .price_loop import PriceLoop, changelog_reader, price_metrics_path
from .price_stage import PriceRules, PriceStage
from .pricing import Catalog

log = logging.getLogger("spendstream.price")


def build_loop(settings: Settings) -> PriceLoop:
    topics = settings.topics
    configure_registry(settings.schema_registry_url or None)
    registry = BudgetRegistry()
    feed = BudgetFeed(settings, registry)
    feed.start()
    if not feed.ready.wait(120):
        raise RuntimeError(f"budgets topic {topics.budgets} not read within 120 s")
    log.info("price stage: %d budgets", len(registry))
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "logger": logging.getLogger("spendstream.kafka"),
            "group.id": price_group(settings),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": settings.worker_session_timeout_s * 1000,
            "heartbeat.interval.ms": min(3000, settings.worker_session_timeout_s * 1000 // 3),
            "max.poll.interval.ms": 600_000,
            # the broker holds a fetch up to 20 ms for 1 MiB: at a paced 5,000 events/s a
            # fetch per few records cost the broker a third more CPU (measured)
            "fetch.wait.max.ms": 20,
            "fetch.min.bytes": 1 << 20,
        }
    )

    @cache
    def partitions(topic: str) -> int:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        if meta.error is not None or not meta.partitions:
            raise RuntimeError(f"topic {topic} is not available: {meta.error}")
        return len(meta.partitions)

    rules = PriceRules(
        registry,
        CompiledPricer(Catalog.for_settings(settings.price_catalog)),
        max_skew=timedelta(seconds=settings.max_clock_skew_s),
        unknown_price=settings.unknown_price,
        late_periods=settings.late_periods,
    )
    stage = PriceStage(
        rules,
        DedupeState(settings.dedupe_window_s),
        priced_topic=topics.priced,
        allocations_topic=topics.allocations,
        dlq_topic=topics.dlq,
        changelog_topic=seen_topic(settings),
        partitions=partitions,
    )
    # no compression: on one machine the broker and both ends pay for lz4 in CPU, and the
    # internal topics never leave it; measured (benchmarks/pipeline.py) faster without
    producer = Producer(producer_config(settings, **{"linger.ms": 5, "compression.type": "none"}))
    return PriceLoop(
        stage,
        consumer,
        producer,
        sources=topics.sources,
        load_changelog=changelog_reader(
            settings.bootstrap_servers, seen_topic(settings), partitions(seen_topic(settings))
        ),
        batch_size=settings.batch_size,
        linger_s=settings.batch_linger_ms / 1000,
        metrics_path=price_metrics_path(settings),
    )


def run_price_worker(settings: Settings) -> None:
    build_loop(settings).run()
