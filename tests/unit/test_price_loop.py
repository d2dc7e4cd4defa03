"""The price loop's commit protocol, driven without a broker: outputs are produced and
flushed before any input offset commits; a failed delivery commits nothing."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from spendstream.streams.dedupe import DedupeState
from spendstream.streams.price_loop import (
    DeliveryFailed,
    InputRecord,
    OutputRecord,
    PricedBatch,
    PriceLoop,
)


class Journal(list):
    """What happened, in order, across the fake consumer and producer."""


class FakeProducer:
    """Acknowledges what was produced when polled (as librdkafka serves delivery reports)."""

    def __init__(self, journal: Journal, fail: bool = False) -> None:
        self.journal, self.fail, self.pending = journal, fail, []

    def produce(self, topic: str, value: Any = None, key: Any = None, **kw: Any) -> None:
        self.journal.append(("produce", topic, kw.get("partition")))
        self.pending.append(kw["on_delivery"])

    def poll(self, timeout: float) -> int:
        if self.pending:
            self.journal.append(("acked", len(self.pending)))
        for callback in self.pending:
            err = type("E", (), {"str": lambda self: "broker said no"})() if self.fail else None
            callback(err, type("M", (), {"topic": lambda self: "t"})())
        served, self.pending = len(self.pending), []
        return served

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return 0


class FakeConsumer:
    def __init__(self, journal: Journal, messages: list[Any]) -> None:
        self.journal, self.messages = journal, messages

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        self.journal.append(("commit", sorted((o.topic, o.partition, o.offset) for o in offsets)))
        self.asynchronous = asynchronous

    def consume(self, n: int, timeout: float) -> list[Any]:
        out, self.messages = self.messages[:n], self.messages[n:]
        return out


class Message:
    def __init__(self, topic: str, partition: int, offset: int, ts_ms: int = 1_700_000_000_000):
        self._t, self._p, self._o, self._ts = topic, partition, offset, ts_ms

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"


class EchoStage:
    """Emits one output per input record and commits last + 1 per partition."""

    def __init__(self) -> None:
        self.dedupe = DedupeState(60)
        self.dedupe.assign(("usage.llm", 0), 0, [])
        self.seen: list[InputRecord] = []

    def process(self, records: list[InputRecord]) -> PricedBatch:
        self.seen += records
        batch = PricedBatch(counters=Counter(priced=len(records)))
        for r in records:
            batch.outputs.append(OutputRecord("usage.priced", r.partition, None, b"x"))
            batch.commits[(r.topic, r.partition)] = r.offset + 1
        return batch


def loop(journal: Journal, messages: list[Any], fail: bool = False) -> PriceLoop:
    return PriceLoop(EchoStage(), FakeConsumer(journal, messages),  # type: ignore[arg-type]
                     FakeProducer(journal, fail),  # type: ignore[arg-type]
                     sources=["usage.llm"], load_changelog=lambda pairs: {})  # fmt: skip


def test_offsets_commit_only_after_the_outputs_are_acknowledged():
    journal = Journal()
    price = loop(journal, [Message("usage.llm", 0, o) for o in (5, 6, 7)])
    price.step()
    assert journal == [("produce", "usage.priced", 0)] * 3 + [
        ("acked", 3), ("commit", [("usage.llm", 0, 8)])]  # fmt: skip
    assert price.metrics["priced"] == 3


def test_batches_overlap_and_commit_in_input_order():
    """The next batch is priced while the broker acknowledges the last one; an older
    batch still waiting holds back the commit of a newer one."""
    journal = Journal()
    price = loop(journal, [])
    stage = price.stage
    producer = price.producer

    def batch(*offsets: int):  # type: ignore[no-untyped-def]
        return stage.process([InputRecord("usage.llm", 0, o, 1, b"k", b"v") for o in offsets])

    producer.poll = lambda timeout: 0  # nothing acknowledged yet
    price.commit(batch(1, 2))
    price.commit(batch(3, 4))
    assert not any(e[0] == "commit" for e in journal) and len(price._pending) == 2
    first_callbacks = producer.pending[:2]
    for callback in first_callbacks[::-1]:  # the older batch is acknowledged
        callback(None, None)
    producer.pending = producer.pending[2:]
    price.settle()
    assert journal[-1] == ("commit", [("usage.llm", 0, 3)]) and len(price._pending) == 1
    del producer.poll  # back to acknowledging everything
    price.settle(block=True)
    assert journal[-1] == ("commit", [("usage.llm", 0, 5)])
    assert price.consumer.asynchronous is False  # draining commits synchronously


def test_records_of_a_partition_no_longer_owned_are_neither_processed_nor_committed():
    journal = Journal()
    price = loop(journal, [Message("usage.llm", 1, 3), Message("usage.llm", 0, 9)])
    price.step()
    assert [r.partition for r in price.stage.seen] == [0]  # type: ignore[attr-defined]
    assert journal[-1] == ("commit", [("usage.llm", 0, 10)])


def test_a_failed_delivery_commits_nothing():
    journal = Journal()
    price = loop(journal, [Message("usage.llm", 0, 1)], fail=True)
    with pytest.raises(DeliveryFailed, match="broker said no"):
        price.step()
    assert not any(entry[0] == "commit" for entry in journal)


def test_an_asynchronous_commit_that_failed_is_made_again_for_partitions_still_ours():
    """A commit refused while the group rebalanced left the old offset committed for good
    when the partition stayed ours and its input stopped (the fault suite's three-worker
    start, now and then): the loop commits the newest offsets again, synchronously."""
    from confluent_kafka import KafkaError
    from confluent_kafka import TopicPartition as KafkaTopicPartition

    journal = Journal()
    price = loop(journal, [Message("usage.llm", 0, o) for o in (5, 6, 7)])
    price.stage.dedupe.assign(("usage.llm", 1), 0, [])
    price.step()
    assert journal[-1] == ("commit", [("usage.llm", 0, 8)]) and price.consumer.asynchronous
    # the broker answers the asynchronous commit while the next consume runs: refused
    price.committed(KafkaError(KafkaError.REBALANCE_IN_PROGRESS),
                    [KafkaTopicPartition("usage.llm", 0, 8)])  # fmt: skip
    assert price.metrics["commit_failures"] == 1
    price.step()  # no input left: the newest offsets are committed again
    assert journal[-1] == ("commit", [("usage.llm", 0, 8)])
    assert price.consumer.asynchronous is False
    # one partition's error in a successful reply counts too; a partition revoked since is
    # not committed by us again (its new owner commits it)
    from types import SimpleNamespace

    failed = SimpleNamespace(topic="usage.llm", partition=0, offset=8,
                             error=KafkaError(KafkaError.ILLEGAL_GENERATION))  # fmt: skip
    price.committed(None, [failed])  # type: ignore[list-item]
    price._on_revoke(price.consumer, [KafkaTopicPartition("usage.llm", 0)])
    commits = sum(e[0] == "commit" for e in journal)
    price.step()
    assert sum(e[0] == "commit" for e in journal) == commits
    # a commit that went through asks nothing more
    price.committed(None, [KafkaTopicPartition("usage.llm", 1, 3)])
    price.step()
    assert sum(e[0] == "commit" for e in journal) == commits and not price._recommit


def test_a_burst_of_failed_commits_warns_once_and_counts_each(caplog):
    from confluent_kafka import KafkaError

    price = loop(Journal(), [])
    with caplog.at_level("WARNING", logger="spendstream.price"):
        for _ in range(30):  # as while a group rebalances: every retry refused alike
            price.committed(KafkaError(KafkaError.REBALANCE_IN_PROGRESS), [])
    assert price.metrics["commit_failures"] == 30 and price._recommit
    assert sum("offset commit failed" in r.getMessage() for r in caplog.records) == 1


def test_a_batch_records_the_age_of_its_oldest_record():
    """From the record's produce time to the batch's start: 3 s for this batch, whose
    other record is 1 s old; a record without a timestamp (0) does not count."""
    now_ms = int(time.time() * 1000)
    messages = [Message("usage.llm", 0, 0, now_ms - 1000), Message("usage.llm", 0, 1, now_ms - 3000),
                Message("usage.llm", 0, 2, 0)]  # fmt: skip
    price = loop(Journal(), messages)
    price.step()
    ages = price.record_ages
    assert sum(ages.counts) == 1
    assert ages.counts[ages.bounds.index(5.0)] == 1  # 2.5 < 3 s <= 5
    assert 3.0 <= ages.total < 4.0
