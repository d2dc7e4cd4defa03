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

try:  # faust's lock over its ack bookkeeping (faust-streaming 0.15; pinned in pyproject)
    from faust.types.tuples import ack_lock
except ImportError:  # pragma: no cover
    import threading

    ack_lock = threading.RLock()

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
        generation: Callable[[], int | None] = lambda: None,
        hole_grace_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topics = frozenset(topics)
        self.metrics = metrics
        self.start_of = start_of
        self.has_records = has_records
        self.generation = generation
        self.hole_grace_s = hole_grace_s
        self.clock = clock
        self.consumer: Any = None
        self._faust_ack: Callable[[Any], bool] | None = None
        self._done: weakref.WeakSet[Any] = weakref.WeakSet()
        #: tp -> (committed offset at the hole, when it was first seen)
        self._holes: dict[Any, tuple[int, float]] = {}
        #: tp -> (consumer generation, next offset to process in it)
        self._next: dict[Any, tuple[int | None, int]] = {}
        #: tp -> (offset sought, when): one seek per hole, not one per held-back batch
        self._sought: dict[Any, tuple[int, float]] = {}

    # --- admission ---------------------------------------------------------------------
    async def admit(self, events: list[Any]) -> list[Any]:
        """The events of a batch to process: per partition, strictly in offset order from
        where processing must go on (the committed offset when the consumer generation
        changes). Processing is idempotent through per-origin watermarks, which hold only
        when every partition is processed in order: a record beyond a hole is held back
        (not processed, not acked) and the partition is read again from the hole. Copies
        fetched in an older generation are dropped; copies of processed records pass as
        done (their acks are harmless)."""
        loop = asyncio.get_running_loop()
        generation = self.generation()
        admitted: list[Any] = []
        holes: dict[Any, int] = {}
        for event in events:
            msg = event.message
            tp = msg.tp
            if msg.topic not in self.topics:
                admitted.append(event)
                continue
            if generation is not None and msg.generation_id not in (None, generation):
                self.metrics["stale_copies_dropped"] += 1
                continue
            if tp in holes:
                continue
            known = self._next.get(tp)
            if known is None or known[0] != generation:
                start = await loop.run_in_executor(None, self.start_of, tp.topic, tp.partition)
                known = (generation, start)
                if self.consumer is not None and self.consumer._committed_offset[tp] is None:
                    self.consumer._committed_offset[tp] = start
            expected = known[1]
            if msg.offset < expected:
                self._done.add(msg)  # processed already (or committed by the group)
                self._next[tp] = known
                continue
            if msg.offset > expected:
                exists = await loop.run_in_executor(
                    None, self.has_records, tp.topic, tp.partition, expected, msg.offset
                )
                if exists:
                    holes[tp] = expected
                    self._next[tp] = known
                    continue
                self._pass_over(tp, expected, msg.offset)
            admitted.append(event)
            self._next[tp] = (generation, msg.offset + 1)
        for tp, offset in holes.items():
            last = self._sought.get(tp)
            if last is not None and last[0] == offset:
                continue  # already reading again from there (heal repeats it if need be)
            self._sought[tp] = (offset, self.clock())
            self.metrics["holes_reread"] += 1
            log.warning("%s: records from offset %d were not delivered before later ones; "
                        "holding the later ones back and reading again from %d", tp, offset,
                        offset)  # fmt: skip
            if self.consumer is not None:
                await self._seek(tp, offset)
        return admitted

    async def _seek(self, tp: Any, offset: int) -> None:
        """Read ``tp`` again from ``offset``. Through the consumer's own thread (faust's
        ``seek_wait``): a plain ``seek`` from the event loop raced aiokafka's fetcher
        (KeyError in ``fetched_records``) and crashed the worker."""
        await self.consumer.seek_wait({tp: offset})

    def _pass_over(self, tp: Any, start: int, end: int) -> None:
        """Offsets [start, end) hold no records: count them as done for the commit."""
        self.metrics["gaps_passed"] += 1
        log.info("%s offsets %d..%d hold no records; passing over them", tp, start, end - 1)
        c = self.consumer
        if c is None:
            return
        with ack_lock:  # faust changes the same lists under it (ack from other threads)
            index = c._acked_index[tp]
            committed = c._committed_offset[tp]
            missing = [o for o in range(start, end)
                       if o not in index and (committed is None or o >= committed)]  # fmt: skip
            c._acked[tp].extend(missing)
            index.update(missing)

    # --- acks --------------------------------------------------------------------------
    def completed(self, events: Iterable[Any]) -> None:
        """The batch holding ``events`` is finished: their offsets may be committed."""
        for event in events:
            self._done.add(event.message)

    def finish(self, events: Iterable[Any]) -> None:
        """``completed`` for events whose batch returned earlier (a checkpoint that
        finishes several batches): faust's own ack of them was refused then, so they are
        acked here, through faust's ack (a second ack of a message does nothing)."""
        ack = self._faust_ack
        for event in events:
            message = event.message
            self._done.add(message)
            if ack is not None:
                with ack_lock:
                    if not message.acked and ack(message):
                        self._done.discard(message)

    def install(self, consumer: Any) -> None:
        """Wrap the faust consumer's ack and next-commit decisions for our topics."""
        needed = ("ack", "_new_offset", "_acked", "_acked_index", "_committed_offset", "seek_wait")
        missing = [name for name in needed if not hasattr(consumer, name)]
        if missing:  # faust internals this guard relies on (checked on 0.15.3, pinned)
            raise RuntimeError(f"this faust-streaming consumer lacks {missing}; the offset "
                               "guard is verified on faust-streaming 0.15.3")  # fmt: skip
        self.consumer = consumer
        ack, new_offset = consumer.ack, consumer._new_offset
        self._faust_ack = ack

        def guarded_ack(message: Any) -> bool:
            if message.topic in self.topics and message not in self._done:
                self.metrics["acks_refused"] += 1
                log.debug("not acking %s offset %d: its batch did not finish (skipped in a "
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
        with ack_lock:  # faust changes the same lists under it (ack from other threads)
            return self._next_commit(tp)

    def _next_commit(self, tp: Any) -> int | None:
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
        for tp, (offset, when) in list(self._sought.items()):
            waiting = self._next.get(tp)
            if tp not in assigned or waiting is None or waiting[1] != offset:
                del self._sought[tp]  # filled, or no longer ours
            elif now - when >= self.hole_grace_s:
                # faust can drop the re-fetched records as "behind its read offset" when
                # records fetched earlier were still being delivered: seek again
                self._sought[tp] = (offset, now)
                self.metrics["holes_reread"] += 1
                log.warning("%s: still waiting for offset %d; reading again from it", tp, offset)
                await self._seek(tp, offset)
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
                self._next.pop(tp, None)
                await self._seek(tp, committed)
            else:
                self._pass_over(tp, committed, first)
