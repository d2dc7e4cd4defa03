"""Batch records on the internal topics, on the real broker and chDB: the sink stores one
row per event and per event x budget, a re-batched replay adds nothing, and our own
partitioner places a key where librdkafka does."""

from __future__ import annotations

import uuid
from base64 import b64encode
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from spendstream.config import Settings
from spendstream.producer import producer_config
from spendstream.schemas import batches
from spendstream.schemas.avro import codec
from spendstream.schemas.models import Attributes, LlmUsage, UsageEvent, to_micros
from spendstream.schemas.money import to_nanos
from spendstream.sinks.clickhouse_sink import ClickHouseSink
from spendstream.sinks.warehouse import connect
from spendstream.streams.partitioner import partition_for
from spendstream.streams.price_stage import priced_event_columns
from spendstream.topics import ensure_topics

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


@pytest.fixture
def sink_settings(settings: Settings, chdb_dir) -> Settings:
    return settings.model_copy(update={
        "clickhouse_dsn": f"chdb://{chdb_dir}",
        "clickhouse_database": f"batch_{uuid.uuid4().hex[:8]}",
        "sink_batch_rows": 3, "sink_linger_ms": 100,
    })  # fmt: skip


def allocation(offset: int, budget: str, amount: str) -> list:
    """An ``allocations/1`` row (schemas/batches.py)."""
    t = to_micros(NOW)
    return [f"e{offset}", budget, budget, "2026-11", t, t, t, to_nanos(Decimal(amount)), "USD",
            "llm", "openai", "m", "", "ml", "", "", "", "", {}, "usage.llm", 0, offset]  # fmt: skip


def single(offset: int, budget: str, amount: str) -> dict:
    """The same allocation as a single Avro record, as written before batches existed."""
    return {
        "allocation_id": f"e{offset}/{budget}", "event_id": f"e{offset}", "budget_id": budget,
        "matched_via": budget, "period_key": "2026-11", "period_start": NOW, "period_end": NOW,
        "occurred_at": NOW, "amount": Decimal(amount), "currency": "USD", "source": "llm",
        "provider": "openai", "model": "m",
        "attributes": {**dict.fromkeys(("org", "project", "user", "department", "session",
                                        "feature")), "tags": {}, "team": "ml"},
        "origin": {"topic": "usage.llm", "partition": 0, "offset": offset},
    }  # fmt: skip


def priced(offset: int, cost: str) -> list:
    """A ``priced/1`` row."""
    event = UsageEvent(event_id=f"e{offset}", occurred_at=NOW, source="llm",
                       attributes=Attributes(team="ml"),
                       payload=LlmUsage(provider="openai", model="m", input_tokens=10))  # fmt: skip
    nanos = to_nanos(Decimal(cost))
    return [b64encode(event.encode()).decode(), nanos, "USD", True,
            [["input", 10 * 10**9, "tokens", nanos]], "t", "t", "usage.llm", 0, offset,
            to_micros(NOW)]  # fmt: skip


def priced2(offset: int, cost: str) -> list:
    """A ``priced/2`` row: the same facts, the event flattened (ClickHouse reads it)."""
    event = UsageEvent(event_id=f"e{offset}", occurred_at=NOW, source="llm",
                       attributes=Attributes(team="ml"),
                       payload=LlmUsage(provider="openai", model="m", input_tokens=10))  # fmt: skip
    nanos = to_nanos(Decimal(cost))
    return [*priced_event_columns(codec("UsageEvent").decode(event.encode())), nanos,
            "USD", 1, [["input", 10 * 10**9, "tokens", nanos]], "t", "t", "usage.llm", 0,
            offset, to_micros(NOW)]  # fmt: skip


def allocations(*rows: list, version: str = batches.ALLOCATIONS_V1) -> bytes:
    return batches.encode(version, list(rows))


def test_batch_records_land_one_row_per_fact_and_a_rebatched_replay_adds_nothing(sink_settings):
    ensure_topics(sink_settings)
    topics = sink_settings.topics
    producer = Producer({"bootstrap.servers": sink_settings.bootstrap_servers})

    def send(topic: str, value: bytes, origin: str) -> None:
        producer.produce(topic, value=value, partition=1, headers=[("origin", origin.encode())])

    # the price stage's batches: offsets 0-2, then 3-5 (e4 matched no budget)
    send(topics.allocations, allocations(
        allocation(0, "a", "0.000000001"), allocation(0, "b", "0.000000001"),
        allocation(2, "a", "1.5")), "usage.llm:0:0-2")  # fmt: skip
    send(topics.allocations, allocations(allocation(3, "a", "2"), allocation(5, "a", "3")),
         "usage.llm:0:3-5")  # fmt: skip
    send(topics.priced, batches.encode(batches.PRICED_V1, [priced(o, "1") for o in range(6)]),
         "usage.llm:0:0-5")  # fmt: skip
    # a crashed price stage replays from offset 2 in other batches: 2-3, then 4-7, in the
    # columnar format of today's price stage (the sink filters the replayed rows out of it)
    v2 = batches.ALLOCATIONS_V2
    send(topics.allocations, allocations(allocation(2, "a", "1.5"), allocation(3, "a", "2"),
                                         version=v2), "usage.llm:0:2-3")  # fmt: skip
    send(topics.allocations, allocations(allocation(5, "a", "3"), allocation(7, "b", "4"),
                                         version=v2), "usage.llm:0:4-7")  # fmt: skip
    send(topics.priced, batches.encode(batches.PRICED_V1, [priced(o, "1") for o in range(2, 8)]),
         "usage.llm:0:2-7")  # fmt: skip
    # priced/2 records (native path), then a replay re-batched as 11-12
    send(topics.priced, batches.encode(batches.PRICED_V2, [priced2(o, "1") for o in (10, 11)]),
         "usage.llm:0:10-11")  # fmt: skip
    send(topics.priced, batches.encode(batches.PRICED_V2, [priced2(o, "1") for o in (11, 12)]),
         "usage.llm:0:11-12")  # fmt: skip
    # priced/3 (columnar, one Native block), then a replay re-batched as 21-22
    send(topics.priced, batches.encode(batches.PRICED_V3, [priced2(o, "1") for o in (20, 21)]),
         "usage.llm:0:20-21")  # fmt: skip
    send(topics.priced, batches.encode(batches.PRICED_V3, [priced2(o, "1") for o in (21, 22)]),
         "usage.llm:0:21-22")  # fmt: skip
    # and a single CostAllocation written before batches existed
    producer.produce(topics.allocations, key=b"c",
                     value=codec("CostAllocation").encode(single(9, "c", "0.25")),
                     partition=2, headers=[("origin", b"usage.llm:0:9")])  # fmt: skip
    assert producer.flush(30) == 0

    client = connect(sink_settings)
    for native in (True, False):  # ClickHouse decodes the batches, or the sink does
        settings = sink_settings.model_copy(update={
            "sink_native_avro": native, "clickhouse_database": f"batch_{uuid.uuid4().hex[:8]}",
            "sink_group": f"sink-{uuid.uuid4().hex[:6]}"})  # fmt: skip
        db = connect(settings)
        sink = ClickHouseSink.from_settings(settings, db)
        sink.run(idle_exit_s=3)
        rows = db.query("SELECT allocation_id, amount FROM cost_allocations ORDER BY "
                        "allocation_id").result_rows  # fmt: skip
        assert rows == [("e0/a", Decimal("0.000000001")), ("e0/b", Decimal("0.000000001")),
                        ("e2/a", Decimal("1.5")), ("e3/a", Decimal(2)), ("e5/a", Decimal(3)),
                        ("e7/b", Decimal(4)), ("e9/c", Decimal("0.25"))], native  # fmt: skip
        assert db.query("SELECT count(), uniqExact(event_id), sum(cost) FROM priced_usage"
                        ).result_rows == [(14, 14, Decimal(14))]  # fmt: skip
        # priced/1 (decoded here), priced/2 and priced/3 (ClickHouse) rows alike, column
        # for column
        alike = db.query("SELECT DISTINCT * EXCEPT (event_id, origin_offset, _offset, "
                         "inserted_at) FROM priced_usage").result_rows  # fmt: skip
        assert len(alike) == 1, alike
        assert db.query("SELECT sum(cost) FROM daily_spend_by_budget").result_rows[0][0] == \
            Decimal("10.750000002")  # fmt: skip
        assert sink.stats.partial_origin_replays == 4 and sink.stats.skipped_origin_replays == 1
        assert sink.stats.native_fallbacks == 0  # the native path took every batch
        # rows, not records (spendstream_sink_rows_total): a replay's filtered rows only
        assert sink.stats.rows["cost_allocations"] == 7 and sink.stats.rows["priced_usage"] == 14
    client.close()


def test_our_partitioner_places_keys_where_librdkafka_does(settings):
    ensure_topics(settings)
    topic = settings.topics.allocations
    producer = Producer(producer_config(settings))
    keys = [f"budget-{i}" for i in range(200)] + ["", "a", "é-ü", "x" * 300]
    for key in keys:
        producer.produce(topic, key=key.encode(), value=b"v")
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers,
                         "group.id": "partitioner-check", "enable.partition.eof": True})  # fmt: skip
    partitions = settings.topic_partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    placed, ended = {}, set()
    while len(ended) < partitions:
        msg = consumer.poll(5)
        assert msg is not None, "topic not read to its end"
        if msg.error():
            ended.add(msg.partition())
            continue
        placed[msg.key().decode()] = msg.partition()
    consumer.close()
    assert placed == {k: partition_for(k.encode(), partitions) for k in keys}


def test_internal_topics_exist_with_their_partitions_before_any_stage_starts(settings):
    """faust declaring its changelog itself raced the first table write on a fresh broker
    (PartitionsMismatch, 'changelog topic has 0 partitions'): they are created up front."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    from spendstream.topics import seen_topic, spend_changelog

    ensure_topics(settings)
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    topics = admin.list_topics(timeout=30).topics
    for name in (spend_changelog(settings), seen_topic(settings)):
        assert name in topics and len(topics[name].partitions) == settings.topic_partitions
    configs = admin.describe_configs([ConfigResource("topic", spend_changelog(settings))])
    (entries,) = [f.result(30) for f in configs.values()]
    assert entries["cleanup.policy"].value == "compact"
