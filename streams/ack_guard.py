"""Only records whose batch finished may become committable offsets.

faust acknowledges records in two places where the work is not done, and the commit it
makes while stopping or while partitions are revoked then moves the group's offset past
input nobody processed: an input lost without a trace (the fault suite saw one event in
a few thousand missing from ClickHouse and the stream state when workers left).

* ``Stream.take_events`` acks a batch in a ``finally``: when the agent is cancelled twice
  on shutdown (stop, then "gather all futures") the batch is abandoned mid-way, yet the
  generator's clean-up still acks every record in it, and the consumer's final commit
  follows.
* A record the stream *skips* during a rebalance (flow control suspended, or fetched in
  an older generation) is acked so that lag does not grow.

The guard lets an ack through only for a record of our input topics that ``completed``
was called for, i.e. whose batch returned after its outputs were flushed. A refused
record stays uncommitted and is read again by whoever owns its partition next.
"""

from __future__ import annotations

import logging
import weakref
from collections import Counter
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("spendstream.worker")


class AckGuard:
    def __init__(self, topics: Iterable[str], metrics: Counter[str]) -> None:
        self.topics = frozenset(topics)
        self.metrics = metrics
        self._done: weakref.WeakSet[Any] = weakref.WeakSet()

    def completed(self, events: Iterable[Any]) -> None:
        """The batch holding ``events`` is finished: their offsets may be committed."""
        for event in events:
            self._done.add(event.message)

    def install(self, consumer: Any) -> None:
        """Wrap ``consumer.ack`` (every ack of a stream record goes through it)."""
        ack = consumer.ack

        def guarded_ack(message: Any) -> bool:
            if message.topic in self.topics and message not in self._done:
                self.metrics["acks_refused"] += 1
                log.info(
                    "not acking %s offset %d: its batch did not finish (skipped during a "
                    "rebalance, or abandoned at shutdown); it will be read again",
                    message.tp,
                    message.offset,
                )
                return False
            self._done.discard(message)
            return bool(ack(message))

        consumer.ack = guarded_ack
