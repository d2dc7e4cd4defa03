"""The price stage on librdkafka's batch consumer: consume a batch, price it, deliver its
outputs, then commit its input offsets.

Why not faust here: faust's per-message path costs ~80 us a record on this machine even
for an agent that does nothing, more than the whole per-event budget of this stage
(docs/design.md has the figures). This stage is stateless but for its dedupe ids, which
live in ``DedupeState`` and a changelog topic of our own, so it needs none of faust's
tables; the stateful aggregation stays on faust.

``commit`` is the protocol, one function with numbered steps; the invariant it keeps is
that an input offset is committed only after every output computed from it is stored.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from spendstream.errors import SpendstreamError
from spendstream.metrics import SECONDS_BUCKETS, SIZE_BUCKETS, Histogram, consumer_lags
from spendstream.producer import produce_waiting
from spendstream.schemas.avro import codec
from spendstream.topics import watermarks

from .dedupe import DedupeState

log = logging.getLogger("spendstream.price")


@dataclass(slots=True)
class InputRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class OutputRecord:
    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None


@dataclass
class PricedBatch:
    """What one input batch produced: every output record, and per input partition the
    offset to commit (last processed + 1)."""

    outputs: list[OutputRecord] = field(default_factory=list)
    commits: dict[tuple[str, int], int] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)


@dataclass
class Pending:
    """A batch whose outputs were sent; its offsets commit once ``outstanding`` is 0."""

    batch: PricedBatch
    outstanding: int = 0


class Stage(Protocol):
    """What the loop needs of the price stage (price_stage.py; a fake in tests)."""

    dedupe: DedupeState

    def process(self, records: list[InputRecord]) -> PricedBatch: ...


class DeliveryFailed(SpendstreamError, RuntimeError):
    """Outputs of a batch could not be stored; its input offsets must not be committed."""


class PriceLoop:
    def __init__(
        self,
        stage: Stage,
        consumer: Consumer,
        producer: Producer,
        *,
        sources: list[str],
        load_changelog: Callable[[list[tuple[str, int]]], dict[tuple[str, int], list[Entry]]],
        batch_size: int = 2000,
        linger_s: float = 0.02,
        metrics_path: Path | None = None,
        max_in_flight: int = 32,
    ) -> None:
        self.stage = stage
        self.consumer = consumer
        self.producer = producer
        self.sources = sources
        self.load_changelog = load_changelog
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.metrics_path = metrics_path
        #: batches whose outputs may still be unacknowledged before ``commit`` waits
        self.max_in_flight = max_in_flight
        self._pending: deque[Pending] = deque()
        self.metrics: Counter[str] = Counter()
        self.first_record_at: float | None = None
        self._errors: list[str] = []
        self._stop = threading.Event()
        self._metrics_written = 0.0
        #: observed once per batch (records in it; seconds to price it and hand its outputs
        #: to the producer), shipped to the faust process's /metrics in the metrics file
        self.batch_sizes = Histogram(SIZE_BUCKETS)
        self.batch_times = Histogram(SECONDS_BUCKETS)
        #: seconds from the produce time of a batch's oldest record to the batch's start
        self.record_ages = Histogram(SECONDS_BUCKETS)
        #: the newest offset asked to be committed, per partition we own
        self._committing: dict[tuple[str, int], int] = {}
        #: an asynchronous commit failed: commit ``_committing`` again
        self._recommit = False
        self._commit_warned = -5.0

    # --- the commit protocol -------------------------------------------------------------
    def commit(self, batch: PricedBatch) -> None:
        """Store a batch's outputs, then commit its input offsets. The steps of one batch
        are in this order; batches overlap (the next one is consumed and priced while the
        broker acknowledges this one's outputs), and their offsets commit in input order.

        1. Produce every output record (priced and allocation batch records, dead letters,
           the dedupe changelog record), in input order per output partition. Crash after:
           some outputs may be in Kafka, no input offset moved; the batch is read and
           priced again after restart. The aggregator and the sink skip outputs whose
           origin positions they already hold (origin watermarks), and the dedupe
           changelog entries at or above the committed offset are not loaded again.
        2. Wait (``settle``, after later batches were sent) until the broker acknowledged
           every output of this batch and of every batch before it (acks=all, idempotent
           producer: a retried send is stored once). A failed delivery raises there,
           before step 3, and the process exits (crash-only). Crash after: as after 1,
           with every output stored.
        3. Commit the batch's input offsets. Crash after: nothing is replayed. A failed
           commit is counted, not fatal: a partition a rebalance took is replayed by its
           new owner from the last commit (step 1's rule absorbs it); one still ours gets
           its newest offsets committed again at the next step (``committed``).
        """
        pending = Pending(batch)
        self._pending.append(pending)
        for out in batch.outputs:  # 1.
            pending.outstanding += 1
            produce_waiting(self.producer, out.topic, out.key, out.value,
                            **({"partition": out.partition} if out.partition is not None else {}),
                            headers=out.headers,
                            on_delivery=lambda err, msg, p=pending: self._delivered(p, err, msg))  # fmt: skip
        self.metrics.update(batch.counters)
        self.settle(most=self.max_in_flight)

    def settle(self, *, block: bool = False, most: int | None = None, timeout: float = 120) -> None:
        """Steps 2 and 3 for the batches whose outputs are all acknowledged, oldest first.
        ``block`` waits until every batch sent so far is done; ``most`` waits until at
        most that many are still in flight (back-pressure while the broker is slow)."""
        deadline = time.monotonic() + timeout
        limit = 0 if block else most
        while self._pending:
            waiting = limit is not None and len(self._pending) > limit
            self.producer.poll(0.01 if waiting else 0)  # 2. delivery reports
            if self._errors:
                errors, self._errors = self._errors, []
                raise DeliveryFailed(f"outputs not stored: {errors[:5]}")
            ready = []
            while self._pending and self._pending[0].outstanding == 0:
                ready.append(self._pending.popleft())
            if ready:
                offsets: dict[tuple[str, int], int] = {}
                for done in ready:
                    offsets.update(done.batch.commits)
                self._commit_offsets(offsets, wait=block)  # 3.
            if limit is None or len(self._pending) <= limit:
                return
            if time.monotonic() > deadline:
                raise DeliveryFailed(f"{len(self._pending)} batches not acknowledged within "
                                     f"{timeout:.0f}s")  # fmt: skip

    def _commit_offsets(self, offsets: dict[tuple[str, int], int], *, wait: bool) -> bool:
        """Commit; asynchronously while running (the next batch need not wait for it),
        synchronously when draining (before a revocation or at shutdown). False when a
        synchronous commit failed (an asynchronous one reports to ``committed``)."""
        if not offsets:
            return True
        self._committing.update(offsets)
        parts = [KafkaTopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if wait:
                self.consumer.commit(offsets=parts, asynchronous=False)
            else:
                self.consumer.commit(offsets=parts, asynchronous=True)
        except KafkaException as exc:
            self._commit_failed(exc.args[0].str() if exc.args else str(exc))
            return False
        return True

    def _commit_failed(self, reason: str) -> None:
        """Count it, commit again at the next step; warn at most every 5 s (while a group
        rebalances, each retry fails alike until it is done)."""
        self.metrics["commit_failures"] += 1
        self._recommit = True
        now = time.monotonic()
        if now - self._commit_warned >= 5:
            self._commit_warned = now
            log.warning("offset commit failed (%s); committing again", reason)

    def committed(self, err: KafkaError | None, partitions: list[KafkaTopicPartition]) -> None:
        """The consumer's ``on_commit``: an asynchronous commit that failed (the group was
        rebalancing, say) is made again. Without this, a partition the rebalance left with
        us (cooperative-sticky: its fetch position does not rewind) kept its old committed
        offset for good once its input stopped: everything priced, a lag that never went."""
        failed = [tp for tp in partitions or [] if tp.error is not None]
        if err is None and not failed:
            return
        error = err if err is not None else failed[0].error
        self._commit_failed(error.str() if error is not None else "unknown error")

    def _commit_again(self) -> None:
        """Commit the newest offsets of the partitions still ours, synchronously."""
        owned = {tp: o for tp, o in self._committing.items() if self.stage.dedupe.owns(tp)}
        self._committing = owned
        self._recommit = False
        self._commit_offsets(owned, wait=True)

    def _delivered(self, pending: Pending, err: KafkaError | None, msg: Any) -> None:
        pending.outstanding -= 1
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err.str()}")

    # --- partitions ----------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        """Rebuild the dedupe ids of each new partition from the changelog, below the
        offset the group resumes from."""
        if not partitions:
            return
        committed = consumer.committed(partitions, timeout=30)
        # one read of the changelog for all of them (per partition, each read waited out a
        # consume timeout: 16 partitions took 16 s after a restart)
        found = self.load_changelog([(tp.topic, tp.partition) for tp in committed])
        for tp in committed:
            start = tp.offset
            if start < 0:  # never committed: everything is new
                start = watermarks(consumer, tp, timeout=30)[0]
            entries = found.get((tp.topic, tp.partition), [])
            loaded = self.stage.dedupe.assign((tp.topic, tp.partition), start, entries)
            log.info("assigned %s:%s from offset %s (%d dedupe ids)", tp.topic, tp.partition,
                     start, loaded)  # fmt: skip

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        """Finish what was sent (its offsets commit while the partitions are still ours),
        then forget the partitions."""
        self.settle(block=True)
        for tp in partitions:
            self.stage.dedupe.revoke((tp.topic, tp.partition))
            self._committing.pop((tp.topic, tp.partition), None)

    # --- running -------------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        self._stop.set()

    def run(self, *, handle_signals: bool = True) -> None:
        if handle_signals:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        self.consumer.subscribe(
            self.sources, on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )  # fmt: skip
        try:
            while not self._stop.is_set():
                self.step()
            self.settle(block=True)
        finally:
            self.write_metrics(force=True)
            self.consumer.close()

    def step(self) -> None:
        messages = self.consumer.consume(self.batch_size, timeout=self.linger_s)
        if self._recommit:  # reported while consuming (on_commit)
            self._commit_again()
        owned = self.stage.dedupe
        records = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka: %s", err.str())
                continue
            topic, partition = str(msg.topic()), int(msg.partition() or 0)
            if not owned.owns((topic, partition)):
                continue  # fetched before a rebalance took it: the new owner reads it
            records.append(InputRecord(topic, partition, int(msg.offset() or 0),
                                       msg.timestamp()[1], msg.key(), msg.value()))  # fmt: skip
        if records:
            if self.first_record_at is None:
                self.first_record_at = time.time()
            oldest = min((r.timestamp_ms for r in records if r.timestamp_ms > 0), default=0)
            if oldest:
                self.record_ages.observe(max(0.0, time.time() - oldest / 1000))
            started = time.perf_counter()
            self.commit(self.stage.process(records))
            self.batch_times.observe(time.perf_counter() - started)
            self.batch_sizes.observe(len(records))
            self.metrics["consumed"] += len(records)
        else:
            self.settle()
        self.write_metrics()

    def write_metrics(self, *, force: bool = False) -> None:
        """Counters for the worker's /metrics (the faust process serves them)."""
        now = time.monotonic()
        if self.metrics_path is None or (not force and now - self._metrics_written < 0.25):
            return
        self._metrics_written = now
        data = {**self.metrics, "price_first_record_at": self.first_record_at,
                "dedupe_ids": len(self.stage.dedupe), "price_pid": os.getpid(),
                # for Prometheus only (Worker.all_metrics leaves them out of /metrics.json)
                "written_at": time.time(), "assigned": len(self.stage.dedupe.partitions),
                "lag": [[t, p, n] for (t, p), n in consumer_lags(self.consumer).items()],
                "histograms": {"batch_size": self.batch_sizes.to_json(),
                               "batch_seconds": self.batch_times.to_json(),
                               "record_age": self.record_ages.to_json()}}  # fmt: skip
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data))
        tmp.replace(self.metrics_path)


#: a SeenEvents entry: (seen at, ms since the epoch; event ids; their offsets)
Entry = tuple[int, list[str], list[int]]


def price_metrics_path(worker_dir: Path, web_port: int) -> Path:
    """Where a worker's price stage writes its counters for the faust process's /metrics
    (one file per worker web port)."""
    return worker_dir / f"price-{web_port}.json"


def changelog_reader(
    bootstrap: str, changelog: str, partitions: int
) -> Callable[[list[tuple[str, int]]], dict[tuple[str, int], list[Entry]]]:
    """``load([(topic, partition), ...])``: the SeenEvents entries of those input
    partitions, read in one pass over the changelog partitions holding them, each up to
    its end as it is now."""
    decoder = codec("SeenEvents")

    def load(pairs: list[tuple[str, int]]) -> dict[tuple[str, int], list[Entry]]:
        found: dict[tuple[str, int], list[Entry]] = {pair: [] for pair in pairs}
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "spendstream-dedupe",
                             "enable.auto.commit": False, "enable.partition.eof": True,
                             "log_level": 0})  # fmt: skip
        try:
            ends: dict[int, int] = {}
            for part in sorted({p % partitions for _, p in pairs}):
                low, high = watermarks(consumer, KafkaTopicPartition(changelog, part), 30)
                if high > low:
                    ends[part] = high
            if not ends:
                return found
            consumer.assign([KafkaTopicPartition(changelog, p, OFFSET_BEGINNING) for p in ends])
            pending = set(ends)
            deadline = time.monotonic() + 300
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"dedupe changelog {changelog} not read within 300 s")
                for msg in consumer.consume(5000, timeout=0.1):
                    part = msg.partition() or 0
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            pending.discard(part)
                        continue
                    record = decoder.decode(msg.value() or b"")
                    entries = found.get((record["topic"], record["partition"]))
                    if entries is not None:
                        seen_at = int(record["seen_at"].timestamp() * 1000)
                        entries.append((seen_at, record["event_ids"], record["offsets"]))
                    if (msg.offset() or 0) >= ends[part] - 1:
                        pending.discard(part)
            return found
        finally:
            consumer.close()

    return load
