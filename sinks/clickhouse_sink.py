"""Kafka -> ClickHouse sink: batched columnar inserts, offsets committed after the write.

Exactly-once effect without transactions:
  * each insert carries a deduplication token made of topic, partition and offset range,
    and the tables keep a deduplication window, so a retried insert is dropped by ClickHouse;
  * every row stores its source position (_topic, _partition, _offset); on partition
    assignment the sink reads the highest stored offset and skips what is already there,
    so a crash after the insert and before the commit adds nothing on restart;
  * ReplacingMergeTree on a stable id is the backstop.
While ClickHouse is unreachable the sink pauses its partitions and retries with backoff:
memory stays bounded by one batch per partition.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from spendstream.config import Settings
from spendstream.schemas.avro import configure_registry, framed_codec
from spendstream.schemas.models import DeadLetter, SourcePosition

from .rows import TABLES
from .warehouse import connect, migrate

log = logging.getLogger("spendstream.sink")


class SinkStopped(Exception):
    """Stop requested while a batch could not be written; nothing was committed for it."""


@dataclass
class PartitionBuffer:
    table: str
    rows: list[list[Any]] = field(default_factory=list)
    first_offset: int = -1
    last_offset: int = -1
    started: float = 0.0


@dataclass
class SinkStats:
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped_replays: int = 0
    poison: int = 0
    insert_failures: int = 0
    batches: int = 0


class ClickHouseSink:
    def __init__(
        self,
        settings: Settings,
        client: Client | None = None,
        *,
        client_factory: Callable[[], Client] | None = None,
        client_lock: threading.Lock | None = None,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        configure_registry(settings.schema_registry_url or None)
        self.topic_table = {
            self.topics.priced: "priced_usage",
            self.topics.allocations: "cost_allocations",
            self.topics.alerts: "budget_alerts",
            self.topics.budgets: "budgets",
            self.topics.dlq: "dead_letters",
        }
        self._client_factory = client_factory or (lambda: connect(settings))
        self.client = client or self._client_factory()
        self.lock = client_lock or threading.Lock()
        with self.lock:
            migrate(self.client)
        self.stats = SinkStats()
        self.buffers: dict[tuple[str, int], PartitionBuffer] = {}
        self.stored: dict[tuple[str, int], int] = {}
        self._stop = threading.Event()
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": f"{settings.topic_prefix}{settings.sink_group}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "max.poll.interval.ms": 600_000,
                "queued.max.messages.kbytes": 65536,
            }
        )
        self.dlq = Producer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
            }
        )

    # --- lifecycle ---------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, *, idle_exit_s: float | None = None) -> SinkStats:
        """Consume until stopped (or idle for ``idle_exit_s``, for tests and the demo)."""
        self.consumer.subscribe(
            list(self.topic_table), on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        last_data = time.monotonic()
        try:
            while not self._stop.is_set():
                messages = self.consumer.consume(
                    num_messages=min(self.settings.sink_batch_rows, 10_000), timeout=0.2
                )
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("kafka: %s", err)
                        continue
                    self._add(msg)
                    last_data = time.monotonic()
                self._flush_due()
                if idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
                    break
            self._flush_all()
        except SinkStopped as exc:
            log.warning("%s; uncommitted records will be written by the next run", exc)
        finally:
            self.consumer.close()
            self.dlq.flush(30)
        return self.stats

    # --- partition assignment ----------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            table = self.topic_table[tp.topic]
            with self.lock:
                result = self.client.query(
                    f"SELECT max(_offset), count() FROM {table} "
                    "WHERE _topic = {t:String} AND _partition = {p:Int32}",
                    parameters={"t": tp.topic, "p": tp.partition},
                )
            max_offset, count = result.result_rows[0]
            self.stored[(tp.topic, tp.partition)] = int(max_offset) if count else -1

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._flush_all()
        for tp in partitions:
            self.stored.pop((tp.topic, tp.partition), None)

    # --- buffering ---------------------------------------------------------------------
    def _add(self, msg: Any) -> None:
        tp = (msg.topic(), msg.partition())
        offset = msg.offset()
        if offset <= self.stored.get(tp, -1):
            self.stats.skipped_replays += 1
            return
        table = self.topic_table[msg.topic()]
        builder = TABLES[table][1]
        try:
            row = builder(msg.value(), (msg.topic(), msg.partition(), offset), msg.key())
        except Exception as exc:  # poison record: park it in the DLQ, never stop
            self._poison(msg, exc)
            row = None
        buf = self.buffers.get(tp)
        if buf is None:
            buf = self.buffers[tp] = PartitionBuffer(table=table, started=time.monotonic())
        if buf.first_offset < 0:
            buf.first_offset = offset
            buf.started = time.monotonic()
        buf.last_offset = offset
        if row is not None:
            buf.rows.append(row)
        if len(buf.rows) >= self.settings.sink_batch_rows:
            self._flush(tp, buf)

    def _poison(self, msg: Any, exc: Exception) -> None:
        self.stats.poison += 1
        if msg.topic() == self.topics.dlq:
            log.error("undecodable DLQ record at %s:%s:%s dropped from ClickHouse: %s",
                      msg.topic(), msg.partition(), msg.offset(), exc)  # fmt: skip
            return
        dead = DeadLetter(
            reason=f"sink could not decode {msg.topic()} record: {exc}",
            error_code="sink_decode",
            origin=SourcePosition(
                topic=msg.topic(), partition=msg.partition(), offset=msg.offset()
            ),
            key=msg.key(),
            value=msg.value(),
            rejected_at=datetime.now(UTC),
        )
        self.dlq.produce(self.topics.dlq, key=msg.key(),
                         value=framed_codec("DeadLetter", self.topics.dlq).encode(dead.to_avro()))  # fmt: skip
        self.dlq.flush(30)

    def _flush_due(self) -> None:
        linger = self.settings.sink_linger_ms / 1000
        now = time.monotonic()
        for tp, buf in list(self.buffers.items()):
            if buf.first_offset >= 0 and now - buf.started >= linger:
                self._flush(tp, buf)

    def _flush_all(self) -> None:
        for tp, buf in list(self.buffers.items()):
            if buf.first_offset >= 0:
                self._flush(tp, buf)

    def _flush(self, tp: tuple[str, int], buf: PartitionBuffer) -> None:
        if buf.rows:
            columns = TABLES[buf.table][0]
            token = f"{tp[0]}:{tp[1]}:{buf.first_offset}-{buf.last_offset}"
            self._insert_with_retry(buf.table, buf.rows, columns, token)
            self.stats.rows[buf.table] += len(buf.rows)
            self.stats.batches += 1
        self._commit(tp, buf.last_offset + 1)
        self.stored[tp] = buf.last_offset
        buf.rows = []
        buf.first_offset = buf.last_offset = -1

    def _insert_with_retry(
        self, table: str, rows: list[list[Any]], columns: list[str], token: str
    ) -> None:
        delay = 0.5
        paused = False
        while True:
            try:
                with self.lock:
                    self.client.insert(
                        table, rows, column_names=columns,
                        settings={
                            "insert_deduplication_token": token,
                            "deduplicate_blocks_in_dependent_materialized_views": 1,
                        },
                    )  # fmt: skip
                break
            except Exception as exc:
                self.stats.insert_failures += 1
                log.warning("insert into %s failed (%s); retrying in %.1fs", table, exc, delay)
                if not paused:
                    assignment = self.consumer.assignment()
                    if assignment:
                        self.consumer.pause(assignment)
                    paused = True
                end = time.monotonic() + delay
                while time.monotonic() < end:
                    self.consumer.poll(0.1)  # keep group membership; paused => no records
                delay = min(delay * 2, 30.0)
                if self._stop.is_set():
                    # Leave without committing: the batch is replayed by the next run.
                    raise SinkStopped(f"stopped while {table} was unreachable") from exc
        if paused:
            assignment = self.consumer.assignment()
            if assignment:
                self.consumer.resume(assignment)

    def _commit(self, tp: tuple[str, int], next_offset: int) -> None:
        try:
            self.consumer.commit(
                offsets=[TopicPartition(tp[0], tp[1], next_offset)], asynchronous=False
            )
        except Exception as exc:  # the stored-offset watermark keeps this safe
            log.warning("offset commit for %s:%s failed: %s", tp[0], tp[1], exc)
