"""The ClickHouse sink on the real broker and chDB: idempotent, holds through outages."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from spendstream.config import Settings
from spendstream.readback import read_topic
from spendstream.schemas.avro import codec
from spendstream.schemas.models import (
    Attributes,
    CostAllocation,
    DeadLetter,
    LlmUsage,
    PricedUsage,
    SourcePosition,
    UsageEvent,
)
from spendstream.sinks.clickhouse_sink import ClickHouseSink
from spendstream.sinks.service import SinkWatch
from spendstream.sinks.warehouse import connect
from spendstream.topics import ensure_topics

pytestmark = pytest.mark.integration


@pytest.fixture
def sink_settings(settings: Settings, chdb_dir) -> Settings:
    """The pipeline settings, with ClickHouse in this process's chDB and its own database."""
    return settings.model_copy(update={
        "clickhouse_dsn": f"chdb://{chdb_dir}",
        "clickhouse_database": f"sink_{uuid.uuid4().hex[:8]}",
        "sink_batch_rows": 100,
        "sink_linger_ms": 100,
    })  # fmt: skip


def priced_records(n: int, start: int = 0) -> list[tuple[bytes, bytes, Decimal]]:
    base = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for i in range(start, start + n):
        cost = Decimal(i % 97 + 1) / 1000
        event = UsageEvent(event_id=f"ev-{i}", occurred_at=base + timedelta(seconds=i),
                           source="llm", payload=LlmUsage(provider="openai", model="gpt-4o"))  # fmt: skip
        priced = PricedUsage(event=event, cost=cost, currency="USD", price_source="t",
                             price_version="t", origin=SourcePosition(topic="usage.llm",
                             partition=0, offset=i), priced_at=base)  # fmt: skip
        out.append((event.event_id.encode(), codec("PricedUsage").encode(priced.to_avro()), cost))
    return out


def produce(settings: Settings, topic: str, records) -> None:  # type: ignore[no-untyped-def]
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers,
                         "enable.idempotence": True, "partitioner": "murmur2_random"})  # fmt: skip
    for key, value, *_ in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def counts(client, table: str = "priced_usage", column: str = "event_id"):  # type: ignore[no-untyped-def]
    return tuple(client.query(f"SELECT count(), uniqExact({column}), sum(cost) FROM {table}")
                 .result_rows[0])  # fmt: skip


def run_sink(settings: Settings, client, **kwargs) -> ClickHouseSink:  # type: ignore[no-untyped-def]
    sink = ClickHouseSink.from_settings(settings, client, **kwargs)
    sink.run(idle_exit_s=3)
    return sink


def test_replay_and_restart_mid_stream_leave_no_duplicates(sink_settings):
    ensure_topics(sink_settings)
    records = priced_records(1000)
    total = sum(r[2] for r in records)
    produce(sink_settings, sink_settings.topics.priced, records)
    client = connect(sink_settings)

    # 1) stop the sink mid-stream, after a few batches
    sink = ClickHouseSink.from_settings(sink_settings, client)
    stopper = threading.Thread(target=lambda: (time.sleep(0.05), sink.stop()))
    stopper.start()
    sink.run()
    stopper.join()
    partial = counts(client)[0]
    assert partial < 1000

    # 2) restart: catches up, nothing twice
    run_sink(sink_settings, client)
    assert counts(client) == (1000, 1000, total)

    # 3) replay everything: consumer group offsets back to 0 (as after a lost commit)
    admin = AdminClient({"bootstrap.servers": sink_settings.bootstrap_servers})
    group = f"{sink_settings.topic_prefix}{sink_settings.sink_group}"
    admin.delete_consumer_groups([group])[group].result(10)
    replay = run_sink(sink_settings, client)
    assert replay.stats.skipped_replays == 1000
    assert counts(client) == (1000, 1000, total)


def test_insert_then_crash_before_commit_adds_nothing_on_restart(sink_settings):
    """kill between insert and commit: the stored watermark makes the restart skip it."""
    ensure_topics(sink_settings)
    records = priced_records(300)
    produce(sink_settings, sink_settings.topics.priced, records)
    client = connect(sink_settings)

    class CrashAfterInsert(ClickHouseSink):
        def _commit(self, tp, next_offset):  # type: ignore[no-untyped-def]
            raise SystemExit("crash after the insert, before the offset commit")

    with pytest.raises(SystemExit):
        CrashAfterInsert.from_settings(sink_settings, client).run(idle_exit_s=3)
    inserted = counts(client)[0]
    assert inserted > 0  # a batch reached ClickHouse, its offsets were never committed
    run_sink(sink_settings, client)
    assert counts(client)[:2] == (300, 300)

    # and a retried identical batch (same token) is dropped by ClickHouse itself
    sink = ClickHouseSink.from_settings(sink_settings, client)
    row = client.query("SELECT * FROM priced_usage LIMIT 1").result_rows[0]
    columns = client.query("SELECT * FROM priced_usage LIMIT 0").column_names
    for _ in range(2):
        sink.writer.insert("priced_usage", [list(row)], list(columns), "same-token")
    assert counts(client)[:2] == (301, 300)  # one extra row, not two
    assert client.query("SELECT count() FROM priced_usage FINAL").result_rows[0][0] == 300


def test_clickhouse_outage_holds_then_catches_up_with_bounded_memory(sink_settings):
    ensure_topics(sink_settings)
    records = priced_records(2000)
    total = sum(r[2] for r in records)
    real = connect(sink_settings)

    class Flaky:
        """The real client, except that inserts fail while 'down' is set."""

        def __init__(self) -> None:
            self.down = threading.Event()
            self.failed = 0

        def insert(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if self.down.is_set():
                self.failed += 1
                raise ConnectionError("ClickHouse unreachable (injected)")
            return real.insert(*args, **kwargs)

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(real, name)

    flaky = Flaky()
    sink = ClickHouseSink.from_settings(sink_settings, flaky, retry_initial_s=0.05, retry_max_s=0.5)  # type: ignore[arg-type]
    flaky.down.set()
    thread = threading.Thread(target=sink.run, kwargs={"idle_exit_s": 5})
    thread.start()
    produce(sink_settings, sink_settings.topics.priced, records)
    time.sleep(4)  # the outage
    assert real.query("SELECT count() FROM priced_usage").result_rows[0][0] == 0
    assert flaky.failed >= 3
    # /readyz says why (README, "Metrics and health"); the retries are counted
    reasons = SinkWatch(sink_settings, sink).not_ready()
    assert len(reasons) == 1 and reasons[0].startswith("ClickHouse inserts failing since ")
    assert reasons[0].endswith("ClickHouse unreachable (injected)")
    assert sink.stats.retries >= 3 and sink.stats.insert_failures == flaky.failed
    flaky.down.clear()
    thread.join(120)
    assert not thread.is_alive()
    assert counts(real) == (2000, 2000, total)
    assert sink.stats.rows["priced_usage"] == 2000
    assert sink.stats.insert_seconds["priced_usage"].count == sink.stats.batches
    partitions = sink_settings.topic_partitions
    assert sink.stats.max_buffered_rows <= sink_settings.sink_batch_rows * partitions


def test_row_clickhouse_refuses_is_isolated_and_dead_lettered(sink_settings):
    """ClickHouse refusing one row fails its whole batch: the sink splits the batch, stores
    every other row and sends that one to the DLQ with ClickHouse's reason."""
    ensure_topics(sink_settings)
    records = priced_records(41)
    producer = Producer({"bootstrap.servers": sink_settings.bootstrap_servers})
    for key, value, _ in records:
        producer.produce(sink_settings.topics.priced, key=key, value=value, partition=0)
    assert producer.flush(30) == 0
    real = connect(sink_settings)

    class RefusesOneRow:
        """The real client; an insert holding event ev-20 fails as ClickHouse would."""

        def insert(self, table, rows, **kwargs):  # type: ignore[no-untyped-def]
            if any(row[0] == "ev-20" for row in rows):
                raise RuntimeError("Code: 27. DB::Exception: Cannot parse input (injected)")
            return real.insert(table, rows, **kwargs)

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(real, name)

    sink = ClickHouseSink.from_settings(sink_settings, RefusesOneRow(), retry_initial_s=0.01)  # type: ignore[arg-type]
    sink.run(idle_exit_s=3)
    assert counts(real)[:2] == (40, 40)
    assert real.query("SELECT count() FROM priced_usage WHERE event_id = 'ev-20'").result_rows == [
        (0,)
    ]
    dead = [d for _, d in read_topic(sink_settings, sink_settings.topics.dlq,
                                     lambda v: DeadLetter.from_avro(codec("DeadLetter").decode(v)))]  # fmt: skip
    assert [d.error_code for d in dead] == ["sink_insert"]
    assert dead[0].key == b"ev-20" and "Cannot parse input" in dead[0].reason
    assert dead[0].origin.topic == sink_settings.topics.priced and dead[0].origin.offset == 20


def test_every_row_failing_is_an_outage_not_poison(sink_settings):
    """If every row fails alike the table is at fault: retry, never dead-letter good data."""
    ensure_topics(sink_settings)
    produce(sink_settings, sink_settings.topics.priced, priced_records(20))
    real = connect(sink_settings)
    broken = threading.Event()

    class BrokenTable:
        def insert(self, table, rows, **kwargs):  # type: ignore[no-untyped-def]
            if broken.is_set():
                raise RuntimeError("Code: 16. DB::Exception: No such column (injected)")
            return real.insert(table, rows, **kwargs)

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(real, name)

    sink = ClickHouseSink.from_settings(
        sink_settings, BrokenTable(), retry_initial_s=0.01, retry_max_s=0.05
    )  # type: ignore[arg-type]
    broken.set()  # after the sink's migrations ran
    thread = threading.Thread(target=sink.run, kwargs={"idle_exit_s": 3})
    thread.start()
    time.sleep(4)
    assert sink.stats.poison == 0 and sink.stats.insert_failures > 3
    broken.clear()  # the operator fixed the table
    thread.join(60)
    assert counts(real)[:2] == (20, 20)


def test_poison_records_go_to_the_dlq_and_the_sink_continues(sink_settings):
    ensure_topics(sink_settings)
    good = priced_records(10)
    produce(sink_settings, sink_settings.topics.priced,
            good[:5] + [(b"bad", b"\xc3\x01corrupt", None)] + good[5:])  # fmt: skip
    client = connect(sink_settings)
    sink = run_sink(sink_settings, client)
    assert sink.stats.poison == 1
    assert counts(client)[:2] == (10, 10)
    dead = [d for _, d in read_topic(sink_settings, sink_settings.topics.dlq,
                                     lambda v: DeadLetter.from_avro(codec("DeadLetter").decode(v)))]  # fmt: skip
    assert len(dead) == 1 and dead[0].error_code == "sink_decode"
    assert dead[0].origin.topic == sink_settings.topics.priced and dead[0].key == b"bad"


# --- native Avro ingest of cost allocations ---------------------------------------------


def allocation_records(n: int) -> list[tuple[bytes, bytes, Decimal]]:
    """Allocations with every field exercised: nulls, tags, attributes, several budgets."""
    base = datetime.now(UTC).replace(microsecond=123456) - timedelta(hours=1)
    out = []
    for i in range(n):
        amount = Decimal(i % 89 + 1) / 10**9 * 7919
        alloc = CostAllocation(
            allocation_id=f"ev-{i}/b{i % 3}", event_id=f"ev-{i}", budget_id=f"b{i % 3}",
            matched_via="org" if i % 2 else f"b{i % 3}", period_key="2026-11",
            period_start=base - timedelta(days=1), period_end=base + timedelta(days=29),
            occurred_at=base + timedelta(microseconds=i), amount=amount, currency="USD",
            source="llm" if i % 4 else "apify", provider=None if i % 4 == 0 else "openai",
            model=None if i % 4 == 0 else "gpt-4o",
            attributes=Attributes(org="acme", team=f"t{i % 5}", user=None if i % 2 else "ann",
                                  tags={"env": "prod", "n": str(i)} if i % 3 else {}),
            origin=SourcePosition(topic="usage.llm", partition=i % 2, offset=i),
        )  # fmt: skip
        out.append(
            (alloc.event_id.encode(), codec("CostAllocation").encode(alloc.to_avro()), amount)
        )
    return out


def alloc_counts(client) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    return tuple(client.query("SELECT count(), uniqExact(allocation_id) FROM cost_allocations")
                 .result_rows[0])  # fmt: skip


def allocation_table(client) -> list[tuple]:  # type: ignore[no-untyped-def]
    return client.query(
        "SELECT * EXCEPT (inserted_at, _topic, _partition, _offset) FROM cost_allocations "
        "ORDER BY allocation_id"
    ).result_rows


def test_native_ingest_stores_exactly_what_decoding_stores(sink_settings):
    """ClickHouse decoding the Avro itself gives the same rows, to the last field and
    nano-unit, as the sink decoding each record in Python."""
    ensure_topics(sink_settings)
    records = allocation_records(600)
    total = sum(r[2] for r in records)
    produce(sink_settings, sink_settings.topics.allocations, records)
    native = connect(sink_settings)
    sink = run_sink(sink_settings, native)
    assert sink.stats.rows["cost_allocations"] == 600 and sink.stats.native_fallbacks == 0
    assert alloc_counts(native) == (600, 600)
    assert native.query("SELECT sum(amount) FROM cost_allocations").result_rows[0][0] == total
    # positions: every record's own Kafka offset, each (partition, offset) once
    assert native.query(
        "SELECT count(), uniqExact(_partition, _offset), min(_offset) FROM cost_allocations"
    ).result_rows[0] == (600, 600, 0)
    # the daily views fed through the cascade of materialized views agree too
    assert native.query("SELECT sum(cost) FROM daily_spend_by_budget").result_rows[0][0] == total

    decoded_settings = sink_settings.model_copy(update={
        "sink_native_avro": False, "sink_group": "decoded",
        "clickhouse_database": sink_settings.clickhouse_database + "_py"})  # fmt: skip
    decoded = connect(decoded_settings)
    run_sink(decoded_settings, decoded)
    assert allocation_table(native) == allocation_table(decoded)


def test_native_batch_with_a_corrupt_body_falls_back_and_dead_letters_it(sink_settings):
    """A record framed like ours but with a broken body makes ClickHouse refuse the native
    batch; the sink decodes that batch row by row: the bad record goes to the DLQ, the
    others are stored once."""
    ensure_topics(sink_settings)
    records = allocation_records(30)
    header = codec("CostAllocation").header
    bad = (b"bad", header + b"\x99\x99\x99garbage", Decimal(0))
    producer = Producer({"bootstrap.servers": sink_settings.bootstrap_servers})
    for key, value, _ in records[:10] + [bad] + records[10:]:
        producer.produce(sink_settings.topics.allocations, key=key, value=value, partition=0)
    assert producer.flush(30) == 0
    client = connect(sink_settings)
    sink = run_sink(sink_settings, client, retry_initial_s=0.01)
    assert sink.stats.native_fallbacks >= 1
    assert alloc_counts(client) == (30, 30)
    assert client.query("SELECT sum(amount) FROM cost_allocations").result_rows[0][0] == sum(
        r[2] for r in records
    )
    dead = [d for _, d in read_topic(sink_settings, sink_settings.topics.dlq,
                                     lambda v: DeadLetter.from_avro(codec("DeadLetter").decode(v)))]  # fmt: skip
    assert len(dead) == 1 and dead[0].key == b"bad" and dead[0].origin.offset == 10
    assert "decode" in dead[0].reason


def test_native_ingest_holds_through_an_outage_and_skips_replays(sink_settings):
    ensure_topics(sink_settings)
    records = allocation_records(500)
    real = connect(sink_settings)
    down = threading.Event()

    class Flaky:
        failed = 0

        def raw_insert(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if down.is_set():
                Flaky.failed += 1
                raise ConnectionError("ClickHouse unreachable (injected)")
            return real.raw_insert(*args, **kwargs)

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(real, name)

    sink = ClickHouseSink.from_settings(
        sink_settings, Flaky(), retry_initial_s=0.05, retry_max_s=0.5
    )  # type: ignore[arg-type]
    down.set()
    thread = threading.Thread(target=sink.run, kwargs={"idle_exit_s": 4})
    thread.start()
    produce(sink_settings, sink_settings.topics.allocations, records)
    time.sleep(3)
    assert real.query("SELECT count() FROM cost_allocations").result_rows[0][0] == 0
    assert Flaky.failed >= 3 and sink.stats.native_fallbacks == 0
    down.clear()
    thread.join(120)
    assert not thread.is_alive()
    assert alloc_counts(real) == (500, 500)

    # offsets lost: everything replays, the stored watermark skips it all
    admin = AdminClient({"bootstrap.servers": sink_settings.bootstrap_servers})
    group = f"{sink_settings.topic_prefix}{sink_settings.sink_group}"
    admin.delete_consumer_groups([group])[group].result(10)
    replay = run_sink(sink_settings, real)
    assert replay.stats.skipped_replays == 500
    assert alloc_counts(real) == (500, 500)


def test_outputs_of_a_replayed_input_are_stored_once(sink_settings):
    """A worker that crashed publishes the outputs of its uncommitted input again, as new
    records with the same origin header: the sink stores each once, across restarts too,
    and the daily roll-up (which counts every inserted row) agrees."""
    ensure_topics(sink_settings)
    records = allocation_records(300)
    total = sum(r[2] for r in records)

    def produce_with_origin(batch) -> None:  # type: ignore[no-untyped-def]
        producer = Producer({"bootstrap.servers": sink_settings.bootstrap_servers})
        for _key, value, _ in batch:
            alloc = CostAllocation.from_avro(codec("CostAllocation").decode(value))
            origin = f"{alloc.origin.topic}:{alloc.origin.partition}:{alloc.origin.offset}"
            producer.produce(sink_settings.topics.allocations, key=alloc.budget_id.encode(),
                             value=value, headers={"origin": origin})  # fmt: skip
        assert producer.flush(30) == 0

    produce_with_origin(records[:200])
    produce_with_origin(records[100:200])  # replay of a batch whose outputs were all out
    client = connect(sink_settings)
    first = run_sink(sink_settings, client)
    assert first.stats.skipped_origin_replays == 100
    produce_with_origin(records[150:])  # a later replay, then new input, after a restart
    second = run_sink(sink_settings, client)
    assert second.stats.skipped_origin_replays == 50
    assert alloc_counts(client) == (300, 300)
    assert client.query("SELECT sum(amount) FROM cost_allocations").result_rows[0][0] == total
    assert client.query("SELECT sum(cost), sum(events) FROM daily_spend_by_budget").result_rows[
        0
    ] == (total, 300)
