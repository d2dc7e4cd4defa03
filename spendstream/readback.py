"""Read whole topics back (budget status, alerts) for the CLI, the demo and tests."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from spendstream.config import Settings
from spendstream.schemas.avro import codec
from spendstream.schemas.models import BudgetAlert, BudgetStatus

T = TypeVar("T")
#: records read back from the end of each partition to find the newest one
TAIL_RECORDS = 16


def _reader(settings: Settings) -> Consumer:
    """A consumer that reads assigned partitions to their end (no group membership)."""
    return Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "logger": logging.getLogger("spendstream.kafka"),
            "group.id": "spendstream-readback",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 20,  # read to the end, then stop: no long empty fetches
        }
    )


def read_topic(
    settings: Settings, topic: str, decode: Callable[[bytes], T], timeout: float = 30
) -> list[tuple[bytes | None, T]]:
    """Every record of ``topic`` from the beginning to the current end, decoded."""
    consumer = _reader(settings)
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return []
        parts = list(meta.topics[topic].partitions)
        pending = set()
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                pending.add(p)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[tuple[bytes | None, T]] = []
        while pending:
            msg = consumer.poll(timeout)
            if msg is None:
                break
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                continue
            value = msg.value()
            if value is not None:
                out.append((msg.key(), decode(value)))
        return out
    finally:
        consumer.close()


def read_newest(
    settings: Settings, topic: str, decode: Callable[[bytes], T], timeout: float = 10
) -> T | None:
    """The newest record of ``topic`` (latest record timestamp over all partitions),
    reading only the last few records of each partition, not the whole topic. Records
    that do not decode are passed over. None when the topic is empty or missing."""
    consumer = _reader(settings)
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return None
        starts = []
        for p in meta.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:  # a few back: the last offsets may be transaction markers
                starts.append(TopicPartition(topic, p, max(low, high - TAIL_RECORDS)))
        pending = {tp.partition for tp in starts}
        consumer.assign(starts)
        newest: tuple[int, T] | None = None
        while pending:
            msg = consumer.poll(timeout)
            if msg is None:
                break
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                continue
            value = msg.value()
            if value is None:
                continue
            try:
                decoded = decode(value)
            except Exception:  # a foreign or corrupt record: not the answer
                continue
            stamp = msg.timestamp()[1]
            if newest is None or stamp >= newest[0]:
                newest = (stamp, decoded)
        return newest[1] if newest else None
    finally:
        consumer.close()


def newer_status(old: BudgetStatus | None, new: BudgetStatus) -> bool:
    """Whether ``new`` supersedes ``old`` for the same budget and period. Spend only grows,
    so the status that counted more events is the newer one: a worker that lost the
    partition can still publish its last status after the new owner's (a rebalance race),
    and must not roll the figure back."""
    return old is None or (new.event_count, new.spent) >= (old.event_count, old.spent)


def read_statuses(settings: Settings) -> list[BudgetStatus]:
    """Latest status per budget and period (the most advanced record of each key)."""
    latest: dict[bytes | None, BudgetStatus] = {}
    for key, status in read_topic(
        settings,
        settings.topics.status,
        lambda v: BudgetStatus.from_avro(codec("BudgetStatus").decode(v)),
    ):
        if newer_status(latest.get(key), status):
            latest[key] = status
    return list(latest.values())


def decode_alert(value: bytes) -> BudgetAlert:
    return BudgetAlert.from_avro(codec("BudgetAlert").decode(value))


def read_alerts(settings: Settings) -> list[BudgetAlert]:
    return [alert for _, alert in read_topic(settings, settings.topics.alerts, decode_alert)]
