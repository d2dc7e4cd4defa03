"""Run the price stage as a process: the budget feed, the stage, and the librdkafka
consumer and producer around it (``spendstream worker`` starts it beside the faust
aggregator). Configured by a ``PriceStageConfig`` (configs.py), built by the caller."""

from __future__ import annotations

import logging
from functools import cache

from confluent_kafka import Consumer, Producer

from spendstream.kafka_config import METADATA_REFRESH
from spendstream.producer import producer_config
from spendstream.schemas.avro import ensure_registry
from spendstream.topics import price_group, seen_topic

from .budget_feed import BudgetFeed
from .compiled_pricing import CompiledPricer
from .configs import PriceStageConfig
from .dedupe import DedupeState
from .matching import BudgetRegistry
from .price_loop import PriceLoop, changelog_reader
from .price_stage import PriceRules, PriceStage
from .pricing import Catalog

log = logging.getLogger("spendstream.price")


def build_loop(config: PriceStageConfig) -> PriceLoop:
    kafka = config.kafka
    topics = kafka.topics
    registry = BudgetRegistry()
    feed = BudgetFeed(kafka, registry)
    feed.start()
    if not feed.ready.wait(120):
        raise RuntimeError(f"budgets topic {topics.budgets} not read within 120 s")
    log.info("price stage: %d budgets", len(registry))
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "logger": logging.getLogger("spendstream.kafka"),
            "group.id": price_group(kafka),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": config.session_timeout_s * 1000,
            "heartbeat.interval.ms": min(3000, config.session_timeout_s * 1000 // 3),
            "max.poll.interval.ms": 600_000,
            # the broker holds a fetch up to 20 ms for 1 MiB: at a paced 5,000 events/s a
            # fetch per few records cost the broker a third more CPU (measured)
            "fetch.wait.max.ms": 20,
            "fetch.min.bytes": 1 << 20,
            **METADATA_REFRESH,
            # asynchronous commits report here (served while consuming): a failed one is
            # made again by the loop
            "on_commit": lambda err, partitions: loop[0].committed(err, partitions),
        }
    )
    loop: list[PriceLoop] = []

    @cache
    def partitions(topic: str) -> int:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        if meta.error is not None or not meta.partitions:
            raise RuntimeError(f"topic {topic} is not available: {meta.error}")
        return len(meta.partitions)

    rules = PriceRules(
        registry,
        CompiledPricer(Catalog.for_settings(config.price_catalog)),
        max_skew=config.max_skew,
        unknown_price=config.unknown_price,
        late_periods=config.late_periods,
    )
    stage = PriceStage(
        rules,
        DedupeState(config.dedupe_window_s),
        priced_topic=topics.priced,
        allocations_topic=topics.allocations,
        dlq_topic=topics.dlq,
        changelog_topic=seen_topic(kafka),
        partitions=partitions,
    )
    # no compression: on one machine the broker and both ends pay for lz4 in CPU, and the
    # internal topics never leave it; measured (benchmarks/pipeline.py) faster without
    producer = Producer(producer_config(kafka, **{"linger.ms": 5, "compression.type": "none"}))
    loop.append(PriceLoop(
        stage,
        consumer,
        producer,
        sources=topics.sources,
        load_changelog=changelog_reader(
            kafka.bootstrap_servers, seen_topic(kafka), partitions(seen_topic(kafka))
        ),
        batch_size=config.batch_size,
        linger_s=config.linger_s,
        metrics_path=config.metrics_path,
    ))  # fmt: skip
    return loop[0]


def run_price_worker(config: PriceStageConfig) -> None:
    """The price stage's process: the registry its config names (configured once for the
    process: the CLI did, or this does), then the loop until stopped."""
    ensure_registry(config.schema_registry_url or None)
    build_loop(config).run()
