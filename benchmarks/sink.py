"""Sink throughput: rows per second from Kafka into ClickHouse (chDB), as JSON.

    .venv/bin/python benchmarks/sink.py [--rows 200000] [--rows-per-record 500]
        [--batch-rows 20000] [--single-avro] [--decode-in-sink]

Pre-loads the cost-allocations topic with ``--rows`` allocations as the workers write
them: ``allocations/1`` batch records of ``--rows-per-record`` rows (or, with
``--single-avro``, one Avro record each, as written before batches existed), then times
the sink from its first poll until every row is in ClickHouse and its offsets are
committed (framing checks, rows handed to ClickHouse natively with dedup tokens,
commits). With ``--decode-in-sink`` the sink decodes every record in Python and inserts
columns instead (the fallback path). Starts its own local broker unless SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS
is set.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Producer  # noqa: E402

from benchmarks._local import bench_settings, produce  # noqa: E402
from spendstream.schemas import batches  # noqa: E402
from spendstream.schemas.avro import codec  # noqa: E402
from spendstream.schemas.models import (  # noqa: E402
    Attributes,
    CostAllocation,
    SourcePosition,
    to_micros,
)
from spendstream.schemas.money import to_nanos  # noqa: E402
from spendstream.sinks.clickhouse_sink import ClickHouseSink  # noqa: E402
from spendstream.sinks.warehouse import connect  # noqa: E402
from spendstream.streams.partitioner import partition_for  # noqa: E402
from spendstream.topics import ensure_topics  # noqa: E402

TARGET_ROWS_PER_S = 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rows-per-record", type=int, default=500)
    parser.add_argument("--batch-rows", type=int, default=20_000)
    parser.add_argument("--single-avro", action="store_true")
    parser.add_argument("--decode-in-sink", action="store_true")
    args = parser.parse_args()
    native = not args.decode_in_sink
    with bench_settings(
        sink_batch_rows=args.batch_rows, sink_linger_ms=200, sink_native_avro=native
    ) as settings:
        ensure_topics(settings)
        start = datetime.now(UTC) - timedelta(days=1)
        c = codec("CostAllocation")
        producer = Producer({"bootstrap.servers": settings.bootstrap_servers,
                             "linger.ms": 50, "compression.type": "lz4"})  # fmt: skip
        total = Decimal(0)
        pending: dict[int, list[list[object]]] = {}
        start_us, end_us = to_micros(start), to_micros(start + timedelta(days=30))
        for i in range(args.rows):
            amount = Decimal(i % 1000 + 1) / 10**6
            total += amount
            budget = f"b{i % 50}"
            if args.single_avro:
                alloc = CostAllocation(
                    allocation_id=f"e{i}/{budget}", event_id=f"e{i}", budget_id=budget,
                    matched_via=budget, period_key="2026-11", period_start=start,
                    period_end=start + timedelta(days=30),
                    occurred_at=start + timedelta(seconds=i), amount=amount, currency="USD",
                    source="llm", provider="openai", model="gpt-4o",
                    attributes=Attributes(team=f"t{i % 7}"),
                    origin=SourcePosition(topic="usage.llm", partition=i % 4, offset=i),
                )  # fmt: skip
                produce(producer, settings.topics.allocations, budget.encode(),
                        c.encode(alloc.to_avro()))  # fmt: skip
                continue
            partition = partition_for(budget.encode(), settings.topic_partitions)
            rows = pending.setdefault(partition, [])
            rows.append([f"e{i}", budget, budget, "2026-11", start_us, end_us,
                         start_us + i * 10**6, to_nanos(amount), "USD", "llm", "openai",
                         "gpt-4o", "", f"t{i % 7}", "", "", "", "", {}, "usage.llm", i % 4,
                         i])  # fmt: skip
            if len(rows) >= args.rows_per_record or i == args.rows - 1:
                for p, batch in list(pending.items()):
                    if batch and (p == partition or i == args.rows - 1):
                        producer.produce(settings.topics.allocations, partition=p,
                                         value=batches.encode(batches.ALLOCATIONS_V1, batch))  # fmt: skip
                        pending[p] = []
                        producer.poll(0)
        producer.flush(120)

        client = connect(settings)
        sink = ClickHouseSink.from_settings(settings, client)
        sink.run(idle_exit_s=2)
        # from the first record to the last commit (the sink records when it committed last)
        assert sink.stats.first_record_at is not None, "the sink received no records"
        elapsed = sink.stats.last_commit_at - sink.stats.first_record_at
        rows, ids, stored = client.query(
            "SELECT count(), uniqExact(allocation_id), sum(amount) FROM cost_allocations"
        ).result_rows[0]
        result = {
            "benchmark": "sink",
            "rows": args.rows,
            "rows_in_clickhouse": rows,
            "no_duplicates": rows == ids,
            "totals_agree": stored == total,
            "native": native,
            "format": "single Avro records"
            if args.single_avro
            else f"allocations/1 batches of {args.rows_per_record} rows",
            "seconds": round(elapsed, 2),
            "rows_per_s": round(rows / elapsed),
            "batches": sink.stats.batches,
            "batch_rows": args.batch_rows,
            "target_rows_per_s": TARGET_ROWS_PER_S,
        }
        result["target_met"] = result["rows_per_s"] >= TARGET_ROWS_PER_S
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
