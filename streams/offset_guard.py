"""Which input offsets the worker may commit: only those of records it processed, in order.

faust-streaming 0.15 loses input around rebalances, restarts and shutdowns (the fault
suite found each of these; its batch traces showed offsets that no worker ever processed
yet were committed):

* ``Stream.take_events`` acks a batch in a ``finally``, so a batch abandoned when the
  agent is cancelled twice at shutdown is acked, and the consumer's final commit follows.
* A record the stream skips during a rebalance (flow control suspended, or fetched in an
  older generation) is acked so that lag does not grow.
* Records fetched but never delivered (queues cleared on rebalance, records dropped as
  "behind the read offset") leave holes in the acked offsets. faust commits across a hole
  of one offset (its head-gap test is off by one), fills holes from its "gap" intervals,
  and stalls for good on a wider hole until the next rebalance.

The guard replaces both decisions for the workers' input topics. An ack counts only for a
record whose batch returned after its outputs were flushed (``completed``). The offset
committed is the end of the run of acked offsets that starts exactly at the committed
one: never across a hole. ``heal`` (a timer) resolves a hole that persists: when the
broker still holds records in it, the partition is read again from the committed offset
(processing is idempotent, so records after the hole are absorbed); offsets without
records (transaction markers, compaction) are passed over.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("spendstream.worker")

#: (topic, partition) -> where the group resumes it (committed offset or log start)
StartLookup = Callable[[str, int], int]
#: (topic, partition, start, end) -> whether records exist at offsets [start, end)
RecordProbe = Callable[[str, int, int, int], bool]


class OffsetGuard:
    def __init__(
        self,
        topics: Iterable[str],
        metrics: Counter[str],
        start_of: StartLookup,
        has_records: RecordProbe,
        *,
        hole_grace_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topics = frozenset(topics)
        self.metrics = metrics
        self.start_of = start_of
        self.has_records = has_records
        self.hole_grace_s = hole_grace_s
        self.clock = clock
        self.consumer: Any = None
        self._done: weakref.WeakSet[Any] = weakref.WeakSet()
        #: tp -> (committed offset at the hole, when it was first seen)
        self._holes: dict[Any, tuple[int, float]] = {}

    # --- acks --------------------------------------------------------------------------
    def completed(self, events: Iterable[Any]) -> None:
        """The batch holding ``events`` is finished: their offsets may be committed."""
        for event in events:
            self._done.add(event.message)

    def install(self, consumer: Any) -> None:
        """Wrap the faust consumer's ack and next-commit decisions for our topics."""
        self.consumer = consumer
        ack, new_offset = consumer.ack, consumer._new_offset

        def guarded_ack(message: Any) -> bool:
            if message.topic in self.topics and message not in self._done:
                self.metrics["acks_refused"] += 1
                log.info("not acking %s offset %d: its batch did not finish (skipped in a "
                         "rebalance, or abandoned at shutdown)", message.tp, message.offset)  # fmt: skip
                return False
            self._done.discard(message)
            return bool(ack(message))

        def guarded_new_offset(tp: Any) -> int | None:
            if tp.topic not in self.topics:
                return new_offset(tp)
            return self.next_commit(tp)

        consumer.ack = guarded_ack
        consumer._new_offset = guarded_new_offset

    # --- commits -----------------------------------------------------------------------
    def next_commit(self, tp: Any) -> int | None:
        """The offset to commit for ``tp`` (end of the acked run starting at the committed
        offset), or None; the offsets it covers leave the acked list."""
        c = self.consumer
        acked: list[int] = c._acked[tp]
        committed = c._committed_offset[tp]
        if not acked or committed is None:
            return None
        acked[:] = sorted(set(acked))
        index = c._acked_index[tp]
        below = bisect_left(acked, committed)  # processed again after a rewind
        if below:
            index.difference_update(acked[:below])
            del acked[:below]
        if not acked or acked[0] != committed:
            return None  # a hole at the head: wait for it (see heal)
        end = 1
        while end < len(acked) and acked[end] == acked[end - 1] + 1:
            end += 1
        last = acked[end - 1]
        index.difference_update(acked[:end])
        del acked[:end]
        return last + 1

    async def heal(self) -> None:
        """Resolve holes that persist: read the partition again, or pass over offsets
        that hold no records. Also learns where a partition starts when faust does not
        know (it keeps no committed offset for a group that never committed)."""
        c = self.consumer
        if c is None:
            return
        loop = asyncio.get_running_loop()
        assigned = c.assignment()
        now = self.clock()
        for tp in list(c._acked):
            acked = c._acked.get(tp)
            if tp.topic not in self.topics or tp not in assigned or not acked:
                self._holes.pop(tp, None)
                continue
            committed = c._committed_offset[tp]
            if committed is None:
                start = await loop.run_in_executor(None, self.start_of, tp.topic, tp.partition)
                if c._committed_offset[tp] is None:
                    c._committed_offset[tp] = start
                continue
            first = min(acked)
            if first <= committed:
                self._holes.pop(tp, None)
                continue
            seen = self._holes.get(tp)
            if seen is None or seen[0] != committed:
                self._holes[tp] = (committed, now)
                continue
            if now - seen[1] < self.hole_grace_s:
                continue
            del self._holes[tp]
            exists = await loop.run_in_executor(
                None, self.has_records, tp.topic, tp.partition, committed, first
            )
            if c._committed_offset[tp] != committed or tp not in c.assignment():
                continue  # moved on meanwhile (a commit or a rebalance)
            if exists:
                self.metrics["holes_reread"] += 1
                log.warning("%s offsets %d..%d were fetched but never processed; reading "
                            "again from %d", tp, committed, first - 1, committed)  # fmt: skip
                await c.seek(tp, committed)
            else:
                self.metrics["gaps_passed"] += 1
                log.info("%s offsets %d..%d hold no records; passing over them", tp,
                         committed, first - 1)  # fmt: skip
                index = c._acked_index[tp]
                missing = [o for o in range(committed, first) if o not in index]
                c._acked[tp].extend(missing)
                index.update(missing)
