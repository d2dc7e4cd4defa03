"""Every worker holds every budget, and the latest status and alert actions of each:
a reader of the compacted ``budgets``, ``budget-status`` and ``alert-actions`` topics.

Why not a faust GlobalTable: we need to know when the budgets topic has been read to its
end before pricing starts (or the first events would match no budget), and these topics
are our own Avro contracts, not faust changelogs. A plain consumer with no group that
assigns every partition from the beginning gives both. The statuses and alert actions
give the pre-flight check and the HTTP API a view of every budget, including those whose
aggregation runs in another worker process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from spendstream.kafka_config import KafkaTarget
from spendstream.readback import newer_status
from spendstream.schemas.avro import codec
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.fx import FxRate
from spendstream.schemas.models import AlertAction, BudgetStatus
from spendstream.schemas.money import to_nanos

from .fx import FxTable, Rate
from .matching import BudgetRegistry

log = logging.getLogger(__name__)


#: A status record's header holding how far its figures count: "<event_count>:<spent in
#: nano-units>", the order ``newer_status`` compares, readable without decoding the record.
PROGRESS_HEADER = "progress"

#: (event count, spent in nano-units)
Progress = tuple[int, int]


def progress_header(record: dict[str, Any]) -> bytes:
    """The ``progress`` header of a status record (``status_record``'s dict)."""
    return b"%d:%d" % (record["event_count"], to_nanos(record["spent"]))


def progress_of(headers: list[tuple[str, bytes]] | None) -> Progress | None:
    """The progress a status record's headers state; None when they state none (a record
    of an older worker) or something unreadable: such a record is decoded to compare."""
    for name, value in headers or ():
        if name == PROGRESS_HEADER and value:
            count, _, nanos = value.partition(b":")
            try:
                return int(count), int(nanos)
            except ValueError:
                return None
    return None


class LatestStatuses(MutableMapping[str, BudgetStatus]):
    """The newest status per "budget|period", decoded when someone reads it.

    Every worker reads every status of every budget period (with 1,000 budgets, about
    1,000 a second under load), and reads are rare (a check reads the few keys it matches,
    the API lists one budget's). Decoding each on arrival took a seventh of the
    aggregator's CPU (py-spy), and decoding each when its key was folded still ~40 us a
    record. So a record whose ``progress`` header states its order replaces the waiting
    one it supersedes undecoded (one record per key waits); only the one a reader needs is
    decoded. Records without the header (older workers) wait per key and are folded,
    newest wins (``newer_status``), when the key is read or once ``FOLD_AT`` wait."""

    FOLD_AT = 16

    def __init__(self) -> None:
        self._decoded: dict[str, BudgetStatus] = {}
        self._raw: dict[str, list[bytes]] = {}
        #: per key, the most advanced record with a progress header, not decoded yet
        self._best: dict[str, tuple[Progress, bytes]] = {}
        self._lock = threading.Lock()
        self.rejected = 0

    def add(self, key: str, value: bytes | None, progress: Progress | None = None) -> None:
        """A record of the status topic (None: a tombstone, the key is gone), with the
        progress its header states, if any."""
        with self._lock:
            if value is None:
                self._raw.pop(key, None)
                self._best.pop(key, None)
                self._decoded.pop(key, None)
                return
            if progress is not None:
                best = self._best.get(key)
                if best is None or progress >= best[0]:  # a tie: the later one, as folding
                    self._best[key] = (progress, value)
                return
            waiting = self._raw.setdefault(key, [])
            waiting.append(value)
            if len(waiting) >= self.FOLD_AT:
                self._fold(key)

    def _fold(self, key: str) -> None:
        """Decode what waits for ``key`` into its newest status (the lock is held)."""
        best = self._best.pop(key, None)
        waiting = self._raw.pop(key, None) or []
        if best is not None:
            waiting.append(best[1])
        if not waiting:
            return
        current = self._decoded.get(key)
        dec = codec("BudgetStatus")
        for value in waiting:
            try:
                status = BudgetStatus.from_trusted_avro(dec.decode(value))
            except Exception as exc:  # a bad record must not hide the good ones
                self.rejected += 1
                log.error("ignoring undecodable status record %s: %s", key, exc)
                continue
            if newer_status(current, status):
                current = status
        if current is not None:
            self._decoded[key] = current

    def __getitem__(self, key: str) -> BudgetStatus:
        with self._lock:
            self._fold(key)
            return self._decoded[key]

    def __setitem__(self, key: str, status: BudgetStatus) -> None:
        with self._lock:
            self._raw.pop(key, None)
            self._best.pop(key, None)
            self._decoded[key] = status

    def __delitem__(self, key: str) -> None:
        with self._lock:
            self._raw.pop(key, None)
            self._best.pop(key, None)
            del self._decoded[key]

    def _all(self) -> dict[str, BudgetStatus]:
        with self._lock:
            for key in [*self._raw, *self._best]:
                self._fold(key)
            return dict(self._decoded)

    def values(self) -> list[BudgetStatus]:  # type: ignore[override]
        """A snapshot (a tombstone arriving meanwhile must not break the iteration)."""
        return list(self._all().values())

    def items(self) -> list[tuple[str, BudgetStatus]]:  # type: ignore[override]
        return list(self._all().items())

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


class BudgetFeed(threading.Thread):
    def __init__(
        self,
        kafka: KafkaTarget,
        registry: BudgetRegistry | None = None,
        *,
        follow_status: bool = False,
        fetch_wait_ms: int = 500,
    ) -> None:
        """``fetch_wait_ms``: how long the broker holds a fetch that finds nothing new. A
        one-shot reader (the CLI) wants it short: at 500 ms, reading three small topics
        to their end took seconds. A worker following the topics wants it long: at 50 ms
        its empty fetches cost the broker a third more CPU under load (measured)."""
        super().__init__(name="budget-feed", daemon=True)
        #: the cluster and the topic names (a component's KafkaConfig, or the CLI's Settings)
        self.kafka = kafka
        self.registry = registry if registry is not None else BudgetRegistry()
        #: "budget_id|period_key" -> latest status; alert_id -> latest action
        self.statuses = LatestStatuses()
        self.actions: dict[str, AlertAction] = {}
        #: every reference exchange rate (fx-rates topic), when following state
        self.fx = FxTable()
        self.follow_status = follow_status
        self.fetch_wait_ms = fetch_wait_ms
        #: set once the budgets topic is read to its end; ``caught_up`` once every topic is
        self.ready = threading.Event()
        self.caught_up = threading.Event()
        self._stop_event = threading.Event()
        self.error: str | None = None
        self.rejected = 0

    def stop(self) -> None:
        self._stop_event.set()

    def resolved(self) -> set[str]:
        return {a for a, act in self.actions.items() if act.action == "resolve"}

    def run(self) -> None:
        topics = self.kafka.topics
        wanted = [topics.budgets]
        if self.follow_status:
            wanted += [topics.status, topics.alert_actions, topics.fx_rates]
        consumer = Consumer(
            {
                "bootstrap.servers": self.kafka.bootstrap_servers,
                "logger": logging.getLogger("spendstream.kafka"),
                "group.id": f"{self.kafka.app_id}-budget-feed",  # never commits
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.wait.max.ms": self.fetch_wait_ms,
            }
        )
        try:
            meta = consumer.list_topics(timeout=30)
            if topics.budgets not in meta.topics or meta.topics[topics.budgets].error:
                self.error = f"budgets topic '{topics.budgets}' not found"
                log.error(self.error)
                self.ready.set()
                self.caught_up.set()
                return
            assignment = [
                TopicPartition(t, p, OFFSET_BEGINNING)
                for t in wanted
                if t in meta.topics
                for p in sorted(meta.topics[t].partitions)
            ]
            # the ends before the assignment: once assigned, the consumer's fetches hold the
            # connection and each watermark request waited ``fetch.wait.max.ms`` behind one
            # (24 partitions at 500 ms: a worker started 12 s late)
            pending = {(tp.topic, tp.partition) for tp in assignment}
            for tp in assignment:  # empty partitions never report EOF on some versions
                low, high = self._watermarks(consumer, tp.topic, tp.partition)
                if high <= low:
                    pending.discard((tp.topic, tp.partition))
            consumer.assign(assignment)
            self._check_ready(pending)
            while not self._stop_event.is_set():
                # in batches: every status of every budget period reaches every worker
                changes: dict[str, BudgetDefinition | None] = {}
                for msg in consumer.consume(500, timeout=0.2):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            # the budgets read so far are in the registry before it is ready
                            self.registry.apply(changes)
                            changes = {}
                            pending.discard((msg.topic(), msg.partition()))
                            self._check_ready(pending)
                        else:
                            log.warning("budget feed: %s", err)
                        continue
                    if msg.topic() == topics.budgets:
                        self._change(changes, msg.key(), msg.value())
                    else:
                        self._apply_state(msg.topic() or "", msg.key(), msg.value(),
                                          msg.headers())  # fmt: skip
                self.registry.apply(changes)  # one registry snapshot per batch read
        finally:
            consumer.close()

    def _watermarks(self, consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
        """Watermarks, retried while the broker is restarting or moving leadership (a
        worker that starts meanwhile must wait for it, not lose its budget feed)."""
        while True:
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                return int(low), int(high)
            except KafkaException as exc:
                if self._stop_event.is_set():
                    raise
                log.warning("budget feed: %s; retrying", exc)
                time.sleep(1)

    def _check_ready(self, pending: set[tuple[str, int]]) -> None:
        budgets = self.kafka.topics.budgets
        if not any(t == budgets for t, _ in pending):
            self.ready.set()
        if not pending:
            self.caught_up.set()

    def _change(
        self,
        changes: dict[str, BudgetDefinition | None],
        key: bytes | None,
        value: bytes | None,
    ) -> None:
        """Record one budgets record in ``changes`` (a later record of an id replaces an
        earlier one, as compaction would)."""
        budget_id = key.decode() if key else None
        if value is None:
            if budget_id:
                changes[budget_id] = None
            return
        try:
            budget = BudgetDefinition.decode(value)
        except Exception as exc:  # a bad definition must not stop the feed
            self.rejected += 1
            log.error("ignoring undecodable budget %s: %s", budget_id, exc)
            return
        changes[budget.budget_id] = budget

    def _apply_state(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if key is None:
            return
        name = key.decode()
        if topic == self.kafka.topics.status:
            self.statuses.add(name, value, progress_of(headers))  # decoded when read
            return
        if topic == self.kafka.topics.fx_rates:
            self._apply_rate(name, value)
            return
        if value is None:
            self.actions.pop(name, None)
            return
        try:
            self.actions[name] = AlertAction.from_avro(codec("AlertAction").decode(value))
        except Exception as exc:
            self.rejected += 1
            log.error("ignoring undecodable %s record %s: %s", topic, name, exc)

    def _apply_rate(self, key: str, value: bytes | None) -> None:
        if value is None:  # withdrawn rates stay known: amounts converted at them stand
            return
        try:
            rate = FxRate.decode(value)
            self.fx.add(Rate(rate.day, rate.base, rate.quote, rate.rate))
        except Exception as exc:
            self.rejected += 1
            log.error("ignoring undecodable exchange rate %s: %s", key, exc)
