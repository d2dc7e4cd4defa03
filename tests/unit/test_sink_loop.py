"""The sink's consume/commit loop driven by recorded batches: a fake consumer feeds prepared
messages, a fake client stores rows (no broker, no ClickHouse)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from confluent_kafka import TopicPartition

from spendstream.schemas.avro import codec
from spendstream.schemas.models import DeadLetter
from spendstream.sinks.clickhouse_sink import ClickHouseSink
from spendstream.sinks.config import SinkConfig
from spendstream.sinks.tables import SinkTable

EVENTS: list[str] = []


class Msg:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None,
                 headers: list[tuple[str, bytes]] | None = None) -> None:  # fmt: skip
        self._t, self._p, self._o, self._v, self._h = topic, partition, offset, value, headers

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes | None:
        return None

    def value(self) -> bytes | None:
        return self._v

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._h

    def timestamp(self) -> tuple[int, int]:
        return (0, -1)

    def error(self) -> None:
        return None


class FakeConsumer:
    """Assigns the given partitions on subscribe, hands out the recorded batches one per
    consume call, records commits, pauses and resumes."""

    def __init__(self, partitions: list[tuple[str, int]], batches: list[list[Msg]]) -> None:
        self.partitions = [TopicPartition(t, p) for t, p in partitions]
        self.batches = list(batches)
        self.commits: list[tuple[str, int, int]] = []
        self.paused = 0
        self.resumed = 0
        self.on_empty: Any = lambda: None

    def subscribe(self, topics, on_assign=None, on_revoke=None):  # type: ignore[no-untyped-def]
        assert {tp.topic for tp in self.partitions} <= set(topics)
        on_assign(self, self.partitions)

    def consume(self, num_messages=1, timeout=0.0):  # type: ignore[no-untyped-def]
        if not self.batches:
            self.on_empty()  # every recorded batch handed out: the test stops the sink
            return []
        return self.batches.pop(0)

    def commit(self, offsets, asynchronous=True):  # type: ignore[no-untyped-def]
        for tp in offsets:
            self.commits.append((tp.topic, tp.partition, tp.offset))
            EVENTS.append(f"commit {tp.topic}:{tp.partition}:{tp.offset}")

    def assignment(self) -> list[TopicPartition]:
        return self.partitions

    def pause(self, partitions: Any) -> None:
        self.paused += 1

    def resume(self, partitions: Any) -> None:
        self.resumed += 1

    def poll(self, timeout: float = 0) -> None:
        return None

    def position(self, partitions: Any) -> list[TopicPartition]:
        return []

    def close(self) -> None:
        pass


class FakeClient:
    def __init__(self, stored: dict[tuple[str, int], int] | None = None, down: int = 0) -> None:
        self.stored = stored or {}
        self.down = down
        self.rows: list[list[Any]] = []

    def query(self, query: str, parameters: dict[str, Any] | None = None) -> Any:
        p = parameters or {}
        if "origin_watermarks" in query:
            return SimpleNamespace(result_rows=[])
        found = self.stored.get((p["t"], p["p"]))
        return SimpleNamespace(result_rows=[(found or 0, 0 if found is None else 1)])

    def insert(self, table, data, column_names, settings=None):  # type: ignore[no-untyped-def]
        if self.down:
            self.down -= 1
            raise ConnectionError("ClickHouse unreachable")
        self.rows.extend(data)
        EVENTS.append(f"insert {settings['insert_deduplication_token']}")

    def raw_insert(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("no native table here")


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> None:
        assert value is not None
        self.sent.append((topic, value))
        EVENTS.append(f"dlq {topic}")

    def flush(self, timeout: float = 0) -> int:
        return 0


def parse(r: Any) -> list[list[Any]]:
    if r.value == b"poison":
        raise ValueError("not a toy record")
    return [[r.value.decode(), r.offset]]


TOY = SinkTable("toy", lambda t: "toy", ["v", "_offset"], parse)
CONFIG = SinkConfig(bootstrap_servers="-", group="g", topic_prefix="", topics=("toy",),
                    dlq_topic="usage.dlq", batch_rows=3, linger_ms=60_000,
                    retry_initial_s=0.01, retry_max_s=0.02)  # fmt: skip


def sink(consumer: FakeConsumer, client: FakeClient, dlq: FakeProducer) -> ClickHouseSink:
    s = ClickHouseSink(CONFIG, client, consumer, dlq, {"toy": TOY})  # type: ignore[arg-type]
    consumer.on_empty = s.stop
    return s


def test_batches_are_inserted_then_committed_and_replays_skipped() -> None:
    EVENTS.clear()
    recorded = [[Msg("toy", 0, o, f"r{o}".encode()) for o in range(5)],
                [Msg("toy", 1, 7, b"x"), Msg("toy", 0, 5, b"r5")]]  # fmt: skip
    consumer = FakeConsumer([("toy", 0), ("toy", 1)], recorded)
    client = FakeClient(stored={("toy", 0): 1})  # offsets 0-1 stored by a run that crashed
    s = sink(consumer, client, FakeProducer())
    s.run()
    assert [r[0] for r in client.rows] == ["r2", "r3", "r4", "r5", "x"]
    assert s.stats.skipped_replays == 2 and s.stats.rows["toy"] == 5
    # a batch is 3 records written (skipped replays do not count), its token spans them;
    # every insert before the commit past it; the commit names the offset after the batch
    assert EVENTS == ["insert toy:0:0-4", "commit toy:0:5", "insert toy:0:5-5",
                      "commit toy:0:6", "insert toy:1:7-7", "commit toy:1:8"]  # fmt: skip


def test_a_poison_record_is_dead_lettered_with_its_reason_and_committed_past() -> None:
    EVENTS.clear()
    consumer = FakeConsumer([("toy", 0)], [[Msg("toy", 0, 0, b"a"), Msg("toy", 0, 1, b"poison"),
                                            Msg("toy", 0, 2, b"b")]])  # fmt: skip
    client, dlq = FakeClient(), FakeProducer()
    s = sink(consumer, client, dlq)
    s.run()
    assert [r[0] for r in client.rows] == ["a", "b"]
    [(topic, value)] = dlq.sent
    dead = DeadLetter.from_avro(codec("DeadLetter").decode(value))
    assert topic == "usage.dlq" and dead.origin.offset == 1 and dead.error_code == "sink_decode"
    assert "not a toy record" in dead.reason
    assert EVENTS == ["dlq usage.dlq", "insert toy:0:0-2", "commit toy:0:3"]


def test_an_outage_pauses_the_partitions_and_commits_only_after_the_insert() -> None:
    EVENTS.clear()
    consumer = FakeConsumer([("toy", 0)], [[Msg("toy", 0, o, b"v") for o in range(3)]])
    client = FakeClient(down=3)
    s = sink(consumer, client, FakeProducer())
    s.run()
    assert consumer.paused == 1 and consumer.resumed == 1 and s.stats.retries == 3
    assert EVENTS == ["insert toy:0:0-2", "commit toy:0:3"] and len(client.rows) == 3


def test_a_consume_waits_no_longer_than_until_the_first_buffer_is_due() -> None:
    """consume returns when it has its count or its time is up: with a fixed 0.2 s every
    due batch waited up to that long per loop (the sink benchmark's 300k rows: 1.9 s ->
    1.25 s). The wait is the time left of the earliest buffered partition's linger."""
    import dataclasses

    waits: list[float] = []
    consumer = FakeConsumer([("toy", 0), ("toy", 1)], [[Msg("toy", 0, 0, b"a")], []])
    consume = consumer.consume

    def timed(num_messages=1, timeout=0.0):  # type: ignore[no-untyped-def]
        waits.append(timeout)
        return consume(num_messages, timeout)

    consumer.consume = timed  # type: ignore[method-assign]
    s = ClickHouseSink(dataclasses.replace(CONFIG, linger_ms=150), FakeClient(), consumer,
                       FakeProducer(), {"toy": TOY})  # type: ignore[arg-type]  # fmt: skip
    consumer.on_empty = s.stop
    s.run()
    assert waits[0] == 0.2  # nothing buffered: the longest wait
    assert 0.0 <= waits[1] <= 0.15  # one record buffered: at most its linger's remainder
