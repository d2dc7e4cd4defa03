"""The price loop's commit protocol, driven without a broker: outputs are produced and
flushed before any input offset commits; a failed delivery commits nothing."""

from __future__ import annotations

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
    def __init__(self, journal: Journal, fail: bool = False) -> None:
        self.journal, self.fail, self.pending = journal, fail, []

    def produce(self, topic: str, value: Any = None, key: Any = None, **kw: Any) -> None:
        self.journal.append(("produce", topic, kw.get("partition")))
        self.pending.append(kw["on_delivery"])

    def flush(self, timeout: float) -> int:
        self.journal.append(("flush",))
        for callback in self.pending:
            err = type("E", (), {"str": lambda self: "broker said no"})() if self.fail else None
            callback(err, type("M", (), {"topic": lambda self: "t"})())
        self.pending = []
        return 0

    def poll(self, timeout: float) -> int:
        return 0


class FakeConsumer:
    def __init__(self, journal: Journal, messages: list[Any]) -> None:
        self.journal, self.messages = journal, messages

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        self.journal.append(("commit", sorted((o.topic, o.partition, o.offset) for o in offsets)))

    def consume(self, n: int, timeout: float) -> list[Any]:
        out, self.messages = self.messages[:n], self.messages[n:]
        return out


class Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._t, self._p, self._o = topic, partition, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

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
                     sources=["usage.llm"], load_changelog=lambda t, p: [])  # fmt: skip


def test_outputs_are_flushed_before_offsets_commit():
    journal = Journal()
    price = loop(journal, [Message("usage.llm", 0, o) for o in (5, 6, 7)])
    price.step()
    assert journal == [("produce", "usage.priced", 0)] * 3 + [
        ("flush",), ("commit", [("usage.llm", 0, 8)])]  # fmt: skip
    assert price.metrics["priced"] == 3


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
