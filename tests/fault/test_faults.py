"""Fault scenarios on the real broker and chDB, each checked against the oracle.

Run the whole suite with ``make fault`` (``pytest -m fault tests/fault``); CI runs it as
part of ``make test``. ``SPENDSTREAM_FAULT_OUTAGE_S`` sets the ClickHouse outage (10 s; set 60 or more for a
long run).
"""

from __future__ import annotations

import io
import os
import random
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import fastavro
import pytest
from confluent_kafka import Consumer, TopicPartition

from spendstream.processes import wait_for
from spendstream.schemas.avro import codec
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import Attributes, LlmUsage, UsageEvent
from spendstream.streams.pricing import Pricer

from .harness import FaultRun, Paced, oracle

pytestmark = pytest.mark.fault
TEAMS = ("a", "b", "c")


def events(prefix: str, n: int, *, now: datetime | None = None, spread_s: int = 600,
           team: str | None = None) -> list[UsageEvent]:  # fmt: skip
    """LLM calls over the last ``spread_s`` seconds, three teams, two providers."""
    now = now or datetime.now(UTC)
    out = []
    for i in range(n):
        claude = i % 4 == 0
        out.append(UsageEvent(
            event_id=f"{prefix}-{i}", occurred_at=now - timedelta(seconds=(i * 7919) % spread_s),
            source="llm", attributes=Attributes(org="acme", team=team or TEAMS[i % 3]),
            payload=LlmUsage(provider="anthropic" if claude else "openai",
                             model="claude-sonnet-4-5" if claude else "gpt-4o-mini",
                             input_tokens=500 + (i * 37) % 4000, output_tokens=50 + i % 700,
                             cache_read_tokens=(i % 5) * 50),
        ))  # fmt: skip
    return out


def budgets_for(sample: list[UsageEvent]) -> list[BudgetDefinition]:
    """Limits sized from the input so that tiers cross: the org overruns, team a (daily)
    reaches 75 %, team b 90 %, the Anthropic budget 50 %."""
    pricer = Pricer()
    total, team, claude = Decimal(0), Counter[str](), Decimal(0)
    for e in sample:
        cost = pricer.price(e).total
        total += cost
        team[e.attributes.team or ""] += cost  # type: ignore[operator]
        if e.provider == "anthropic":
            claude += cost

    def q(x: Decimal) -> Decimal:
        return x.quantize(Decimal("0.000001"))

    return [
        BudgetDefinition(budget_id="org", name="Acme", limit=q(total / Decimal("1.05")),
                         scope={"org": "acme"}),
        BudgetDefinition(budget_id="team-a", name="A daily", parent_id="org", period="daily",
                         limit=q(team["a"] / Decimal("0.8")), scope={"team": "a"}),
        BudgetDefinition(budget_id="team-b", name="B", parent_id="org",
                         limit=q(team["b"] / Decimal("0.95")), scope={"team": "b"}),
        BudgetDefinition(budget_id="claude", name="Anthropic", limit=q(claude / Decimal("0.6")),
                         scope={"provider": "anthropic"}),
    ]  # fmt: skip


def finish(run: FaultRun) -> dict[str, tuple[bool, str]]:
    """Settle, make sure a normal sink serves queries, check every invariant; returns the
    checks (invariant -> held, detail)."""
    if "sink" not in run.group.procs:
        run.start_sink()
    run.settle()
    return run.assert_invariants()


def test_kill_worker_mid_stream_and_restart(scenario):
    data = events("kw", 3000)
    run: FaultRun = scenario("kill -9 worker, restart", budgets_for(data))
    run.publish(data)
    run.start_sink()
    port = run.start_worker()
    run.wait_priced(port, 700)
    run.group.kill("worker")
    run.start_worker()
    finish(run)


def test_kill_sink_after_insert_before_commit(scenario):
    data = events("ks", 2000)
    run: FaultRun = scenario("kill -9 sink after insert", budgets_for(data))
    run.publish(data)
    port = run.start_worker()
    run.wait_priced(port, 2000)
    run.start_sink("--crash-after-insert", name="crashing-sink")
    proc = run.group.procs.pop("crashing-sink")
    assert proc.wait(120) == -9  # it did die by SIGKILL, after an insert
    finish(run)


def test_broker_restart_while_producers_publish(scenario, fault_broker):
    data = events("br", 3000)
    run: FaultRun = scenario("broker restart mid-publish", budgets_for(data))
    run.start_sink()
    port = run.start_worker()
    wait_for("the worker", lambda: run.worker_metrics(port), 120, run.group)
    publisher = Paced(data, run, 300)
    publisher.start()
    time.sleep(4)
    fault_broker.stop()
    time.sleep(3)
    fault_broker.start()
    publisher.finish(300)
    finish(run)


#: failed inserts the sink must have retried (backoff waits in between) before the outage ends
OUTAGE_RETRIES = 4


def test_clickhouse_unreachable_for_a_while(scenario, tmp_path):
    """The sink keeps retrying with backoff, consumption paused, for as long as ClickHouse
    is away, and loses nothing. The outage lasts ``SPENDSTREAM_FAULT_OUTAGE_S`` (10 s) and
    at least ``OUTAGE_RETRIES`` failed inserts; the backoff is capped at a fifth of it, so
    the outage spans several capped waits and the sink retries soon after it ends."""
    outage = float(os.environ.get("SPENDSTREAM_FAULT_OUTAGE_S", "10"))
    cap = min(30.0, max(0.5, outage / 5))
    data = events("ch", 2000)
    run: FaultRun = scenario(f"ClickHouse down {outage:.0f}s", budgets_for(data))
    down = tmp_path / "clickhouse-down"
    run.start_sink("--down-file", str(down), "--retry-max-s", str(cap))
    run.warehouse()  # the sink is up (migrations done); now ClickHouse goes away
    down.touch()
    started = time.monotonic()
    run.start_worker()
    run.publish(data)
    wait_for(f"{OUTAGE_RETRIES} failed inserts", lambda: run.warehouse().health()
             .get("failed_attempts", 0) >= OUTAGE_RETRIES, 120 + outage, run.group)  # fmt: skip
    time.sleep(max(0.0, outage - (time.monotonic() - started)))
    run.group.check_alive()  # the sink held on, it did not exit
    health = run.warehouse().health()  # ... and says its writer is failing, and why
    assert health["ok"] is False and health["writer"] == "failing", health
    assert health["failed_attempts"] >= OUTAGE_RETRIES and health["last_error"], health
    down.unlink()
    finish(run)
    assert run.warehouse().health()["ok"] is True


def test_scale_workers_one_three_one_during_aggregation(scenario):
    data = events("sc", 6000)
    run: FaultRun = scenario("scale workers 1 -> 3 -> 1", budgets_for(data))
    run.start_sink()
    run.start_worker("worker")
    publisher = Paced(data, run, 400)
    publisher.start()
    time.sleep(4)
    run.start_worker("worker-2")
    run.start_worker("worker-3")
    time.sleep(8)
    run.group.stop("worker-2")
    run.group.stop("worker-3")
    publisher.finish(300)
    finish(run)


def test_three_workers_total_what_one_does(scenario):
    """Scale-out: three processes in one group over six partitions; the oracle is one
    sequential pass, i.e. what a single worker computes."""
    data = events("so", 3000)
    run: FaultRun = scenario("three workers from the start", budgets_for(data))
    run.start_sink()
    for name in ("worker", "worker-2", "worker-3"):
        run.start_worker(name)
    run.publish(data)
    finish(run)


def test_same_event_id_a_thousand_times(scenario):
    base = events("dup", 1000)
    copy = events("same", 1)[0]
    mixed: list[UsageEvent] = []
    for e in base:
        mixed += [e, copy]  # the copy lands in every batch, across the whole input
    run: FaultRun = scenario("one event id 1,000 times", budgets_for([*base, copy]))
    run.publish(mixed)
    run.start_sink()
    run.start_worker()
    finish(run)


def malformed(n: int) -> list[tuple[bytes, bytes]]:
    """Truncated Avro, foreign headers, and valid Avro carrying invalid values."""
    c = codec("UsageEvent")
    good = events("mal", 50)
    out = []
    rng = random.Random(7)
    for i in range(n):
        kind = i % 3
        if kind == 0:  # truncated: a valid record cut short
            blob = c.encode(good[i % 50].to_avro())
            value = blob[: rng.randrange(1, len(blob) - 1)]
        elif kind == 1:  # wrong header: JSON, or another schema's fingerprint
            value = b'{"event_id": "x"}' if i % 2 else b"\xc3\x01" + rng.randbytes(8) + b"\x02x"
        else:  # decodes as Avro, fails validation: negative tokens, bad currency, empty id
            record = good[i % 50].to_avro()
            record["event_id"] = f"bad-{i}"
            branch, body = record["payload"]  # (union branch name, record)
            record["payload"] = (branch, dict(body, input_tokens=-1 - i))
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, c.schema, record)
            value = c.header + buf.getvalue()
        out.append((f"m{i}".encode(), value))
    return out


def test_ten_thousand_malformed_inputs(scenario):
    data = events("ok", 500)
    run: FaultRun = scenario("10,000 malformed inputs", budgets_for(data))
    bad = malformed(10_000)
    run.publish_raw(run.settings.topics.llm, bad[:5000])
    run.publish(data)
    run.publish_raw(run.settings.topics.llm, bad[5000:])
    run.start_sink()
    run.start_worker()
    finish(run)


def test_out_of_order_late_and_future_events(scenario):
    now = datetime.now(UTC)
    current = events("now", 1500, now=now)
    random.Random(3).shuffle(current)
    yesterday = events("yday", 300, now=now - timedelta(days=1), team="a")
    too_late = events("old", 200, now=now - timedelta(days=3), team="a")
    future = events("fut", 100, now=now + timedelta(days=1))
    run: FaultRun = scenario("out-of-order, late, future", budgets_for(current + yesterday))
    mixed = current[:500] + too_late + current[500:1000] + yesterday + future + current[1000:]
    run.publish(mixed)
    run.start_sink()
    run.start_worker()
    finish(run)
    # the DLQ reasons are the oracle's: the 200 old events too late, the 100 future ones
    # "future" (near midnight UTC some of yesterday's fall two daily periods back, also
    # too late, so the count comes from the oracle, not a constant)
    codes = Counter(
        code for (code,) in run.warehouse().query("SELECT error_code FROM dead_letters").rows
    )
    assert codes == Counter(oracle(run.settings, run.budgets).dead.values())
    assert codes["future"] == 100 and codes["too_late"] >= 200


def rewind(settings, group: str, topics: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Commit offset 0 everywhere for a stopped group, as `kafka-consumer-groups
    --reset-offsets --to-earliest` does."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group})
    try:
        parts = [TopicPartition(topic, p, 0) for topic in topics
                 for p in consumer.list_topics(topic, timeout=30).topics[topic].partitions]  # fmt: skip
        consumer.commit(offsets=parts, asynchronous=False)
    finally:
        consumer.close()


def test_full_replay_from_offset_zero(scenario):
    """Reprocess all input from offset 0 in a fresh worker group (new app id: empty state,
    every output published again) and rewind the sink: ClickHouse must not change and the
    recomputed state must equal the oracle again. (Rewinding the *same* faust group's
    offsets below what its changelog-restored tables hold leaves faust 0.15 idle; see
    docs/design.md.)"""
    data = events("rp", 2000)
    run: FaultRun = scenario("full replay from offset 0", budgets_for(data))
    run.publish(data)
    run.start_sink()
    run.start_worker()
    before = finish(run)
    run.group.stop()
    s, t = run.settings, run.settings.topics
    rewind(s, f"{s.topic_prefix}{s.sink_group}", [t.priced, t.allocations, t.alerts, t.dlq])
    run.settings = s.model_copy(update={"app_id": f"{s.app_id}-replay"})
    assert run.lags()["worker"] > 0  # everything is to be read again
    port = run.start_worker()
    run.start_sink()
    after = finish(run)
    assert (run.worker_metrics(port) or {}).get("priced") == 2000  # it did read it all again
    # nothing changed in ClickHouse or the state; the alerts were published again with
    # the same ids (subscribers dedupe on alert_id), so the topic holds each one twice
    for invariant in ("accounted", "no_duplicates", "spend_exact"):
        assert after[invariant] == before[invariant]
    published = int(re.search(r"(\d+) records on the topic", before["alerts_once"][1])[1])
    assert f"{2 * published} records on the topic" in after["alerts_once"][1]
