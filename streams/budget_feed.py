"""Every worker holds every budget: a reader of the compacted budgets topic.

Why not a faust GlobalTable: we need to know when the topic has been read to its end
before pricing starts (or the first events would match no budget), and the budgets
topic is our own Avro contract, not a faust changelog. A plain consumer with no group
that assigns every partition from the beginning gives both.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from spendstream.config import Settings
from spendstream.schemas.budget import BudgetDefinition

from .matching import BudgetRegistry

log = logging.getLogger(__name__)


class BudgetFeed(threading.Thread):
    def __init__(self, settings: Settings, registry: BudgetRegistry | None = None) -> None:
        super().__init__(name="budget-feed", daemon=True)
        self.settings = settings
        self.registry = registry if registry is not None else BudgetRegistry()
        self.ready = threading.Event()
        self._stop_event = threading.Event()
        self.error: str | None = None
        self.rejected = 0

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        topic = self.settings.topics.budgets
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap_servers,
                "logger": logging.getLogger("spendstream.kafka"),
                "group.id": f"{self.settings.app_id}-budget-feed",  # never commits
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            meta = consumer.list_topics(topic, timeout=30)
            parts = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
            if not parts or meta.topics[topic].error is not None:
                self.error = f"budgets topic '{topic}' not found"
                log.error(self.error)
                self.ready.set()
                return
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
            pending = set(parts)
            for p in parts:  # empty partitions never report EOF on some versions
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if high <= low:
                    pending.discard(p)
            if not pending:
                self.ready.set()
            while not self._stop_event.is_set():
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                        if not pending:
                            self.ready.set()
                    else:
                        log.warning("budget feed: %s", err)
                    continue
                self._apply(msg.key(), msg.value())
        finally:
            consumer.close()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        budget_id = key.decode() if key else None
        if value is None:
            if budget_id:
                self.registry.delete(budget_id)
            return
        try:
            budget = BudgetDefinition.decode(value)
        except Exception as exc:  # a bad definition must not stop the feed
            self.rejected += 1
            log.error("ignoring undecodable budget %s: %s", budget_id, exc)
            return
        self.registry.put(budget)
