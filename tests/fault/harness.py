"""Fault-injection harness: real services, an oracle from the raw input, the invariants.

A scenario publishes input, runs the worker(s) and the sink as real processes, breaks
something, lets the system recover and settle (consumer lag zero everywhere), then checks
what every scenario must keep:

  accounted       every input record is priced (in ClickHouse), dead-lettered (in the
                  DLQ table) or a duplicate of an earlier event id; never two of these,
                  except a too-late event: priced (real spend) and dead-lettered as
                  too_late (why it counts toward no budget), exactly the oracle's
  no_duplicates   ClickHouse holds each event and each allocation once: count() equals
                  uniqExact(id) without FINAL, and equals the oracle's count
  spend_exact     spend and event count per budget and period, in ClickHouse and in the
                  stream's state (budget-status), equal the oracle to the last nano-unit
  alerts_once     threshold/exceeded alerts are exactly the oracle's crossings, one
                  stored alert per tier (subscribers dedupe re-sent ids, so does FINAL)
  lag_zero        worker and sink consumer groups are at the end of every input topic

The oracle reads the raw input topics back from offset 0 and applies the pure stages
(decode, dedupe by event id, price, match, period, lateness by the record's Kafka
timestamp) in one sequential pass; it never looks at what the services produced.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    TopicPartition,
)

from spendstream.config import Settings
from spendstream.processes import ProcessGroup, ServiceFailed, wait_for, worker_metrics
from spendstream.producer import publish_budgets
from spendstream.readback import read_alerts, read_statuses
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import DeadLetter, SourcePosition, UsageEvent
from spendstream.schemas.money import plain
from spendstream.sinks.tables import sink_inputs
from spendstream.sinks.warehouse import SinkWarehouse, sink_warehouse
from spendstream.streams.matching import BudgetRegistry
from spendstream.streams.pricing import Catalog, Pricer
from spendstream.streams.processor import UsageProcessor
from spendstream.topics import (
    ensure_topics,
    partition_lags,
    pipeline_lags,
    price_group,
    sink_group,
    worker_group,
)

Position = tuple[str, int, int]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


INVARIANTS = ("accounted", "no_duplicates", "spend_exact", "alerts_once", "lag_zero")
#: scenario -> {invariant: held}; printed as a table at the end of the session
RESULTS: dict[str, dict[str, bool]] = {}
#: scenario -> {invariant: detail}, printed under the table
DETAILS: dict[str, dict[str, str]] = {}


@dataclass
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: datetime

    @property
    def position(self) -> Position:
        return (self.topic, self.partition, self.offset)


def read_raw(settings: Settings, topics: Iterable[str]) -> list[RawRecord]:
    """Every record of ``topics`` from offset 0 to the current end, with Kafka timestamps."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers,
                         "group.id": "fault-oracle", "enable.auto.commit": False,
                         "enable.partition.eof": True})  # fmt: skip
    try:
        assignment, pending = [], set()
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=30).topics[topic]
            for p in meta.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                assignment.append(TopicPartition(topic, p, OFFSET_BEGINNING))
                if high > low:
                    pending.add((topic, p))
        consumer.assign(assignment)
        out = []
        while pending:
            msg = consumer.poll(30)
            assert msg is not None, f"oracle read timed out; still pending {pending}"
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard((msg.topic(), msg.partition()))
                continue
            stamp = datetime.fromtimestamp(msg.timestamp()[1] / 1000, UTC)
            out.append(RawRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(),
                                 msg.value(), stamp))  # fmt: skip
        return out
    finally:
        consumer.close()


@dataclass
class Expected:
    inputs: set[Position] = field(default_factory=set)
    priced: dict[Position, str] = field(default_factory=dict)
    dead: dict[Position, str] = field(default_factory=dict)
    #: too late for a budget period: priced and dead-lettered, no allocations
    late: set[Position] = field(default_factory=set)
    duplicates: set[Position] = field(default_factory=set)
    spend: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    count: Counter[str] = field(default_factory=Counter)
    allocations: int = 0
    tiers: set[tuple[str, str]] = field(default_factory=set)


def oracle(settings: Settings, budgets: list[BudgetDefinition]) -> Expected:
    processor = UsageProcessor(
        Pricer(Catalog.for_settings(settings.price_catalog)),
        BudgetRegistry(budgets),
        max_skew=timedelta(seconds=settings.max_clock_skew_s),
        unknown_price=settings.unknown_price,
        late_periods=settings.late_periods,
    )
    want = Expected()
    first: dict[str, Position] = {}
    records = sorted(read_raw(settings, settings.topics.sources), key=lambda r: r.position)
    for r in records:
        pos = r.position
        want.inputs.add(pos)
        source = SourcePosition(topic=r.topic, partition=r.partition, offset=r.offset)
        decoded = processor.decode(r.key, r.value, source, r.timestamp)
        if isinstance(decoded, DeadLetter):
            want.dead[pos] = decoded.error_code
            continue
        if decoded.event_id in first:
            want.duplicates.add(pos)
            continue
        outcome = processor.process(decoded, source, r.timestamp, arrived=r.timestamp)
        if outcome.dead is not None:
            want.dead[pos] = outcome.dead.error_code
            if outcome.priced is None:
                continue
            assert outcome.dead.error_code == "too_late" and not outcome.allocations
            want.late.add(pos)
        first[decoded.event_id] = pos
        want.priced[pos] = decoded.event_id
        for alloc in outcome.allocations:
            key = f"{alloc.budget_id}|{alloc.period_key}"
            want.spend[key] += alloc.amount
            want.count[key] += 1
            want.allocations += 1
    limits = {b.budget_id: b for b in budgets}
    for key, total in want.spend.items():
        budget = limits[key.split("|")[0]]
        pct = total * 100 / budget.limit
        for t in budget.thresholds:
            if pct >= t.percent:
                want.tiers.add((key, f"threshold:{plain(t.percent)}"))
        if total > budget.limit:
            want.tiers.add((key, "exceeded"))
    return want


class FaultRun:
    """One scenario: its own topics, groups and chDB, services as real processes."""

    def __init__(self, name: str, settings: Settings, budgets: list[BudgetDefinition]) -> None:
        self.name = name
        self.settings = settings
        self.budgets = budgets
        self.group = ProcessGroup(settings)
        ensure_topics(settings)
        publish_budgets(settings, budgets)

    # --- services ------------------------------------------------------------------------
    def start_worker(self, name: str = "worker") -> int:
        port = free_port()
        self.group.start(name, "worker", SPENDSTREAM_WORKER_WEB_PORT=str(port),
                         SPENDSTREAM_APP_ID=self.settings.app_id,
                         SPENDSTREAM_WORKER_TRACE_BATCHES="true",
                         SPENDSTREAM_WORKER_RECOVERY_TIMEOUT_S="30")  # fmt: skip
        return port

    def start_sink(self, *driver_args: str, name: str = "sink") -> None:
        if driver_args:
            import subprocess
            import sys
            from pathlib import Path

            driver = Path(__file__).with_name("sink_driver.py")
            with self.group.log_path(name).open("ab") as log:
                self.group.procs[name] = subprocess.Popen(
                    [sys.executable, str(driver), *driver_args], env=self.group.env,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        else:
            self.group.start(name, "sink")

    def worker_metrics(self, port: int) -> dict[str, int] | None:
        return worker_metrics(port)

    def wait_priced(self, port: int, at_least: int, timeout: float = 120) -> None:
        wait_for(f"{at_least} events priced", lambda: (self.worker_metrics(port) or {})
                 .get("priced", 0) >= at_least, timeout, self.group, interval=0.1)  # fmt: skip

    # --- input ---------------------------------------------------------------------------
    def publish(self, events: Iterable[UsageEvent]) -> int:
        from spendstream.producer import UsagePublisher

        with UsagePublisher(self.settings) as publisher:
            report = publisher.publish_many(events)
        assert report.failed == 0, report.errors[:3]
        return report.sent

    def publish_raw(self, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> None:
        from spendstream.producer import UsagePublisher

        with UsagePublisher(self.settings) as publisher:
            for key, value in records:
                publisher.publish_raw(topic, key, value)
            report = publisher.flush()
        assert report.failed == 0, report.errors[:3]

    # --- settle and check -------------------------------------------------------------------
    def lags(self) -> dict[str, int]:
        return pipeline_lags(self.settings)

    def settle(self, timeout: float = 240) -> None:
        """Until every group has committed the end of its topics (twice in a row)."""
        streak = [0]

        def quiet() -> bool:
            streak[0] = streak[0] + 1 if not any(self.lags().values()) else 0
            return streak[0] >= 2

        try:
            wait_for(f"{self.name}: consumer lag zero", quiet, timeout, self.group, interval=1.0)
        except ServiceFailed as exc:
            t = self.settings.topics
            worker = {**partition_lags(self.settings, price_group(self.settings), t.sources),
                      **partition_lags(self.settings, worker_group(self.settings),
                                       [t.allocations])}  # fmt: skip
            behind = {k: v for k, v in worker.items() if v}
            sink = partition_lags(self.settings, sink_group(self.settings),
                                  sink_inputs(self.settings.topics))  # fmt: skip
            sink_behind = {k: v for k, v in sink.items() if v}
            raise ServiceFailed(f"{exc}; worker partitions behind: {behind}; sink partitions "
                                f"behind: {sink_behind}") from exc  # fmt: skip

    def warehouse(self) -> SinkWarehouse:
        return wait_for("the sink's query port", lambda: sink_warehouse(self.settings), 60,
                        self.group)  # fmt: skip

    def verify(self) -> dict[str, tuple[bool, str]]:
        """Check every invariant; record and return {invariant: (held, detail)}."""
        want = oracle(self.settings, self.budgets)
        ch = self.warehouse()
        inputs = set(self.settings.topics.sources)

        priced_rows = ch.query("SELECT origin_topic, origin_partition, origin_offset, event_id "
                               "FROM priced_usage").rows  # fmt: skip
        priced = {(t, int(p), int(o)): e for t, p, o, e in priced_rows}
        dead_rows = ch.query("SELECT origin_topic, origin_partition, origin_offset, error_code "
                             "FROM dead_letters").rows  # fmt: skip
        dead = {(t, int(p), int(o)): c for t, p, o, c in dead_rows if t in inputs}
        dead_count = sum(1 for t, *_ in dead_rows if t in inputs)
        overlap = set(priced) & set(dead)
        accounted = (priced == want.priced and dead == want.dead and overlap == want.late
                     and all(dead[p] == "too_late" for p in overlap)
                     and set(priced) | set(dead) | want.duplicates == want.inputs)  # fmt: skip

        n, ids = ch.query("SELECT count(), uniqExact(event_id) FROM priced_usage").rows[0]
        an, aids = ch.query("SELECT count(), uniqExact(allocation_id) FROM cost_allocations").rows[
            0
        ]
        no_dups = (int(n) == int(ids) == len(want.priced) and dead_count == len(dead)
                   and int(an) == int(aids) == want.allocations)  # fmt: skip

        rows = ch.query("SELECT budget_id, period_key, sum(amount), count() "
                        "FROM cost_allocations GROUP BY budget_id, period_key").rows  # fmt: skip
        ch_spend = {f"{b}|{p}": Decimal(str(s)) for b, p, s, _ in rows}
        ch_count = {f"{b}|{p}": int(c) for b, p, _, c in rows}
        rows = ch.query("SELECT budget_id, period_key, sum(cost), sum(events) "
                        "FROM daily_spend_by_budget GROUP BY budget_id, period_key").rows  # fmt: skip
        rollup_spend = {f"{b}|{p}": Decimal(str(s)) for b, p, s, _ in rows}
        rollup_count = {f"{b}|{p}": int(c) for b, p, _, c in rows}
        statuses = {f"{s.budget_id}|{s.period_key}": s for s in read_statuses(self.settings)}
        stream_spend = {k: s.spent for k, s in statuses.items()}
        stream_count = {k: s.event_count for k, s in statuses.items()}
        # the daily roll-up counts every inserted row: a row stored twice shows here even
        # after ReplacingMergeTree collapsed it in the base table
        spend_exact = (ch_spend == dict(want.spend) == stream_spend == rollup_spend
                       and ch_count == dict(want.count) == stream_count == rollup_count)  # fmt: skip

        alerts = [a for a in read_alerts(self.settings) if a.kind in ("threshold", "exceeded")]
        got_tiers = {(f"{a.budget_id}|{a.period_key}", a.alert_id.split(":", 2)[2])
                     for a in alerts}  # fmt: skip
        stored = ch.query("SELECT count(), uniqExact(alert_id) FROM budget_alerts FINAL "
                          "WHERE kind IN ('threshold', 'exceeded')").rows[0]  # fmt: skip
        alerts_once = got_tiers == want.tiers and int(stored[0]) == int(stored[1]) == len(
            want.tiers
        )

        missing = sorted(want.inputs - set(priced) - set(dead) - want.duplicates)
        lags = self.lags()
        checks = {
            "accounted": (accounted, f"{len(want.inputs)} inputs: {len(priced)} priced "
                          f"(want {len(want.priced)}), {len(dead)} dead (want {len(want.dead)}),"
                          f" {len(want.duplicates)} duplicates, {len(overlap)} in both "
                          f"(want {len(want.late)} too late)"
                          + (f"; missing {missing[:5]}" if missing else "")),
            "no_duplicates": (no_dups, f"priced {n} rows/{ids} ids, allocations {an} rows/"
                              f"{aids} ids (want {want.allocations}), DLQ rows {dead_count}"),
            "spend_exact": (spend_exact, _diff(dict(want.spend), ch_spend, stream_spend)
                            + ("" if rollup_count == dict(want.count) else
                               f"; roll-up counts {sum(rollup_count.values())} rows, want "
                               f"{sum(want.count.values())}")),
            "alerts_once": (alerts_once, f"tiers {len(got_tiers)} (want {len(want.tiers)}), "
                            f"stored {stored[0]} rows/{stored[1]} ids, "
                            f"{len(alerts)} records on the topic"),
            "lag_zero": (not any(lags.values()), str(lags)),
        }  # fmt: skip
        RESULTS[self.name] = {k: ok for k, (ok, _) in checks.items()}
        DETAILS[self.name] = {k: detail for k, (_, detail) in checks.items()}
        return checks

    def assert_invariants(self) -> dict[str, tuple[bool, str]]:
        checks = self.verify()
        failed = {k: detail for k, (ok, detail) in checks.items() if not ok}
        assert not failed, (
            f"{self.name}: invariants broken: {failed}; logs in {self.group.logs_dir}"
        )
        return checks

    def close(self) -> None:
        self.group.stop()


def _diff(want: dict[str, Decimal], ch: dict[str, Decimal], stream: dict[str, Decimal]) -> str:
    bad = [k for k in set(want) | set(ch) | set(stream)
           if not (want.get(k) == ch.get(k) == stream.get(k))]  # fmt: skip
    if not bad:
        return f"{len(want)} budget periods, total {sum(want.values())}"
    k = sorted(bad)[0]
    return (
        f"{len(bad)} differ, e.g. {k}: oracle {want.get(k)} ch {ch.get(k)} stream {stream.get(k)}"
    )


def paced(events: list[UsageEvent], run: FaultRun, per_second: float) -> None:
    """Publish ``events`` at about ``per_second`` (in chunks, each delivered before the
    next), for scenarios that act while input is still arriving. One producer for the
    whole run, as a real client keeps (a new producer per chunk took 0.5 s to start and
    stop: 300/s became 60/s)."""
    from spendstream.producer import UsagePublisher

    chunk = max(1, int(per_second / 10))
    with UsagePublisher(run.settings) as publisher:
        for i in range(0, len(events), chunk):
            started = time.monotonic()
            report = publisher.publish_many(events[i : i + chunk])
            time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
    assert report.failed == 0, report.errors[:3]
    assert report.sent == len(events), (report.sent, len(events))


class Paced(threading.Thread):
    """``paced`` in a thread of its own; ``finish`` joins it and raises what it raised (a
    publish that failed in the thread must fail the scenario, not only print)."""

    def __init__(self, events: list[UsageEvent], run: FaultRun, per_second: float) -> None:
        super().__init__(name="paced-publisher", daemon=True)
        self.args_ = (events, run, per_second)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            paced(*self.args_)
        except BaseException as exc:  # handed to finish()
            self.error = exc

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"still publishing after {timeout:.0f}s"
        if self.error is not None:
            raise self.error
