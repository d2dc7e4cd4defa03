"""Kafka -> ClickHouse sink: batched columnar inserts, offsets committed after the write.

Exactly-once effect without transactions:
  * each insert carries a deduplication token made of topic, partition and offset range,
    and the tables keep a deduplication window, so a retried insert is dropped by ClickHouse;
  * every row stores its source position (_topic, _partition, _offset); on partition
    assignment the sink reads the highest stored offset and skips what is already there,
    so a crash after the insert and before the commit adds nothing on restart;
  * a worker that crashes or loses a partition replays its uncommitted input and publishes
    those outputs again, as new Kafka records; each carries its input position in an
    ``origin`` header, and the sink skips an output whose input position is at or below
    the highest one stored for that input partition (and budget, for allocations): each
    worker emits those in input order, and a batch's outputs are in Kafka before its input
    offsets commit, so anything at or below the watermark is a replay of a stored row
    (migration 0005 keeps the watermarks in ClickHouse for restarts);
  * ReplacingMergeTree on a stable id is the backstop.
Cost allocations, the bulk of the rows, are not decoded here at all: their Avro bodies go to
ClickHouse as one Avro container per batch (native_ingest.py); a batch ClickHouse refuses
as data is decoded row by row instead, which isolates the poison records.
While ClickHouse is unreachable the sink pauses its partitions and retries with backoff:
memory stays bounded by one batch per partition.

This module is the consume/commit loop; ``ClickHouseWriter`` (writer.py) writes a batch,
``sinks/tables.py`` says which topic fills which table. ``ClickHouseSink.from_settings``
builds the Kafka clients, runs the migrations and checks the tables; the constructor only
takes what it is given, so a test drives the loop with a fake consumer and client.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from confluent_kafka import KafkaError, TopicPartition

from spendstream.config import Settings
from spendstream.errors import SpendstreamError
from spendstream.kafka_config import METADATA_REFRESH
from spendstream.loop_watch import LoopWatch
from spendstream.metrics import SECONDS_BUCKETS, Histogram, Lags, consumer_lags
from spendstream.schemas import batches
from spendstream.schemas.avro import codec, framed_codec
from spendstream.schemas.models import DeadLetter, SourcePosition

from .config import SinkConfig
from .health import WriterHealth
from .native_ingest import NativeBatch, json_position, position_prefix
from .tables import SinkRecord, SinkTable
from .writer import ClickHouseWriter, InsertClient, WriteBatch, WriterStats

log = logging.getLogger("spendstream.sink")


class SinkStopped(SpendstreamError):
    """Stop requested while a batch could not be written; nothing was committed for it."""


class SinkConsumer(Protocol):
    """The part of a confluent-kafka ``Consumer`` the loop uses (a test passes a fake)."""

    def subscribe(self, topics: list[str], on_assign: Any = ..., on_revoke: Any = ...) -> None: ...
    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Any]: ...
    def commit(self, offsets: list[TopicPartition], asynchronous: bool = ...) -> Any: ...
    def assignment(self) -> list[TopicPartition]: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
    def poll(self, timeout: float = ...) -> Any: ...
    def close(self) -> None: ...


class DlqProducer(Protocol):
    def produce(self, topic: str, value: bytes | None = ..., key: bytes | None = ...) -> None: ...
    def flush(self, timeout: float = ...) -> int: ...


@dataclass
class PartitionBuffer:
    table: SinkTable
    batch: WriteBatch
    #: rows of each buffered record (SinkStats.rows counts rows, not records)
    row_counts: list[int] = field(default_factory=list)
    first_offset: int = -1
    last_offset: int = -1
    started: float = 0.0
    #: bytes of the buffered records (a batch record holds many rows: the record count
    #: alone does not bound memory)
    size: int = 0


@dataclass
class SinkStats(WriterStats):
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped_replays: int = 0
    #: outputs of a replayed input (worker crash or rebalance) already stored
    skipped_origin_replays: int = 0
    poison: int = 0
    #: batch records partly replayed (stored without the outputs already stored)
    partial_origin_replays: int = 0
    batches: int = 0
    max_buffered_rows: int = 0
    #: monotonic time the first record arrived (benchmarks time from here, not from join)
    first_record_at: float | None = None
    last_commit_at: float = 0.0
    #: table -> seconds to write one batch into it (retries included), one per batch
    insert_seconds: dict[str, Histogram] = field(default_factory=dict)


def consumer_config(config: SinkConfig) -> dict[str, Any]:
    """The sink's Kafka consumer settings. Heartbeats come from librdkafka's own thread, so
    a long insert does not end the session (``max.poll.interval.ms`` bounds that); only a
    dead sink does, after ``session_timeout_s``."""
    session_ms = config.session_timeout_s * 1000
    return {
        "bootstrap.servers": config.bootstrap_servers, "group.id": config.group,
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "max.poll.interval.ms": 600_000, "queued.max.messages.kbytes": 65536,
        "session.timeout.ms": session_ms, "heartbeat.interval.ms": min(3000, session_ms // 3),
        **METADATA_REFRESH,
    }  # fmt: skip


class ClickHouseSink:
    """The consume/commit loop: buffers each partition's records, has the writer store a
    batch, dead-letters what it refuses, then commits (``_flush``: the order, and what a
    crash after each step causes)."""

    def __init__(
        self,
        config: SinkConfig,
        client: InsertClient,
        consumer: SinkConsumer,
        dlq: DlqProducer,
        tables: Mapping[str, SinkTable],
        *,
        client_lock: threading.Lock | None = None,
    ) -> None:
        """``tables``: consumed topic -> table, as ``tables.check_tables`` returns it."""
        self.config = config
        self.tables = dict(tables)
        #: topic -> table name (metrics list every table)
        self.topic_table = {topic: t.name for topic, t in self.tables.items()}
        self.stats = SinkStats()
        self.health = WriterHealth()
        self.writer = ClickHouseWriter(
            client, lock=client_lock, health=self.health, stats=self.stats,
            retry_initial_s=config.retry_initial_s, retry_max_s=config.retry_max_s,
            wait=self._wait_paused, recovered=self._resume,
        )  # fmt: skip
        self.client = client
        self.consumer = consumer
        self.dlq = dlq
        self.buffers: dict[tuple[str, int], PartitionBuffer] = {}
        self.stored: dict[tuple[str, int], int] = {}
        #: (topic, partition) -> {(origin topic, origin partition): highest offset stored}
        self.origin_marks: dict[tuple[str, int], dict[tuple[str, int], int]] = {}
        self._buffered = 0
        self._paused = False
        self._assigned_at: float | None = None
        #: partitions assigned now, and each one's lag as last sampled (metrics, readiness)
        self.assigned: set[tuple[str, int]] = set()
        self.lags: Lags = {}
        self._lags_at = 0.0
        #: the consume loop's stall watch (run starts it)
        self._watch: LoopWatch | None = None
        self._stop = threading.Event()
        self.consumer_group = config.group

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        client: Any = None,
        *,
        client_lock: threading.Lock | None = None,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        registry: Mapping[str, SinkTable] | None = None,
        migrations: Iterable[tuple[str, str]] | None = None,
    ) -> ClickHouseSink:
        """The sink as a service runs it: the schema-registry framing configured, ClickHouse
        connected and migrated, the tables checked against the migrations and the consumed
        topics (``SinkTableError`` naming what is missing), the Kafka clients built."""
        from confluent_kafka import Consumer, Producer

        from spendstream.schemas.avro import configure_registry

        from .tables import check_tables
        from .warehouse import connect, migrate
        from .warehouse import migrations as all_migrations

        config = SinkConfig.from_settings(settings, retry_initial_s=retry_initial_s,
                                          retry_max_s=retry_max_s)  # fmt: skip
        steps = list(all_migrations() if migrations is None else migrations)
        tables = check_tables(config.topics, config.names, steps, registry)
        configure_registry(settings.schema_registry_url or None)
        ch: Any = client or connect(settings)  # a clickhouse-connect Client (or a wrapper)
        lock = client_lock or threading.Lock()
        with lock:
            migrate(ch, steps)
        logger = logging.getLogger("spendstream.kafka")
        consumer = Consumer({"logger": logger, **consumer_config(config)})
        dlq = Producer({"bootstrap.servers": config.bootstrap_servers, "logger": logger,
                        "enable.idempotence": True, "acks": "all"})  # fmt: skip
        return cls(config, ch, cast(SinkConsumer, consumer), dlq, tables, client_lock=lock)

    # --- lifecycle ---------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, *, idle_exit_s: float | None = None) -> SinkStats:
        """Consume until stopped (or idle for ``idle_exit_s``, for tests and the demo)."""
        self.consumer.subscribe(
            list(self.tables), on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        last_data = time.monotonic()
        watch = self._watch = LoopWatch("sink").start()
        try:
            while not self._stop.is_set():
                watch.beat()
                messages = self.consumer.consume(
                    num_messages=min(self.config.batch_rows, 10_000), timeout=self._wait_s()
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
                self._sample_lags()
                if (
                    idle_exit_s is not None
                    and self._assigned_at is not None  # idle only counts once we own partitions
                    and time.monotonic() - max(last_data, self._assigned_at) > idle_exit_s
                ):
                    break
            self._flush_all()
        except SinkStopped as exc:
            log.warning("%s; uncommitted records will be written by the next run", exc)
        finally:
            watch.stop()
            self.consumer.close()
            self.dlq.flush(30)
        return self.stats

    def _sample_lags(self) -> None:
        """Lag per assigned partition for /metrics, at most once a second (local values of
        librdkafka: no broker round trip)."""
        now = time.monotonic()
        if now - self._lags_at >= 1.0:
            self._lags_at = now
            self.lags = consumer_lags(self.consumer)

    # --- partition assignment ----------------------------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._assigned_at = time.monotonic()
        self.assigned.update((tp.topic, tp.partition) for tp in partitions)
        for tp in partitions:
            table = self.tables[tp.topic]
            key = (tp.topic, tp.partition)
            self.stored[key] = self.writer.stored_offset(table.name, tp.topic, tp.partition)
            if table.origin_scoped:
                self.origin_marks[key] = self.writer.origin_marks(table.name, *key)

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._flush_all()
        for tp in partitions:
            self.assigned.discard((tp.topic, tp.partition))
            self.stored.pop((tp.topic, tp.partition), None)
            self.origin_marks.pop((tp.topic, tp.partition), None)

    # --- buffering ---------------------------------------------------------------------
    def _add(self, msg: Any) -> None:
        tp = (msg.topic(), msg.partition())
        offset = msg.offset()
        if self.stats.first_record_at is None:
            self.stats.first_record_at = time.monotonic()
        table = self.tables[tp[0]]
        buf = self.buffers.get(tp)
        if buf is None:
            buf = self.buffers[tp] = PartitionBuffer(table, WriteBatch(table),
                                                     started=time.monotonic())  # fmt: skip
        if buf.first_offset < 0:
            buf.first_offset = offset
            buf.started = time.monotonic()
        buf.last_offset = offset
        if offset <= self.stored.get(tp, -1):
            # stored by a run that died before committing: skip it, and let the next
            # flush commit past it (a partition whose tail is all replays must not lag)
            self.stats.skipped_replays += 1
            return
        keep: dict[tuple[str, int], int] | None = None
        if table.origin_scoped:
            verdict = self._origins(tp, msg)
            if not isinstance(verdict, dict) and verdict is not None:  # SKIP
                self.stats.skipped_origin_replays += 1
                if len(buf.batch.records) >= self.config.batch_rows:
                    self._flush(tp, buf)
                return
            keep = verdict
        value = msg.value()
        batch = buf.batch
        index = len(batch.records)
        try:
            count = self._buffer_native(tp, buf, msg, value, keep, index)
            if count is None:
                stamp = msg.timestamp()[1]
                record = SinkRecord(tp[0], tp[1], offset, msg.key(), value,
                                    tuple(msg.headers() or ()), stamp if stamp >= 0 else None)  # fmt: skip
                rows = table.builder(record)  # type: ignore[misc]
                if keep is not None:
                    rows = [r for r in rows if _newer(r, table.origin_columns, keep)]
                batch.rows.extend(rows)
                batch.row_record.extend([index] * len(rows))
                count = len(rows)
            else:
                record = SinkRecord(tp[0], tp[1], offset, msg.key(), value)
        except Exception as exc:  # poison record: park it in the DLQ, never stop
            self._poison(msg, exc)
        else:
            batch.records.append(record)
            buf.row_counts.append(count)
            buf.size += len(value or b"")
            self._buffered += 1
            if self._buffered > self.stats.max_buffered_rows:
                self.stats.max_buffered_rows = self._buffered
        if len(batch.records) >= self.config.batch_rows or buf.size >= MAX_BUFFER_BYTES:
            self._flush(tp, buf)

    def _buffer_native(
        self, tp: tuple[str, int], buf: PartitionBuffer, msg: Any, value: bytes | None,
        keep: dict[tuple[str, int], int] | None, index: int,
    ) -> int | None:  # fmt: skip
        """Hand the record to ClickHouse's own decoding when its table and format allow;
        the rows it holds, or None when it must be decoded here."""
        native = buf.table.native
        if native is None or not self.config.native or value is None:
            return None
        if batches.is_batch(value):
            version = batches.version_of(value)
            columnar = version in native.columnar
            if not columnar and version not in native.batch_staging:
                return None  # an older format: decoded here
            if keep is not None:
                value = _filtered_batch(value, version, buf.table.origin_batch_columns[version],
                                        keep)  # fmt: skip
            if columnar:
                return self._native_batch(tp, buf).add_columnar(version, value, msg.offset(),
                                                                index)  # fmt: skip
            self._native_batch(tp, buf).add_rows(version, batches.rows_text(value, version),
                                                 msg.offset(), index)  # fmt: skip
            return _batch_rows(msg, value, filtered=keep is not None)
        if native.record_type is None:
            return None
        self._native_batch(tp, buf).add(value, msg.offset(), index)
        return 1

    def _native_batch(self, tp: tuple[str, int], buf: PartitionBuffer) -> NativeBatch:
        batch = buf.batch
        if batch.native is None:
            native = buf.table.native
            assert native is not None
            batch.native = NativeBatch(
                codec(native.record_type) if native.record_type else None, position_prefix(*tp),
                json_position(*tp), dict(native.batch_staging),
                staging=native.avro_staging or "",
                columnar={v: (buf.table.name, names) for v, names in native.columnar.items()},
                topic=tp[0], partition=tp[1],
            )  # fmt: skip
        return batch.native

    def _origins(self, tp: tuple[str, int], msg: Any) -> dict[tuple[str, int], int] | object | None:
        """What of ``msg`` is new: None (all of it), SKIP (nothing: every input position it
        was computed from is stored already), or the watermarks before it, per input
        partition, when it is partly a replay (a worker re-batched replayed input
        differently): then only outputs of positions above them are stored. The record's
        input ranges then become the watermarks. No ``origin`` header: all of it counts.

        The header lists "topic:partition:first-last" per input partition (one offset for
        a single record). Each worker emits the outputs of an input partition in input
        order, and a batch's outputs are in Kafka before its input offsets commit, so
        anything at or below the watermark is a replay of a stored output."""
        origin = next((v for k, v in msg.headers() or () if k == "origin"), None)
        if not origin:
            return None
        try:
            ranges = parse_origins(origin.decode())
        except ValueError:
            return None
        marks = self.origin_marks.setdefault(tp, {})
        before = {(t, p): marks.get((t, p), -1) for t, p, _, _ in ranges}
        if all(last <= before[(t, p)] for t, p, _, last in ranges):
            return SKIP
        for t, p, _, last in ranges:
            marks[(t, p)] = max(last, marks.get((t, p), -1))
        if all(first > before[(t, p)] for t, p, first, _ in ranges):
            return None
        self.stats.partial_origin_replays += 1
        return before

    def _poison(self, msg: Any, exc: Exception) -> None:
        self._dead_letter(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                          f"sink could not decode {msg.topic()} record: {exc}", "sink_decode")  # fmt: skip

    def _dead_letter(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
        reason: str, code: str,
    ) -> None:  # fmt: skip
        self.stats.poison += 1
        if topic == self.config.dlq_topic:
            log.error("DLQ record at %s:%s:%s cannot be stored (%s); it stays in Kafka",
                      topic, partition, offset, reason)  # fmt: skip
            return
        dead = DeadLetter(
            reason=reason,
            error_code=code,
            origin=SourcePosition(topic=topic, partition=partition, offset=offset),
            key=key,
            value=value,
            rejected_at=datetime.now(UTC),
        )
        self.dlq.produce(self.config.dlq_topic, key=key,
                         value=framed_codec("DeadLetter", self.config.dlq_topic).encode(dead.to_avro()))  # fmt: skip
        if self.dlq.flush(30):
            raise RuntimeError("could not write to the DLQ topic; not committing")

    def _wait_s(self) -> float:
        """How long a consume may wait for more records: until the first buffered partition
        is due, at most 0.2 s. (consume returns when it has its count or its time is up: a
        fixed 0.2 s held every due batch back by up to that much, per loop.)"""
        due = [self._due_at(buf) for buf in self.buffers.values() if buf.first_offset >= 0]
        if not due:
            return 0.2
        return min(0.2, max(0.0, min(due) - time.monotonic()))

    def _due_at(self, buf: PartitionBuffer) -> float:
        """When a buffer is written, whatever its size: its linger after its first record."""
        return buf.started + self.config.linger_ms / 1000

    def _flush_due(self) -> None:
        now = time.monotonic()
        for tp, buf in list(self.buffers.items()):
            if buf.first_offset >= 0 and now >= self._due_at(buf):
                self._flush(tp, buf)

    def _flush_all(self) -> None:
        for tp, buf in list(self.buffers.items()):
            if buf.first_offset >= 0:
                self._flush(tp, buf)

    def _flush(self, tp: tuple[str, int], buf: PartitionBuffer) -> None:
        """Store one partition's buffer, then commit past it. In this order:

        1. Write the batch (``ClickHouseWriter.write``: native or decoded rows, under the
           token ``topic:partition:first-last``; it waits out an outage with the
           partitions paused). Crash after: the rows are in ClickHouse, the offsets are
           not committed; the restart replays the batch and skips it record by record
           (``stored``: the highest ``_offset`` in the table, read on assignment), and an
           identical insert under the same token is dropped by ClickHouse itself.
        2. Dead-letter the records ClickHouse refused for good (produced and flushed to
           usage.dlq; a failed flush raises: nothing commits). Crash after: as after 1,
           except that a refused record that is the partition's last may be read, refused
           and dead-lettered once more (the DLQ then holds it twice; nothing is counted
           twice in ClickHouse).
        3. Commit the offset after the batch (synchronously). Crash after: nothing is
           replayed. A failed commit (a rebalance took the partition) is logged, not fatal:
           the new owner replays and step 1's rule skips what is stored.
        4. Remember the batch as stored (``stored``) and empty the buffer.
        """
        batch = buf.batch
        if batch.records:
            token = f"{tp[0]}:{tp[1]}:{buf.first_offset}-{buf.last_offset}"
            started = time.perf_counter()
            rejected = self.writer.write(batch, token)  # 1.
            hist = self.stats.insert_seconds.get(buf.table.name)
            if hist is None:
                hist = self.stats.insert_seconds[buf.table.name] = Histogram(SECONDS_BUCKETS)
            hist.observe(time.perf_counter() - started)
            for index, reason in rejected:  # 2.
                r = batch.records[index]
                self._dead_letter(tp[0], tp[1], r.offset, r.key, r.value, reason, "sink_insert")
            self.stats.rows[buf.table.name] += sum(buf.row_counts) - sum(
                buf.row_counts[index] for index, _ in rejected
            )
            self.stats.batches += 1
        self._commit(tp, buf.last_offset + 1)  # 3.
        self.stored[tp] = buf.last_offset  # 4.
        self._buffered -= len(batch.records)
        buf.batch = WriteBatch(buf.table)
        buf.row_counts = []
        buf.size = 0
        buf.first_offset = buf.last_offset = -1

    def _wait_paused(self, delay: float, table: str, exc: Exception) -> None:
        """The writer's wait between attempts: consumption paused (group membership kept),
        ``SinkStopped`` when a stop was asked for meanwhile (nothing commits)."""
        if not self._paused:
            assignment = self.consumer.assignment()
            if assignment:
                self.consumer.pause(assignment)
            self._paused = True
        end = time.monotonic() + delay
        while time.monotonic() < end:
            self.consumer.poll(0.1)  # paused: no records, but the group sees us alive
            self._sample_lags()
            if self._watch is not None:  # waiting out an outage is not a stall
                self._watch.beat()
        if self._stop.is_set():
            # Leave without committing: the batch is replayed by the next run.
            raise SinkStopped(f"stopped while {table} could not be written") from exc

    def _resume(self) -> None:
        if self._paused:
            assignment = self.consumer.assignment()
            if assignment:
                self.consumer.resume(assignment)
            self._paused = False

    def _commit(self, tp: tuple[str, int], next_offset: int) -> None:
        try:
            self.consumer.commit(
                offsets=[TopicPartition(tp[0], tp[1], next_offset)], asynchronous=False
            )
        except Exception as exc:  # the stored-offset watermark keeps this safe
            log.warning("offset commit for %s:%s failed: %s", tp[0], tp[1], exc)
        self.stats.last_commit_at = time.monotonic()


#: ``_origins`` verdict: the whole record is a replay
SKIP = object()


def parse_origins(header: str) -> list[tuple[str, int, int, int]]:
    """(topic, partition, first, last) per "topic:partition:offset" or
    "topic:partition:first-last" item of a comma-separated origin header."""
    ranges = []
    for item in header.split(","):
        topic, partition, span = item.rsplit(":", 2)
        first, _, last = span.partition("-")
        ranges.append((topic, int(partition), int(first), int(last or first)))
    return ranges


def _batch_rows(msg: Any, value: bytes, *, filtered: bool) -> int:
    """Rows in a batch record: its ``rows`` header (the price stage writes it, so the native
    path never decodes), or, for a record without one or filtered here, counted by decoding."""
    if not filtered:
        for key, text in msg.headers() or ():
            if key == "rows":
                try:
                    return int(text)
                except ValueError:
                    break
    try:
        return len(batches.decode(value)[1])
    except batches.BatchFormatError:  # ClickHouse refuses it; the fallback dead-letters it
        return 0


def _filtered_batch(
    value: bytes, version: str, columns: tuple[int, int, int], marks: dict[tuple[str, int], int]
) -> bytes:
    """A batch record without its rows at or below the watermarks (a partly replayed
    record: a worker re-batched replayed input differently)."""
    _, rows = batches.decode(value)
    return batches.encode(version, [r for r in rows if _newer(r, columns, marks)])


def _newer(
    row: list[Any], columns: tuple[int, int, int], marks: dict[tuple[str, int], int]
) -> bool:
    t, p, o = columns
    return bool(row[o] > marks.get((row[t], row[p]), -1))


#: a partition's buffer is written once it holds this many bytes, whatever its record count
MAX_BUFFER_BYTES = 32 << 20
