"""Producer SDK: publish usage events (and budgets) to Kafka, Avro-encoded, keyed by id.

Idempotence on and acks=all, so a retried send never lands twice; the murmur2 partitioner
matches the Java and aiokafka clients, so an event_id always lands on the same partition
whoever publishes it (the workers' dedupe relies on that). Delivery failures are surfaced,
and the publisher flushes on close and at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from spendstream.config import Settings, load_settings
from spendstream.errors import SpendstreamError
from spendstream.kafka_config import METADATA_REFRESH, KafkaTarget
from spendstream.schemas.avro import ensure_registry, framed_codec
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.fx import FxRate
from spendstream.schemas.models import AlertAction, UsageEvent


class PublishError(SpendstreamError, RuntimeError):
    pass


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def producer_config(settings: KafkaTarget, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        # librdkafka sends one partition's batch per produce request; at 5 ms a producer
        # of 5,000 events/s over 4 partitions made ~570 requests a second, and the broker's
        # CPU goes by requests more than by bytes (measured: 20 ms cut a co-located
        # broker's share by a third). Usage events are not waited on by their producer.
        "linger.ms": 20,
        "compression.type": "lz4",
        "message.timeout.ms": 120_000,
        **METADATA_REFRESH,
        # librdkafka's own log lines go through Python logging (quiet unless DEBUG)
        "logger": logging.getLogger("spendstream.kafka"),
    }
    conf.update(extra)
    return conf


def produce_waiting(producer: Producer, topic: str, key: bytes | None, value: bytes | None,
                    **kwargs: Any) -> None:  # fmt: skip
    """produce(), waiting for room while librdkafka's local queue is full (back-pressure
    instead of dropping or failing a record)."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


class UsagePublisher:
    """Publish usage events. Use as a context manager, or call close().

    The SDK's entry point: a program that only sets SPENDSTREAM_SCHEMA_REGISTRY_URL gets
    Confluent framing, because the first publisher of a process configures the registry
    (``ensure_registry``); it never switches a registry the process already uses."""

    def __init__(self, settings: Settings | None = None, **producer_conf: Any) -> None:
        self.settings = settings or load_settings()
        self.topics = self.settings.topics
        ensure_registry(self.settings.schema_registry_url or None)
        self._producer = Producer(producer_config(self.settings, **producer_conf))
        self._lock = threading.Lock()
        self.report = DeliveryReport()
        self._closed = False
        atexit.register(self.close)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            if err is None:
                self.report.sent += 1
            else:
                self.report.failed += 1
                if len(self.report.errors) < 100:
                    raw_key = msg.key()
                    key = raw_key.decode(errors="replace") if raw_key else "?"
                    self.report.errors.append(f"{key}: {err.str()}")

    def topic_for(self, event: UsageEvent) -> str:
        return self.topics.name(f"usage.{event.source}")

    def publish(self, event: UsageEvent, topic: str | None = None) -> None:
        """Queue one event (non-blocking apart from back-pressure on a full queue)."""
        topic = topic or self.topic_for(event)
        value = framed_codec("UsageEvent", topic).encode(event.to_avro())
        self._produce(topic, event.event_id.encode(), value)

    def publish_raw(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self._produce(topic, key, value)

    def _produce(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if self._closed:
            raise PublishError("the publisher is closed")
        try:
            produce_waiting(self._producer, topic, key, value, on_delivery=self._on_delivery)
        except KafkaException as exc:
            raise PublishError(f"cannot publish to {topic}: {exc}") from exc
        self._producer.poll(0)

    def publish_many(self, events: Iterable[UsageEvent]) -> DeliveryReport:
        for event in events:
            self.publish(event)
        self.flush()
        return self.report

    async def publish_async(self, event: UsageEvent, topic: str | None = None) -> None:
        """Publish from asyncio code and wait for the broker's acknowledgement."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            self._on_delivery(err, msg)
            if err is None:
                loop.call_soon_threadsafe(done.set_result, None)
            else:
                exc = PublishError(f"delivery failed for {event.event_id}: {err.str()}")
                loop.call_soon_threadsafe(done.set_exception, exc)

        topic = topic or self.topic_for(event)
        self._producer.produce(
            topic,
            value=framed_codec("UsageEvent", topic).encode(event.to_avro()),
            key=event.event_id.encode(),
            on_delivery=on_delivery,
        )
        while not done.done():
            self._producer.poll(0)
            await asyncio.sleep(0.005)
        await done

    def flush(self, timeout: float = 60) -> DeliveryReport:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise PublishError(
                f"{remaining} messages not delivered within {timeout:.0f}s; is Kafka reachable "
                f"at {self.settings.bootstrap_servers}?"
            )
        return self.report

    def close(self) -> None:
        """Flush what is queued and release the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        remaining = self._producer.flush(30)
        del self._producer  # free librdkafka's handle now, not at interpreter exit
        if remaining:
            raise PublishError(f"{remaining} messages were not delivered before close")

    def __enter__(self) -> UsagePublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish_records(
    settings: KafkaTarget,
    topic: str,
    records: Iterable[tuple[str, bytes | None]],
    what: str,
    headers: list[tuple[str, bytes]] | None = None,
) -> int:
    """Write keyed records (None = tombstone) to a topic, each with ``headers``, and wait
    until all are stored."""
    producer = Producer(producer_config(settings))
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(err.str())

    count = 0
    for key, value in records:
        extra: dict[str, Any] = {"headers": headers} if headers else {}
        producer.produce(topic, key=key.encode(), value=value, on_delivery=on_delivery, **extra)
        count += 1
    remaining = producer.flush(60)
    if remaining or failures:
        raise PublishError(f"{what} not stored ({remaining} undelivered): "
                           f"{'; '.join(failures[:3])}")  # fmt: skip
    return count


#: headers of every budgets-topic record a change writes: who (``actor``) and why
#: (``note``), UTF-8. A tombstone has no value, so its headers are the only place a
#: deletion's actor and note are kept (the budget history and the sink read them).
ACTOR_HEADER = "actor"
NOTE_HEADER = "note"


def change_headers(actor: str | None, note: str | None) -> list[tuple[str, bytes]]:
    """The ``actor`` and ``note`` headers of a change (those that are set)."""
    pairs = ((ACTOR_HEADER, actor), (NOTE_HEADER, note))
    return [(name, text.encode()) for name, text in pairs if text]


def publish_budgets(
    settings: KafkaTarget,
    budgets: Iterable[BudgetDefinition],
    delete: Iterable[str] = (),
    *,
    actor: str | None = None,
    note: str | None = None,
) -> int:
    """Write definitions (and tombstones for deletions) to the compacted budgets topic.

    ``actor`` and ``note`` stamp every definition written (``note`` only when given: a
    definition may carry its own) and go as headers on every record, tombstones
    included. Framed as the process's registry says (configured at its edge)."""
    topic = settings.topics.budgets
    codec = framed_codec("BudgetDefinition", topic)
    stamp: dict[str, Any] = {"actor": actor} if actor else {}
    if note:
        stamp["note"] = note
    stamped = [b.model_copy(update=stamp) if stamp else b for b in budgets]
    records: list[tuple[str, bytes | None]] = [
        (b.budget_id, codec.encode(b.to_avro())) for b in stamped
    ]
    records += [(budget_id, None) for budget_id in delete]
    return publish_records(settings, topic, records, "budgets", change_headers(actor, note))


def publish_alert_action(settings: KafkaTarget, action: AlertAction) -> None:
    """Record an acknowledgement or resolution on the compacted alert-actions topic."""
    topic = settings.topics.alert_actions
    value = framed_codec("AlertAction", topic).encode(action.to_avro())
    publish_records(settings, topic, [(action.alert_id, value)], "alert action")


def publish_rates(settings: KafkaTarget, rates: Iterable[FxRate]) -> int:
    """Write reference exchange rates to the compacted fx-rates topic (key base/quote/day:
    a later record corrects a rate)."""
    topic = settings.topics.fx_rates
    encode = framed_codec("FxRate", topic).encode
    return publish_records(settings, topic, ((r.key, encode(r.to_avro())) for r in rates),
                           "exchange rates")  # fmt: skip
