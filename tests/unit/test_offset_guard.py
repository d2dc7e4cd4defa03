"""Offsets the worker may commit: only processed records, in order (streams/offset_guard.py)."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from spendstream.config import load_settings
from spendstream.streams.app import create_worker
from spendstream.streams.configs import AggregatorConfig
from spendstream.streams.offset_guard import OffsetGuard

T = "usage.llm"


def message(offset: int, topic: str = T, generation: int | None = None) -> ConsumerMessage:
    return ConsumerMessage(topic, 0, offset, 0.0, 0, None, b"k", b"v", None, tp=TP(topic, 0),
                           generation_id=generation)  # fmt: skip


def event(msg: ConsumerMessage) -> SimpleNamespace:
    return SimpleNamespace(message=msg)


class FakeConsumer:
    """The parts of faust's consumer the guard reads and writes."""

    def __init__(self, assigned: set[TP]) -> None:
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self.assigned = assigned
        self.seeks: list[tuple[TP, int]] = []

    def assignment(self) -> set[TP]:
        return self.assigned

    def ack(self, msg: ConsumerMessage) -> bool:
        if msg.offset in self._acked_index[msg.tp]:
            return False
        self._acked[msg.tp].append(msg.offset)
        self._acked_index[msg.tp].add(msg.offset)
        return True

    def _new_offset(self, tp: TP) -> int | None:
        return -1  # faust's own rule, used for topics the guard does not own

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        self.seeks.extend(offsets.items())


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def guard_on(
    consumer: FakeConsumer,
    *,
    records: bool = True,
    start: int = 0,
    generation: list[int] | None = None,
) -> OffsetGuard:
    gen = generation or [1]
    guard = OffsetGuard([T], Counter(), start_of=lambda t, p: start,
                        has_records=lambda t, p, a, b: records, generation=lambda: gen[0],
                        clock=Clock())  # fmt: skip
    guard.install(consumer)
    return guard


def processed(guard: OffsetGuard, consumer: FakeConsumer, *offsets: int) -> None:
    msgs = [message(o) for o in offsets]
    guard.completed([event(m) for m in msgs])
    for m in msgs:
        assert consumer.ack(m)


TP0 = TP(T, 0)


def test_acks_count_only_for_finished_batches() -> None:
    consumer = FakeConsumer({TP0})
    guard = guard_on(consumer)
    assert consumer.ack(message(7)) is False  # skipped in a rebalance / abandoned batch
    assert consumer._acked[TP0] == []
    assert guard.metrics["acks_refused"] == 1
    assert consumer.ack(message(1, topic="app-__assignor-__leader")) is True  # not ours


def test_commits_the_run_that_starts_at_the_committed_offset() -> None:
    consumer = FakeConsumer({TP0})
    guard = guard_on(consumer)
    consumer._committed_offset[TP0] = 10
    processed(guard, consumer, 8, 9, 10, 11, 12, 14)  # 8, 9: read again after a rewind
    assert consumer._new_offset(TP0) == 13
    assert consumer._acked[TP0] == [14]
    assert consumer._new_offset(TP(T + "x", 0)) == -1


@pytest.mark.parametrize("hole", [[10], [10, 11]])
def test_never_commits_across_a_hole(hole: list[int]) -> None:
    """faust 0.15 committed past a one-offset hole (and stalled on a wider one)."""
    consumer = FakeConsumer({TP0})
    guard = guard_on(consumer)
    consumer._committed_offset[TP0] = 10
    processed(guard, consumer, *[o for o in range(10, 20) if o not in hole])
    assert consumer._new_offset(TP0) is None


def test_waits_while_the_start_is_unknown_then_learns_it() -> None:
    consumer = FakeConsumer({TP0})
    guard = guard_on(consumer, start=0)
    processed(guard, consumer, 0, 1, 2)
    assert consumer._new_offset(TP0) is None  # faust keeps no committed offset 0
    asyncio.run(guard.heal())
    assert consumer._committed_offset[TP0] == 0
    assert consumer._new_offset(TP0) == 3


def test_a_lasting_hole_with_records_is_read_again() -> None:
    consumer = FakeConsumer({TP0})
    guard = guard_on(consumer, records=True)
    consumer._committed_offset[TP0] = 10
    processed(guard, consumer, 12, 13)
    clock: Any = guard.clock
    asyncio.run(guard.heal())  # first sighting
    clock.now = 2.0
    asyncio.run(guard.heal())
    assert consumer.seeks == []  # within the grace period
    clock.now = 6.0
    asyncio.run(guard.heal())
    assert consumer.seeks == [(TP0, 10)]
    assert guard.metrics["holes_reread"] == 1
    processed(guard, consumer, 10, 11)  # re-delivered (12, 13 again: idempotent)
    assert consumer._new_offset(TP0) == 14


def test_offsets_without_records_are_passed_over() -> None:
    consumer = FakeConsumer({TP0})
    guard = guard_on(consumer, records=False)  # e.g. a transaction marker at 10, 11
    consumer._committed_offset[TP0] = 10
    processed(guard, consumer, 12, 13)
    clock: Any = guard.clock
    asyncio.run(guard.heal())
    clock.now = 6.0
    asyncio.run(guard.heal())
    assert consumer.seeks == []
    assert consumer._new_offset(TP0) == 14
    assert guard.metrics["gaps_passed"] == 1


def test_worker_app_installs_the_guard_on_its_consumer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(data_dir=tmp_path, topic_prefix="guard.")
    worker = create_worker(AggregatorConfig.from_settings(settings))
    app = worker.app
    # acks count for subscribed topics; there is no subscription without a broker
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda topic: True)
    source = settings.topics.allocations
    consumer, tp = app.consumer, TP(source, 0)
    first, second = message(0, source), message(1, source)
    assert consumer.ack(first) is False  # its batch has not finished
    app.spendstream_offset_guard.completed([event(first), event(second)])
    assert consumer.ack(first) is True and consumer.ack(second) is True
    assert consumer._acked[tp] == [0, 1]
    consumer._committed_offset[tp] = 0
    assert consumer._new_offset(tp) == 2
    assert worker.metrics["acks_refused"] == 1


def test_batch_traces_show_exact_offset_runs() -> None:
    from spendstream.streams.app import offset_spans

    batch = [event(message(o)) for o in (1, 2, 4, 2)] + [event(message(7, "usage.apify"))]
    assert offset_spans(batch) == "usage.apify:0=7-7 usage.llm:0=1-2,4-4"


def admit(guard: OffsetGuard, *offsets: int, generation: int = 1) -> list[int]:
    events = [event(message(o, generation=generation)) for o in offsets]
    return [e.message.offset for e in asyncio.run(guard.admit(events))]


def test_admits_each_partition_in_order_from_where_the_group_resumes() -> None:
    consumer = FakeConsumer({TP0})
    guard = guard_on(consumer, start=10)
    assert admit(guard, 10, 11, 12) == [10, 11, 12]
    assert consumer._committed_offset[TP0] == 10  # learnt for the commit, too
    assert admit(guard, 11, 12, 13) == [13]  # copies of processed records pass as done


def test_records_beyond_a_hole_are_held_back_and_the_partition_read_again() -> None:
    """A record processed after a hole would raise the per-origin watermark and make the
    hole's records look like replays when they arrive: they must wait."""
    consumer = FakeConsumer({TP0})
    guard = guard_on(consumer, records=True, start=10)
    assert admit(guard, 10, 12, 13) == [10]
    assert consumer.seeks == [(TP0, 11)]
    assert admit(guard, 13, 14) == []  # still held back; no second seek
    assert consumer.seeks == [(TP0, 11)]
    clock: Any = guard.clock
    clock.now = 6.0  # nothing re-delivered (faust dropped it as behind its read offset)
    asyncio.run(guard.heal())
    assert consumer.seeks == [(TP0, 11), (TP0, 11)]
    assert admit(guard, 11, 12, 13) == [11, 12, 13]
    clock.now = 20.0
    asyncio.run(guard.heal())  # filled: no more seeks
    assert consumer.seeks == [(TP0, 11), (TP0, 11)]
    assert guard.metrics["holes_reread"] == 2


def test_offsets_without_records_are_passed_over_at_admission() -> None:
    consumer = FakeConsumer({TP0})
    guard = guard_on(consumer, records=False, start=10)  # 11 is a transaction marker
    assert admit(guard, 10, 12, 13) == [10, 12, 13]
    processed(guard, consumer, 10, 12, 13)
    assert consumer._new_offset(TP0) == 14


def test_copies_from_an_older_generation_are_dropped_and_a_new_one_starts_over() -> None:
    consumer = FakeConsumer({TP0})
    gen = [1]
    starts = iter([10, 12])
    guard = OffsetGuard([T], Counter(), start_of=lambda t, p: next(starts),
                        has_records=lambda t, p, a, b: True, generation=lambda: gen[0])  # fmt: skip
    guard.install(consumer)
    assert admit(guard, 10, 11, generation=1) == [10, 11]
    gen[0] = 2  # a rebalance; the group committed 12 meanwhile
    assert admit(guard, 12, generation=1) == []  # fetched before it: dropped
    assert admit(guard, 12, 13, generation=2) == [12, 13]
    assert guard.metrics["stale_copies_dropped"] == 1
