"""Sink throughput: rows per second from Kafka into ClickHouse (chDB), as JSON.

    .venv/bin/python benchmarks/sink.py [--rows 300000] [--events-per-batch 2000]
        [--priced-v1] [--decode-in-sink]
    .venv/bin/python benchmarks/sink.py --allocations-only [--rows 200000]
        [--rows-per-record 500] [--single-avro | --json-batches] [--decode-in-sink]

The real mix (default): ``--rows`` / 3 usage events of every payload kind are priced by the
price stage itself (streams/price_stage.py; each event matches two budgets: its org's and
its team's), and its outputs are published as it emits them: ``priced/3`` columnar batch
records on usage.priced and ``allocations/2`` on cost-allocations (schemas/columnar.py),
with their origin and rows headers; about 2 allocation rows per priced row. ``--priced-v1`` publishes the priced
rows in the older ``priced/1`` format (the event as Avro inside JSON: decoded by the sink,
the path before migration 0012). Then the sink is timed from its first record until every
row is in ClickHouse and its offsets are committed.

With ``--allocations-only``: pre-loads the cost-allocations topic with ``--rows`` allocations as the workers write
them: ``allocations/2`` batch records of ``--rows-per-record`` rows (``--json-batches``:
the JSON ``allocations/1`` format before it; ``--single-avro``: one Avro record each, as
written before batches existed), then times
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
from spendstream.schemas.money import from_nanos, to_nanos  # noqa: E402
from spendstream.sinks.clickhouse_sink import ClickHouseSink  # noqa: E402
from spendstream.sinks.warehouse import connect  # noqa: E402
from spendstream.streams.partitioner import partition_for  # noqa: E402
from spendstream.topics import ensure_topics  # noqa: E402

TARGET_ROWS_PER_S = 200_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allocations-only", action="store_true")
    parser.add_argument("--events-per-batch", type=int, default=2000)
    parser.add_argument("--priced-v1", action="store_true")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--rows-per-record", type=int, default=500)
    parser.add_argument("--batch-rows", type=int, default=20_000)
    parser.add_argument("--single-avro", action="store_true")
    parser.add_argument("--json-batches", action="store_true")
    parser.add_argument("--decode-in-sink", action="store_true")
    args = parser.parse_args()
    native = not args.decode_in_sink
    if not args.allocations_only:
        mix(args.rows or 300_000, args.events_per_batch, args.batch_rows, native, args.priced_v1)
        return
    args.rows = args.rows or 200_000
    with bench_settings(
        sink_batch_rows=args.batch_rows, sink_linger_ms=200, sink_native_avro=native
    ) as settings:
        ensure_topics(settings)
        start = datetime.now(UTC) - timedelta(days=1)
        c = codec("CostAllocation")
        version = batches.ALLOCATIONS_V1 if args.json_batches else batches.ALLOCATIONS_V2
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
                                         value=batches.encode(version, batch))  # fmt: skip
                        pending[p] = []
                        producer.poll(0)
        producer.flush(120)

        client = connect(settings)
        sink = ClickHouseSink.from_settings(settings, client)
        sink.run(idle_exit_s=10)
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
            else f"{version} batches of {args.rows_per_record} rows",
            "seconds": round(elapsed, 2),
            "rows_per_s": round(rows / elapsed),
            "batches": sink.stats.batches,
            "batch_rows": args.batch_rows,
            "target_rows_per_s": TARGET_ROWS_PER_S,
        }
        result["target_met"] = result["rows_per_s"] >= TARGET_ROWS_PER_S
        print(json.dumps(result, indent=2))


def mix_events(n: int) -> list[tuple[str, bytes]]:
    """(source topic base, encoded event) of ``n`` events: mostly LLM calls, some Apify runs,
    workflow runs and custom costs (the four payload kinds), 10 teams."""
    from spendstream.schemas.models import (
        ApifyRun,
        CustomCost,
        LlmUsage,
        UsageEvent,
        WorkflowRun,
    )

    now = datetime.now(UTC) - timedelta(minutes=10)
    out = []
    for i in range(n):
        attrs = Attributes(org="acme", team=f"t{i % 10}", project=f"p{i % 3}")
        kind = i % 10
        payload: object
        if kind < 7:
            payload, source = LlmUsage(provider="openai", model="gpt-4o-mini",
                                       input_tokens=1000 + i % 5000, output_tokens=100 + i % 700,
                                       cache_read_tokens=i % 500), "llm"  # fmt: skip
        elif kind == 7:
            payload, source = ApifyRun(actor_id="apify/web", run_id=f"r{i}",
                                       compute_units=Decimal(i % 999) / 100), "apify"  # fmt: skip
        elif kind == 8:
            payload, source = WorkflowRun(platform="n8n", workflow_id="w", execution_id=f"x{i}",
                                          tasks=i % 30), "workflow"  # fmt: skip
        else:
            payload, source = CustomCost(amount=Decimal(i % 997) / 1000, currency="USD",
                                         category="gpu"), "custom"  # fmt: skip
        event = UsageEvent(event_id=f"ev-{i}", occurred_at=now - timedelta(seconds=i % 3600),
                           source=source, attributes=attrs, payload=payload)  # type: ignore[arg-type]  # fmt: skip
        out.append((source, event.encode()))
    return out


def mix(rows: int, per_batch: int, batch_rows: int, native: bool, priced_v1: bool) -> None:
    from binascii import b2a_base64

    from spendstream.schemas.budget import BudgetDefinition
    from spendstream.streams.compiled_pricing import CompiledPricer
    from spendstream.streams.dedupe import DedupeState
    from spendstream.streams.matching import BudgetRegistry
    from spendstream.streams.price_loop import InputRecord
    from spendstream.streams.price_stage import PriceRules, PriceStage

    budgets = [BudgetDefinition(budget_id="org", name="org", limit="1000000",
                                scope={"org": "acme"})]  # fmt: skip
    budgets += [BudgetDefinition(budget_id=f"team-{t}", name=f"t{t}", limit="100000",
                                 scope={"team": f"t{t}"}) for t in range(10)]  # fmt: skip
    with bench_settings(
        sink_batch_rows=batch_rows, sink_linger_ms=200, sink_native_avro=native
    ) as settings:
        ensure_topics(settings)
        t = settings.topics
        n = settings.topic_partitions
        dedupe = DedupeState(86400)
        stage = PriceStage(
            PriceRules(BudgetRegistry(budgets), CompiledPricer()), dedupe,
            priced_topic=t.priced, allocations_topic=t.allocations, dlq_topic=t.dlq,
            changelog_topic="-", partitions=lambda topic: n,
        )  # fmt: skip
        events = mix_events(rows // 3)
        raw = {f"ev-{i}": value for i, (_, value) in enumerate(events)}
        producer = Producer({"bootstrap.servers": settings.bootstrap_servers,
                             "linger.ms": 50, "compression.type": "lz4"})  # fmt: skip
        offsets: dict[tuple[str, int], int] = {}
        for src in ("llm", "apify", "workflow", "custom"):
            for p in range(n):
                dedupe.assign((t.name(f"usage.{src}"), p), 0, [])
        total = Decimal(0)
        priced_rows = allocation_rows = 0
        stamp = int(datetime.now(UTC).timestamp() * 1000)
        for start in range(0, len(events), per_batch):
            records = []
            for i, (src, value) in enumerate(events[start : start + per_batch], start):
                tp = (t.name(f"usage.{src}"), i % n)
                offsets[tp] = offsets.get(tp, -1) + 1
                records.append(InputRecord(*tp, offsets[tp], stamp, None, value))
            batch = stage.process(records)
            for out in batch.outputs:
                if out.topic not in (t.priced, t.allocations):
                    continue  # dead letters (none expected) and the dedupe changelog
                decoded = batches.decode(out.value)[1]  # type: ignore[arg-type]
                value = out.value
                if out.topic == t.priced:
                    priced_rows += len(decoded)
                    total += sum(from_nanos(r[batches.P2["cost_nanos"]]) for r in decoded)
                    if priced_v1:
                        value = batches.encode(batches.PRICED_V1, [v1_row(r, raw, b2a_base64)
                                                                   for r in decoded])  # fmt: skip
                else:
                    allocation_rows += len(decoded)
                producer.produce(out.topic, value=value, partition=out.partition,
                                 headers=out.headers)  # fmt: skip
                producer.poll(0)
        producer.flush(120)

        client = connect(settings)
        sink = ClickHouseSink.from_settings(settings, client)
        sink.run(idle_exit_s=10)
        assert sink.stats.first_record_at is not None, "the sink received no records"
        elapsed = sink.stats.last_commit_at - sink.stats.first_record_at
        (priced_n, priced_ids, stored), = client.query(
            "SELECT count(), uniqExact(event_id), sum(cost) FROM priced_usage").result_rows  # fmt: skip
        (alloc_n, alloc_ids), = client.query(
            "SELECT count(), uniqExact(allocation_id) FROM cost_allocations").result_rows  # fmt: skip
        stored_rows = priced_n + alloc_n
        result = {
            "benchmark": "sink",
            "mix": "priced usage + its allocations, as the price stage emits them",
            "priced_rows": priced_rows,
            "allocation_rows": allocation_rows,
            "rows_in_clickhouse": stored_rows,
            "all_stored": stored_rows == priced_rows + allocation_rows,
            "no_duplicates": priced_n == priced_ids and alloc_n == alloc_ids,
            "totals_agree": stored == total,
            "native": native,
            "priced_format": "priced/1" if priced_v1 else batches.PRICED_V3,
            "native_fallbacks": sink.stats.native_fallbacks,
            "insert_seconds": {
                table: round(h.total, 2) for table, h in sink.stats.insert_seconds.items()
            },  # fmt: skip
            "seconds": round(elapsed, 2),
            "rows_per_s": round(stored_rows / elapsed),
            "batches": sink.stats.batches,
            "batch_rows": batch_rows,
            "target_rows_per_s": TARGET_ROWS_PER_S,
        }
        result["target_met"] = result["rows_per_s"] >= TARGET_ROWS_PER_S
        print(json.dumps(result, indent=2))


def v1_row(r: list[object], raw: dict[str, bytes], b64: object) -> list[object]:
    """The same priced row in the ``priced/1`` format (the event as it arrived, base64)."""
    P2 = batches.P2
    return [b64(raw[r[0]], newline=False).decode(),  # type: ignore[operator, index]
            *[r[P2[c]] for c in ("cost_nanos", "currency")], bool(r[P2["priced"]]),
            *[r[P2[c]] for c in ("components", "price_source", "price_version",
                                 "origin_topic", "origin_partition", "origin_offset",
                                 "priced_at_us")]]  # fmt: skip


if __name__ == "__main__":
    main()
