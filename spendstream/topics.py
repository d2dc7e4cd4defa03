"""Topic creation with the right settings (compaction where the latest value is the truth)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from spendstream.config import Settings
from spendstream.errors import SpendstreamError
from spendstream.kafka_config import KafkaTarget


class TopicsError(SpendstreamError, RuntimeError):
    pass


def wait_for_broker(bootstrap: str, timeout: float = 60) -> None:
    """Block until the cluster answers metadata requests, or fail with what to do."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    reason = "no answer"
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=min(5.0, max(deadline - time.monotonic(), 0.5)))
            return
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            reason = error.str() if isinstance(error, KafkaError) else str(exc)
            time.sleep(0.5)
    raise TopicsError(
        f"Kafka at {bootstrap} did not answer within {timeout:g}s ({reason}): is the broker "
        "running? Start the local one with `spendstream kafka start`, or set "
        "SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS to your cluster."
    )


def ensure_topics(settings: Settings, timeout: float = 30) -> list[str]:
    """Create every missing topic, the workers' internal ones included; returns the names
    created. Existing topics are kept."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    wanted = {**settings.topics.all_topics(), **worker_topics(settings)}
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [
        NewTopic(name, settings.topic_partitions, settings.topic_replication, config=config)
        for name, config in wanted.items()
        if name not in existing
    ]
    if not new:
        return []
    created = []
    for name, future in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicsError(f"cannot create topic {name}: {exc.args[0].str()}") from None
    # Wait until the new topics' metadata is visible so producers do not race them.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout).topics
        if all(n in topics and not topics[n].error for n in created):
            break
        time.sleep(0.2)
    return sorted(created)


def worker_group(settings: KafkaTarget) -> str:
    """The consumer group of the aggregating workers (faust's app id, prefixed like the
    topics); it consumes cost-allocations."""
    return f"{settings.topic_prefix}{settings.app_id}"


def price_group(settings: KafkaTarget) -> str:
    """The consumer group of the workers' price stage; it consumes the raw usage topics."""
    return f"{worker_group(settings)}-price"


def seen_topic(settings: KafkaTarget) -> str:
    """The price stage's dedupe changelog (SeenEvents records)."""
    return f"{worker_group(settings)}-seen-events"


def spend_changelog(settings: Settings) -> str:
    """faust's changelog of the spend table ("<app id>-<table>-changelog")."""
    return f"{worker_group(settings)}-budget-spend-changelog"


def worker_topics(settings: Settings) -> dict[str, dict[str, str]]:
    """The workers' internal topics, created with the others before any worker starts:
    faust declaring its changelog itself raced the first table write (PartitionsMismatch,
    "changelog topic has 0 partitions") on a fresh broker."""
    keep_ms = max(2 * settings.dedupe_window_s * 1000, 3_600_000)
    return {
        seen_topic(settings): {"cleanup.policy": "delete", "retention.ms": str(keep_ms)},
        spend_changelog(settings): {"cleanup.policy": "compact"},
    }


def worker_lags(settings: Settings) -> dict[str, int | None]:
    """Uncommitted input of the workers per topic: raw usage by the price stage's group,
    allocations by the aggregating group."""
    t = settings.topics
    return {**topic_lags(settings, price_group(settings), t.sources),
            **topic_lags(settings, worker_group(settings), [t.allocations])}  # fmt: skip


def sink_group(settings: Settings) -> str:
    """The consumer group of the sink."""
    return f"{settings.topic_prefix}{settings.sink_group}"


def notify_group(settings: Settings) -> str:
    """The consumer group of `spendstream notify` (reads budget-alerts)."""
    return f"{settings.topic_prefix}{settings.notify_group}"


def worker_inputs(settings: Settings) -> list[str]:
    """Topics the worker group consumes and commits: raw usage and the allocations."""
    t = settings.topics
    return [*t.sources, t.allocations]


def group_lag(settings: Settings, group: str, topics: Iterable[str]) -> int:
    """Records of ``topics`` the consumer ``group`` has not committed yet (all partitions)."""
    return sum(partition_lags(settings, group, topics).values())


def partition_lags(settings: Settings, group: str, topics: Iterable[str]) -> dict[str, int]:
    """Uncommitted records of ``group`` per "topic:partition" of ``topics``.

    Committed offsets come from a consumer of that group that never subscribes (so it
    does not join or disturb the group): librdkafka's admin ListConsumerGroupOffsets
    crashed the process under load here (a NULL group handle in its response path)."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group,
                         "enable.auto.commit": False, "log_level": 0})  # fmt: skip
    try:
        parts = [TopicPartition(t, p) for t in topics
                 for p in consumer.list_topics(t, timeout=30).topics[t].partitions]  # fmt: skip
        if not parts:  # none of the topics exists (yet)
            return {}
        for attempt in range(20):  # a new group's coordinator may still be loading
            try:
                committed = consumer.committed(parts, timeout=30)
                break
            except KafkaException:
                if attempt == 19:
                    raise
                time.sleep(0.5)
        lags = {}
        for tp in committed:
            low, high = watermarks(consumer, tp, timeout=30)
            lags[f"{tp.topic}:{tp.partition}"] = high - (tp.offset if tp.offset >= 0 else low)
        return lags
    finally:
        consumer.close()


_LEADER_MOVING = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE}


def watermarks(consumer: Consumer, tp: TopicPartition, timeout: float = 10) -> tuple[int, int]:
    """Low and high offsets, retrying while a partition's leader is not known or moving
    ("Not leader for partition" right after a topic is created or the broker restarted)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            transient = isinstance(error, KafkaError) and (
                error.retriable() or error.code() in _LEADER_MOVING
            )
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def topic_lags(settings: Settings, group: str, topics: Iterable[str]) -> dict[str, int | None]:
    """Uncommitted records of ``group`` per topic (all partitions summed); None for a topic
    that does not exist. A group that never committed lags by the whole topic."""
    names = list(topics)
    lags: dict[str, int | None] = dict.fromkeys(names)
    for key, lag in partition_lags(settings, group, names).items():
        topic = key.rsplit(":", 1)[0]
        lags[topic] = (lags[topic] or 0) + lag
    return lags


def pipeline_lags(settings: Settings) -> dict[str, int]:
    """Uncommitted input of the workers (usage and allocations) and of the sink."""
    t = settings.topics
    return {
        "worker": sum(v or 0 for v in worker_lags(settings).values()),
        "sink": group_lag(settings, sink_group(settings),
                          [t.priced, t.allocations, t.alerts, t.dlq]),
    }  # fmt: skip


def committed_or_start(settings: KafkaTarget, group: str, topic: str, partition: int) -> int:
    """Where ``group`` resumes ``topic``/``partition``: its committed offset, or the start
    of the log when it never committed (the workers read from the earliest record)."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group,
                         "enable.auto.commit": False, "log_level": 0})  # fmt: skip
    try:
        tp = consumer.committed([TopicPartition(topic, partition)], timeout=30)[0]
        if tp.offset >= 0:
            return int(tp.offset)
        low, _ = watermarks(consumer, TopicPartition(topic, partition), timeout=30)
        return int(low)
    finally:
        consumer.close()


def has_records(settings: KafkaTarget, topic: str, partition: int, start: int, end: int) -> bool:
    """Whether a record sits at an offset in [start, end). False only when the first record
    read from ``start`` lies at or beyond ``end`` (the offsets before it are transaction
    markers, aborted or compacted records: a consumer never receives them); anything
    less certain (end of log, no answer) counts as True, so the caller reads again."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers,
                         "group.id": "spendstream-offset-probe", "enable.auto.commit": False,
                         "isolation.level": "read_uncommitted", "log_level": 0})  # fmt: skip
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            offset = msg.offset()
            return offset is None or offset < end
        return True
    finally:
        consumer.close()
