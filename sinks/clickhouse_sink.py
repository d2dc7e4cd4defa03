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
"""

from __future__ import annotations

import logging
import re
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
from spendstream.errors import SpendstreamError
from spendstream.metrics import SECONDS_BUCKETS, Histogram, Lags, consumer_lags
from spendstream.schemas import batches
from spendstream.schemas.avro import codec, configure_registry, framed_codec
from spendstream.schemas.models import DeadLetter, SourcePosition

from .health import WriterHealth
from .native_ingest import (
    BATCH_TABLES,
    INSERT_SETTINGS,
    NATIVE_TABLES,
    NativeBatch,
    json_position,
    position_prefix,
)
from .rows import ALLOCATION_COLUMNS, DLQ_COLUMNS, PRICED_COLUMNS, TABLES, budget_row
from .warehouse import connect, migrate

log = logging.getLogger("spendstream.sink")


class SinkStopped(SpendstreamError):
    """Stop requested while a batch could not be written; nothing was committed for it."""


@dataclass
class PartitionBuffer:
    table: str
    rows: list[list[Any]] = field(default_factory=list)
    #: index in ``raws`` of the record each row came from (a batch record has many rows)
    row_record: list[int] = field(default_factory=list)
    #: (key, value, offset) of every buffered record, for the DLQ and the decoding fallback
    raws: list[tuple[bytes | None, bytes | None, int]] = field(default_factory=list)
    #: rows of each buffered record (SinkStats.rows counts rows, not records)
    row_counts: list[int] = field(default_factory=list)
    #: set instead of ``rows`` when the table is ingested natively
    native: NativeBatch | None = None
    first_offset: int = -1
    last_offset: int = -1
    started: float = 0.0
    #: bytes of the buffered records (a batch record holds many rows: the record count
    #: alone does not bound memory)
    size: int = 0


@dataclass
class SinkStats:
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped_replays: int = 0
    #: outputs of a replayed input (worker crash or rebalance) already stored
    skipped_origin_replays: int = 0
    poison: int = 0
    insert_failures: int = 0
    #: batch records partly replayed (stored without the outputs already stored)
    partial_origin_replays: int = 0
    #: native batches ClickHouse refused as data, written by decoding row by row instead
    native_fallbacks: int = 0
    batches: int = 0
    max_buffered_rows: int = 0
    #: monotonic time the first record arrived (benchmarks time from here, not from join)
    first_record_at: float | None = None
    last_commit_at: float = 0.0
    #: waits before another insert attempt, after one failed
    retries: int = 0
    #: table -> seconds to write one batch into it (retries included), one per batch
    insert_seconds: dict[str, Histogram] = field(default_factory=dict)


class ClickHouseSink:
    def __init__(
        self,
        settings: Settings,
        client: Client | None = None,
        *,
        client_factory: Callable[[], Client] | None = None,
        client_lock: threading.Lock | None = None,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> None:
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.settings = settings
        self.topics = settings.topics
        configure_registry(settings.schema_registry_url or None)
        self.topic_table = {
            self.topics.priced: "priced_usage",
            self.topics.allocations: "cost_allocations",
            self.topics.alerts: "budget_alerts",
            self.topics.budgets: "budgets",
            self.topics.dlq: "dead_letters",
            self.topics.alert_actions: "alert_actions",
            self.topics.alert_deliveries: "alert_deliveries",
            self.topics.conversions: "allocation_conversions",
            self.topics.fx_rates: "fx_rates",
        }
        self._client_factory = client_factory or (lambda: connect(settings))
        self.client = client or self._client_factory()
        self.lock = client_lock or threading.Lock()
        with self.lock:
            migrate(self.client)
        self.stats = SinkStats()
        self.health = WriterHealth()
        #: tables whose records ClickHouse decodes itself
        self.native = set(NATIVE_TABLES) if settings.sink_native_avro else set()
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
        self._stop = threading.Event()
        self.consumer_group = f"{settings.topic_prefix}{settings.sink_group}"
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "logger": logging.getLogger("spendstream.kafka"),
                "group.id": self.consumer_group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "max.poll.interval.ms": 600_000,
                "queued.max.messages.kbytes": 65536,
            }
        )
        self.dlq = Producer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "logger": logging.getLogger("spendstream.kafka"),
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
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned_at = time.monotonic()
        self.assigned.update((tp.topic, tp.partition) for tp in partitions)
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
            if table in ORIGIN_SCOPED:
                with self.lock:
                    rows = self.client.query(
                        "SELECT origin_topic, origin_partition, max(max_offset) "
                        "FROM origin_watermarks WHERE table_name = {n:String} AND "
                        "_topic = {t:String} AND _partition = {p:Int32} "
                        "GROUP BY origin_topic, origin_partition",
                        parameters={"n": table, "t": tp.topic, "p": tp.partition},
                    ).result_rows
                self.origin_marks[(tp.topic, tp.partition)] = {
                    (t, int(p)): int(o) for t, p, o in rows
                }

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
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
        table = self.topic_table[msg.topic()]
        buf = self.buffers.get(tp)
        if buf is None:
            buf = self.buffers[tp] = PartitionBuffer(table=table, started=time.monotonic())
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
        if table in ORIGIN_SCOPED:
            verdict = self._origins(tp, msg)
            if not isinstance(verdict, dict) and verdict is not None:  # SKIP
                self.stats.skipped_origin_replays += 1
                if len(buf.raws) >= self.settings.sink_batch_rows:
                    self._flush(tp, buf)
                return
            keep = verdict
        value = msg.value()
        index = len(buf.raws)
        try:
            if table in self.native:
                if buf.native is None:
                    buf.native = NativeBatch(
                        codec(NATIVE_TABLES[table][0]), position_prefix(*tp),
                        json_position(*tp), BATCH_TABLES.get(table, {}),
                        staging=NATIVE_TABLES[table][1],
                    )  # fmt: skip
                if not batches.is_batch(value):
                    buf.native.add(value, offset, index)
                    count = 1
                else:
                    version = batches.version_of(value)
                    if keep is not None:
                        value = _filtered_batch(value, version, ORIGIN_BATCH_COLUMNS[table], keep)
                    buf.native.add_rows(version, batches.rows_text(value, version), offset, index)
                    count = _batch_rows(msg, value, filtered=keep is not None)
            else:
                if table == "budgets":  # a tombstone's actor and note are in its headers
                    stamp = msg.timestamp()[1]
                    rows = [budget_row(value, (*tp, offset), msg.key(), msg.headers(),
                                       stamp if stamp >= 0 else None)]  # fmt: skip
                else:
                    rows = TABLES[table][1](value, (*tp, offset), msg.key())
                if keep is not None:
                    rows = [r for r in rows if _newer(r, ORIGIN_COLUMNS[table], keep)]
                buf.rows.extend(rows)
                buf.row_record.extend([index] * len(rows))
                count = len(rows)
        except Exception as exc:  # poison record: park it in the DLQ, never stop
            self._poison(msg, exc)
        else:
            buf.raws.append((msg.key(), value, offset))
            buf.row_counts.append(count)
            buf.size += len(value or b"")
            self._buffered += 1
            if self._buffered > self.stats.max_buffered_rows:
                self.stats.max_buffered_rows = self._buffered
        if len(buf.raws) >= self.settings.sink_batch_rows or buf.size >= MAX_BUFFER_BYTES:
            self._flush(tp, buf)

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
        if topic == self.topics.dlq:
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
        self.dlq.produce(self.topics.dlq, key=key,
                         value=framed_codec("DeadLetter", self.topics.dlq).encode(dead.to_avro()))  # fmt: skip
        if self.dlq.flush(30):
            raise RuntimeError("could not write to the DLQ topic; not committing")

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
        if buf.raws:
            token = f"{tp[0]}:{tp[1]}:{buf.first_offset}-{buf.last_offset}"
            started = time.perf_counter()
            if buf.native is not None:
                rejected = self._insert_native(tp, buf, token)
            else:
                columns = TABLES[buf.table][0]
                failed = self._insert_with_retry(buf.table, buf.rows, columns, token)
                rejected = _records_of(failed, buf.row_record)
            hist = self.stats.insert_seconds.get(buf.table)
            if hist is None:
                hist = self.stats.insert_seconds[buf.table] = Histogram(SECONDS_BUCKETS)
            hist.observe(time.perf_counter() - started)
            for index, reason in rejected:
                key, value, offset = buf.raws[index]
                self._dead_letter(tp[0], tp[1], offset, key, value, reason, "sink_insert")
            self.stats.rows[buf.table] += sum(buf.row_counts) - sum(
                buf.row_counts[index] for index, _ in rejected
            )
            self.stats.batches += 1
        self._commit(tp, buf.last_offset + 1)
        self.stored[tp] = buf.last_offset
        self._buffered -= len(buf.raws)
        buf.rows = []
        buf.row_record = []
        buf.raws = []
        buf.row_counts = []
        buf.size = 0
        buf.native = None
        buf.first_offset = buf.last_offset = -1

    def _insert_native(
        self, tp: tuple[str, int], buf: PartitionBuffer, token: str
    ) -> list[tuple[int, str]]:
        """Send the batch as Avro containers (one per writer schema) to the staging table.

        Unreachable ClickHouse: pause and retry, as for decoded rows. Refused as data (a
        record whose framing is ours but whose body is not valid Avro, say): the groups
        not yet written are decoded row by row, which finds the records at fault.
        """
        assert buf.native is not None
        payloads = buf.native.payloads()
        done = 0
        delay = self.retry_initial_s
        try:
            while done < len(payloads):
                key, staging, fmt, data = payloads[done]
                part = token if len(payloads) == 1 else f"{token}.w{done}"
                settings = {
                    "insert_deduplication_token": part,
                    "deduplicate_blocks_in_dependent_materialized_views": 1,
                    **INSERT_SETTINGS,
                }
                try:
                    with self.lock:
                        self.client.raw_insert(staging, insert_block=data, fmt=fmt,
                                               settings=settings)  # fmt: skip
                    self.health.succeeded()
                    done += 1
                    delay = self.retry_initial_s
                except Exception as exc:
                    self.stats.insert_failures += 1
                    self.health.failed(_first_line(exc))
                    if not _is_data_error(exc):
                        delay = self._backoff(staging, exc, delay)
                        continue
                    self.stats.native_fallbacks += 1
                    log.warning("ClickHouse refused a native %s batch of %s:%s (%s); "
                                "decoding it row by row", fmt, tp[0], tp[1], _first_line(exc))  # fmt: skip
                    left = [i for k, *_ in payloads[done:] for i in buf.native.indices[k]]
                    return self._insert_decoded(tp, buf, left, f"{token}.rows")
            return []
        finally:
            self._resume()

    def _insert_decoded(
        self, tp: tuple[str, int], buf: PartitionBuffer, indices: list[int], token: str
    ) -> list[tuple[int, str]]:
        """Decode the buffered records at ``indices`` in Python and insert them as rows."""
        columns, builder = TABLES[buf.table]
        rows: list[list[Any]] = []
        row_record: list[int] = []
        rejected: list[tuple[int, str]] = []
        for index in indices:
            key, value, offset = buf.raws[index]
            try:
                built = builder(value, (*tp, offset), key)
            except Exception as exc:
                rejected.append((index, f"sink could not decode {tp[0]} record: {exc}"))
                continue
            rows.extend(built)
            row_record.extend([index] * len(built))
        if rows:
            failed = self._insert_with_retry(buf.table, rows, columns, token)
            rejected += _records_of(failed, row_record)
        return rejected

    def _insert(self, table: str, rows: list[list[Any]], columns: list[str], token: str) -> None:
        try:
            with self.lock:
                self.client.insert(
                    table, rows, column_names=columns,
                    settings={
                        "insert_deduplication_token": token,
                        "deduplicate_blocks_in_dependent_materialized_views": 1,
                    },
                )  # fmt: skip
        except Exception as exc:
            self.health.failed(f"insert into {table}: {_first_line(exc)}")
            raise
        self.health.succeeded()

    def _insert_with_retry(
        self, table: str, rows: list[list[Any]], columns: list[str], token: str
    ) -> list[tuple[int, str]]:
        """Insert a batch; returns (row index, reason) of rows ClickHouse refuses for good.

        Unreachable ClickHouse (or a transient server condition): pause consumption and
        retry with backoff, forever. The same data error three times: split the batch to
        find the rows at fault; they go to the DLQ only if the rest of the batch inserts
        (if every row fails alike, the table is at fault, not the data: keep retrying).
        """
        delay = self.retry_initial_s
        data_errors = 0
        try:
            while True:
                try:
                    self._insert(table, rows, columns, token)
                    return []
                except Exception as exc:
                    self.stats.insert_failures += 1
                    if _is_data_error(exc):
                        data_errors += 1
                        if data_errors >= 3 and len(rows) > 1:
                            failed = self._insert_parts(table, rows, list(range(len(rows))),
                                                        columns, token)  # fmt: skip
                            if len(failed) < len(rows):
                                return failed
                    delay = self._backoff(table, exc, delay)
        finally:
            self._resume()

    def _insert_parts(
        self, table: str, rows: list[list[Any]], idx: list[int], columns: list[str], token: str
    ) -> list[tuple[int, str]]:
        delay = self.retry_initial_s
        while True:
            try:
                self._insert(table, [rows[i] for i in idx], columns, token)
                return []
            except Exception as exc:
                if _is_data_error(exc):
                    reason = _first_line(exc)
                    break
                delay = self._backoff(table, exc, delay)
        if len(idx) == 1:
            return [(idx[0], f"ClickHouse refused the row: {reason}")]
        mid = len(idx) // 2
        return self._insert_parts(table, rows, idx[:mid], columns, f"{token}.0") + \
            self._insert_parts(table, rows, idx[mid:], columns, f"{token}.1")  # fmt: skip

    def _backoff(self, table: str, exc: Exception, delay: float) -> float:
        """Wait ``delay`` with consumption paused (group membership kept); next delay."""
        log.warning("insert into %s failed (%s); retrying in %.1fs", table, _first_line(exc),
                    delay)  # fmt: skip
        self.stats.retries += 1
        if not self._paused:
            assignment = self.consumer.assignment()
            if assignment:
                self.consumer.pause(assignment)
            self._paused = True
        end = time.monotonic() + delay
        while time.monotonic() < end:
            self.consumer.poll(0.1)  # paused: no records, but the group sees us alive
            self._sample_lags()
        if self._stop.is_set():
            # Leave without committing: the batch is replayed by the next run.
            raise SinkStopped(f"stopped while {table} could not be written") from exc
        return min(delay * 2, self.retry_max_s)

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


#: tables whose rows the workers derive from input positions, and where each row keeps its
#: input position (origin_topic, origin_partition, origin_offset) among its columns
ORIGIN_SCOPED = frozenset({"priced_usage", "cost_allocations", "dead_letters"})


def _origin_columns(columns: list[str]) -> tuple[int, int, int]:
    return (columns.index("origin_topic"), columns.index("origin_partition"),
            columns.index("origin_offset"))  # fmt: skip


ORIGIN_COLUMNS: dict[str, tuple[int, int, int]] = {
    "priced_usage": _origin_columns(PRICED_COLUMNS),
    "cost_allocations": _origin_columns(ALLOCATION_COLUMNS),
    "dead_letters": _origin_columns(DLQ_COLUMNS),
}  # fmt: skip
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


#: the same three columns in a table's batch rows (schemas/batches.py)
ORIGIN_BATCH_COLUMNS: dict[str, tuple[int, int, int]] = {
    "priced_usage": (batches.P["origin_topic"], batches.P["origin_partition"],
                     batches.P["origin_offset"]),
    "cost_allocations": (batches.A["origin_topic"], batches.A["origin_partition"],
                         batches.A["origin_offset"]),
}  # fmt: skip


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


def _records_of(failed: list[tuple[int, str]], row_record: list[int]) -> list[tuple[int, str]]:
    """Rows refused for good -> their records (once each: a record goes to the DLQ whole)."""
    seen: dict[int, str] = {}
    for row, reason in failed:
        seen.setdefault(row_record[row], reason)
    return list(seen.items())


#: a partition's buffer is written once it holds this many bytes, whatever its record count
MAX_BUFFER_BYTES = 32 << 20

#: ClickHouse error codes that are conditions of the server, not of the data.
TRANSIENT_CODES = {159, 202, 209, 210, 236, 241, 242, 252, 425, 999, 1000}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _is_data_error(exc: Exception) -> bool:
    """True when the data is at fault (ClickHouse refused it, or it cannot be serialized),
    False when ClickHouse is unreachable or overloaded."""
    from clickhouse_connect.driver.exceptions import DataError, ProgrammingError

    if isinstance(exc, (DataError, ProgrammingError, TypeError, ValueError, OverflowError)):
        return True
    text = str(exc)
    match = re.search(r"Code: (\d+)", text)
    if match is None or "DB::Exception" not in text:
        return False
    return int(match.group(1)) not in TRANSIENT_CODES
