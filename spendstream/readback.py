"""Read whole topics back (budget status, alerts) for the CLI, the demo and tests."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from spendstream.config import Settings
from spendstream.kafka_config import KafkaTarget
from spendstream.schemas.avro import codec
from spendstream.schemas.models import BudgetAlert, BudgetStatus
from spendstream.topics import watermarks

T = TypeVar("T")
#: records read back from the end of each partition to find the newest one
TAIL_RECORDS = 16


def _reader(settings: KafkaTarget, fetch_wait_ms: int = 20) -> Consumer:
    """A consumer that reads assigned partitions to their end (no group membership)."""
    return Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "logger": logging.getLogger("spendstream.kafka"),
            "group.id": "spendstream-readback",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": fetch_wait_ms,  # read to the end, then stop: no long waits
        }
    )


def read_topic(
    settings: KafkaTarget, topic: str, decode: Callable[[bytes], T], timeout: float = 30
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
            low, high = watermarks(consumer, TopicPartition(topic, p), timeout)
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


@dataclass(frozen=True)
class RawRecord:
    """A record as it is on the topic: tombstones (value None) and headers included."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp_ms: int | None
    partition: int
    offset: int


def read_records(
    settings: Settings, topic: str, *, key: bytes | None = None, timeout: float = 30
) -> list[RawRecord]:
    """Every record of ``topic`` (only those with ``key``, when given) from the beginning
    to the end it had when the read started, undecoded, in offset order per partition.
    A missing topic has none; a broker that does not answer raises TopicsError."""
    from spendstream.topics import TopicsError

    consumer = _reader(settings)
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout)
            info = meta.topics.get(topic)
            if info is None or info.error is not None:
                return []
            ends: dict[int, int] = {}
            for p in info.partitions:
                low, high = watermarks(consumer, TopicPartition(topic, p), timeout)
                if high > low:
                    ends[p] = high
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            reason = error.str() if isinstance(error, KafkaError) else str(exc)
            raise TopicsError(f"cannot read topic {topic}: {reason}") from None
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        pending = set(ends)
        out: list[RawRecord] = []
        while pending:
            msg = consumer.poll(timeout)
            if msg is None:
                raise TopicsError(f"cannot read topic {topic}: no answer within {timeout:.0f} s")
            err = msg.error()
            p, offset = msg.partition(), msg.offset()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(p)
                elif err.fatal():
                    raise TopicsError(f"cannot read topic {topic}: {err.str()}")
                continue
            if p is None or offset is None or p not in pending or offset >= ends[p]:
                continue
            if offset >= ends[p] - 1:
                pending.discard(p)
            if key is None or msg.key() == key:
                stamp = msg.timestamp()[1]
                headers = [(k, v.encode() if isinstance(v, str) else v)
                           for k, v in cast(list[tuple[str, Any]], msg.headers() or [])]  # fmt: skip
                out.append(RawRecord(msg.key(), msg.value(), headers,
                                     stamp if stamp >= 0 else None, p, offset))  # fmt: skip
        return out
    finally:
        consumer.close()


@dataclass(frozen=True)
class BadRecord:
    """A record :func:`tail_topic` could not decode (foreign or corrupt): reported, not fatal."""

    partition: int
    offset: int
    error: str


#: errors of a partition whose leader is not known yet or moving: worth asking again
def tail_topic(
    settings: Settings,
    topic: str,
    decode: Callable[[bytes], T],
    *,
    follow: bool,
    last: int | None,
    stop: Callable[[], bool] | None = None,
    poll_s: float = 0.5,
    idle_timeout: float = 30,
) -> Generator[T | BadRecord, None, None]:
    """Decoded records of every partition of ``topic`` in arrival order, like ``tail -f``.

    Starts at the beginning, or ``last`` records before the end of each partition. Without
    ``follow`` it ends once every partition reached the end it had when the tail started
    (or nothing arrived for ``idle_timeout`` seconds); with ``follow`` it keeps polling until
    ``stop()`` says so or Ctrl-C (partitions added later are not picked up). A record that
    does not decode comes out as a :class:`BadRecord`. A missing topic raises TopicsError."""
    from spendstream.topics import TopicsError

    # following waits at the broker for new records instead of asking 50 times a second
    consumer = _reader(settings, fetch_wait_ms=500 if follow else 20)
    try:
        try:
            meta = consumer.list_topics(topic, timeout=10)
            info = meta.topics.get(topic)
            if info is None or info.error is not None:
                raise TopicsError(
                    f"topic {topic} does not exist: start the worker (`spendstream worker`) or "
                    "create the topics (`spendstream topics create`)"
                )
            assign, ends, pending = [], {}, set()
            for p in sorted(info.partitions):
                low, high = watermarks(consumer, TopicPartition(topic, p))
                start = low if last is None else max(low, high - last)
                # from the beginning by name: retention may have moved ``low`` meanwhile
                assign.append(TopicPartition(topic, p, OFFSET_BEGINNING if last is None else start))
                ends[p] = high
                if high > start:
                    pending.add(p)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            reason = error.str() if isinstance(error, KafkaError) else str(exc)
            raise TopicsError(f"cannot read topic {topic}: {reason}") from None
        consumer.assign(assign)
        quiet_since = time.monotonic()
        while follow or pending:
            if stop is not None and stop():
                return
            msg = consumer.poll(poll_s)
            if msg is None:
                if not follow and time.monotonic() - quiet_since > idle_timeout:
                    return
                continue
            p, offset = msg.partition(), msg.offset()
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(p)
                    quiet_since = time.monotonic()
                elif err.fatal():
                    raise TopicsError(f"cannot read topic {topic}: {err.str()}")
                continue
            quiet_since = time.monotonic()
            if p is None or offset is None:  # only error events lack them
                continue
            if not follow and (p not in pending or offset >= ends[p]):
                continue  # arrived after the tail started: not part of this read
            if offset >= ends[p] - 1:
                pending.discard(p)
            value = msg.value()
            if value is None:
                continue
            try:
                record: T | BadRecord = decode(value)
            except Exception as exc:  # a foreign or corrupt record: report it and go on
                record = BadRecord(p, offset, f"{type(exc).__name__}: {exc}")
            yield record
    except KeyboardInterrupt:  # how a follow is meant to end
        return
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
            low, high = watermarks(consumer, TopicPartition(topic, p), timeout)
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
